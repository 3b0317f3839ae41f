"""
The HTTP side of the port: WebSocket endpoints and plain routes (``/health``) share one Site.

A WebSocket endpoint may sit at ``/``: requests that ask to upgrade go to the WebSocket, plain
GETs get a small index, so ``ws://host:8765`` (S1's URL) and ``http://host:8765/`` both work.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from twisted.web.static import File

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


class MetricsPage(Resource):
    """``GET /metrics``: Prometheus text exposition, rendered on the reactor thread (it reads session state)."""

    isLeaf = True

    def __init__(self, server: VoiceServer) -> None:
        super().__init__()
        self.voice = server

    def render_GET(self, request: Request) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.voice.metrics.set_pool_queue_depth("audio", self.voice.workers.queue_depth)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.voice.metrics.registry)


class MonitoringResource(JSONResource):
    """
    The JSON monitoring API (S1's monitor): ``/monitoring`` (real time), ``/monitoring/history?minutes=N``,
    ``/monitoring/sessions`` and ``/monitoring/sessions/<id>``.  Needs a Bearer JWT when an
    authenticator is configured.
    """

    isLeaf = True

    def __init__(self, server: VoiceServer) -> None:
        super().__init__()
        self.voice = server

    def _cluster(self, request: Request) -> Any:
        """``/monitoring/cluster``: every node's sessions, from the Redis registry (404 without --redis)."""
        scaleout = self.voice.scaleout
        if scaleout is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": {"code": "not_found", "message": "no cluster: the server runs without --redis"}}).encode()

        def listed(sessions: list[dict[str, Any]]) -> None:
            nodes: dict[str, int] = {}
            for doc in sessions:
                nodes[doc["node"]] = nodes.get(doc["node"], 0) + 1
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            request.write(json.dumps({"nodes": nodes, "sessions": sessions}).encode("utf-8"))
            request.finish()

        def failed(failure: Any) -> None:
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps({"error": {"code": "redis_unavailable", "message": failure.getErrorMessage()}}).encode())
            request.finish()

        scaleout.registry.cluster().addCallbacks(listed, failed)
        from twisted.web.server import NOT_DONE_YET

        return NOT_DONE_YET

    def _render(self, request: Request) -> Any:
        if [p for p in request.postpath or [] if p] == [b"cluster"]:
            return self._cluster(request)
        return super().render_GET(request)

    def render_GET(self, request: Request) -> Any:
        admission = self.voice.admission
        if admission.authenticator is None:
            return self._render(request)
        from txvoice.security.jwt_auth import extract_token

        token = extract_token({k.decode("latin-1"): v[0].decode("latin-1")
                               for k, v in request.requestHeaders.getAllRawHeaders()}, None)

        def ok(principal: Any) -> None:
            body = self._render(request)
            if isinstance(body, bytes):
                request.write(body)
                request.finish()

        def denied(failure: Any) -> None:
            request.setResponseCode(401)
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps({"error": {"code": getattr(failure.value, "code", "auth_failed")}}).encode())
            request.finish()

        if token is None:
            request.setResponseCode(401)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": {"code": "token_missing"}}).encode()
        admission.authenticator.authenticate(token).addCallbacks(ok, denied)
        from twisted.web.server import NOT_DONE_YET

        return NOT_DONE_YET

    def document(self, request: Request) -> tuple[dict[str, Any], int]:
        voice = self.voice
        path = [p for p in request.postpath or [] if p]
        if not path:
            return voice.history.get_real_time_metrics(), 200
        if path == [b"history"]:
            try:
                args: dict[bytes, list[bytes]] = request.args or {}
                minutes = int(args.get(b"minutes", [b"60"])[0])
            except ValueError:
                return {"error": {"code": "invalid_field", "message": "minutes must be an integer"}}, 400
            return {"minutes": voice.history.get_historical_metrics(minutes=max(1, minutes))}, 200
        if path == [b"sessions"]:
            return {"sessions": [s.as_dict() for s in voice.registry]}, 200
        if len(path) == 2 and path[0] == b"sessions":
            details = voice.connection_details(path[1].decode("utf-8", "replace"))
            if details is None:
                return {"error": {"code": "unknown_session"}}, 404
            return details, 200
        return {"error": {"code": "not_found"}}, 404


STATIC = Path(__file__).resolve().parent.parent / "static"


class IndexResource(Resource):
    """``GET /``: the demo page (``txvoice/static/index.html``) when it is installed, else a line of text."""

    isLeaf = True

    def __init__(self, server: VoiceServer) -> None:
        super().__init__()
        self.voice = server

    def render_GET(self, request: Request) -> bytes:
        page = STATIC / "index.html"
        if page.is_file():
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"cache-control", b"no-cache")
            return page.read_bytes()
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            f"txvoice {self.voice.version}: WebSocket endpoint here (subprotocol txvoice.v1); "
            f"GET /health for status.\n"
        ).encode("utf-8")


class UpgradeOrResource(Resource):
    """Send WebSocket upgrades to ``websocket`` and everything else to ``fallback``."""

    isLeaf = True

    def __init__(self, websocket: IResource, fallback: IResource) -> None:
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


def mount(root: Resource, path: str, resource: IResource) -> None:
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


def build_site(server: VoiceServer, websockets: Mapping[str, IResource]) -> Site:
    """The Site: each WebSocket endpoint at its path, ``/health`` and an index."""
    root = Resource()
    index = IndexResource(server)
    root.putChild(b"health", HealthResource(server))
    if STATIC.is_dir():
        static = File(str(STATIC))
        static.contentTypes[".js"] = "text/javascript"
        static.contentTypes[".mjs"] = "text/javascript"
        static.contentTypes[".ts"] = "text/plain; charset=utf-8"  # s0/index.d.ts: readable, not MPEG-TS
        root.putChild(b"static", static)
    root.putChild(b"metrics", MetricsPage(server))
    root.putChild(b"monitoring", MonitoringResource(server))
    admission = server.admission
    if admission.authenticator is not None:
        from txvoice.security.session_tokens import AuthWebSocketResource

        auth = Resource()
        auth.putChild(b"websocket", AuthWebSocketResource(
            admission.authenticator, admission.issuer, None, admission.origins, admission.throttle_token_request
        ))
        root.putChild(b"auth", auth)
        from txvoice.server.events_api import EventsResource

        root.putChild(b"events", EventsResource(server))  # POST /events: only with a JWT key
    for path, endpoint in websockets.items():
        mount(root, path, endpoint if _segments(path) else UpgradeOrResource(endpoint, index))
    if b"" not in root.children:
        root.putChild(b"", index)
    site = Site(root)
    site.displayTracebacks = False
    site.noisy = False
    return site
