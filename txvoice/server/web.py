"""
The HTTP side of the port: WebSocket endpoints and plain routes (``/health``) share one Site.

A WebSocket endpoint may sit at ``/``: requests that ask to upgrade go to the WebSocket, plain
GETs get a small index, so ``ws://host:8765`` (S1's URL) and ``http://host:8765/`` both work.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from txvoice.server.context import VoiceServer


class JSONResource(Resource):
    """A GET-only resource rendering a dict as JSON."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        body, status = self.document(request)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode("utf-8")

    def document(self, request: Request) -> tuple[dict[str, Any], int]:
        raise NotImplementedError


class HealthResource(JSONResource):
    """``GET /health``: 200 while healthy or degraded, 503 when unhealthy."""

    def __init__(self, server: VoiceServer) -> None:
        super().__init__()
        self.voice = server

    def document(self, request: Request) -> tuple[dict[str, Any], int]:
        health = self.voice.health()
        return health, 503 if health["status"] == "unhealthy" else 200


class IndexResource(Resource):
    isLeaf = True

    def __init__(self, server: VoiceServer) -> None:
        super().__init__()
        self.voice = server

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            f"txvoice {self.voice.version}: WebSocket endpoint here (subprotocol txvoice.v1); "
            f"GET /health for status.\n"
        ).encode("utf-8")


class UpgradeOrResource(Resource):
    """Send WebSocket upgrades to ``websocket`` and everything else to ``fallback``."""

    isLeaf = True

    def __init__(self, websocket: WebSocketResource, fallback: Resource) -> None:
        super().__init__()
        self.websocket = websocket
        self.fallback = fallback

    def render(self, request: Request) -> Any:
        upgrade = request.getHeader(b"upgrade")
        if upgrade is not None and upgrade.lower() == b"websocket":
            return self.websocket.render(request)
        return self.fallback.render(request)


def _segments(path: str) -> list[bytes]:
    return [p.encode("utf-8") for p in path.strip("/").split("/") if p]


def mount(root: Resource, path: str, resource: Resource) -> None:
    """Put ``resource`` at ``path`` below ``root``, creating intermediate resources."""
    segments = _segments(path)
    if not segments:
        root.putChild(b"", resource)
        return
    node = root
    for segment in segments[:-1]:
        child = node.children.get(segment)
        if child is None:
            child = Resource()
            node.putChild(segment, child)
        node = child
    node.putChild(segments[-1], resource)


def build_site(server: VoiceServer, websockets: dict[str, WebSocketResource]) -> Site:
    """The Site: each WebSocket endpoint at its path, ``/health`` and an index."""
    root = Resource()
    index = IndexResource(server)
    root.putChild(b"health", HealthResource(server))
    for path, resource in websockets.items():
        if not _segments(path):
            resource = UpgradeOrResource(resource, index)
        mount(root, path, resource)
    if b"" not in root.children:
        root.putChild(b"", index)
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site
