"""
``POST /events``: the operator broadcast API (S1's ``broadcast_event``; "System maintenance in 5
minutes" to ``user_456``).

JSON ``{event_type, data, conversation_id?, user_id?, session_id?}`` with ``Authorization: Bearer
<JWT>`` whose ``scope`` claim (a space-separated string or a list) holds ``txvoice:broadcast``:
401 without a valid token, 403 without the scope, 400 for a bad body; 202 with
``{"reached": n}``, the sessions reached on this node (with ``--redis`` the others deliver to
theirs).  The addressed sessions get a ``status`` event with that ``event_type``.  The route exists
only when a JWT key is configured (build_site leaves it out otherwise).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txvoice.security.interfaces import AuthError, Credentials
from txvoice.security.jwt_auth import extract_token
from txvoice.server.context import VoiceServer

log = Logger(namespace="txvoice.events")

BROADCAST_SCOPE = "txvoice:broadcast"
_MAX_BODY = 65536
_ADDRESSES = ("conversation_id", "user_id", "session_id")


def has_scope(claims: Any, scope: str) -> bool:
    granted = claims.get("scope") if hasattr(claims, "get") else None
    if isinstance(granted, str):
        return scope in granted.split()
    if isinstance(granted, list):
        return scope in granted
    return False


def parse_event(raw: bytes) -> dict[str, Any]:
    """The body as broadcast arguments; ValueError saying what is wrong."""
    if len(raw) > _MAX_BODY:
        raise ValueError(f"the body is larger than {_MAX_BODY} bytes")
    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    event_type = body.get("event_type")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 128:
        raise ValueError("event_type must be a non-empty string (at most 128 characters)")
    data = body.get("data", {})
    if not isinstance(data, dict):
        raise ValueError("data must be a JSON object")
    if "event_type" in data:
        raise ValueError("data may not hold its own event_type")
    event: dict[str, Any] = {"event_type": event_type, "data": data}
    for key in _ADDRESSES:
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
        event[key] = value
    unknown = set(body) - {"event_type", "data", *_ADDRESSES}
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
    return event


def _json(request: Request, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8")


class EventsResource(Resource):
    isLeaf = True

    def __init__(self, server: VoiceServer) -> None:
        super().__init__()
        self.voice = server

    def render_POST(self, request: Request) -> bytes | int:
        authenticator = self.voice.admission.authenticator
        assert authenticator is not None  # mounted only with a JWT key
        headers = {k.decode("latin-1"): v[0].decode("latin-1") for k, v in request.requestHeaders.getAllRawHeaders()}
        token = extract_token(headers, None)
        if token is None:
            request.setHeader(b"www-authenticate", b"Bearer")
            return _json(request, 401, {"error": {"code": "token_missing", "message": "Authorization: Bearer <JWT> required"}})
        assert request.content is not None
        raw = request.content.read(_MAX_BODY + 1)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d: Deferred[Any] = authenticator.authenticate(Credentials(token))
        d.addCallbacks(self._authorized, self._refused, callbackArgs=(request, raw), errbackArgs=(request,))
        d.addCallback(self._respond, request, gone)
        d.addErrback(lambda f: log.failure("POST /events failed", f))
        return NOT_DONE_YET

    def _authorized(self, principal: Any, request: Request, raw: bytes) -> bytes:
        if not has_scope(principal.claims, BROADCAST_SCOPE):
            return _json(request, 403, {"error": {"code": "insufficient_scope",
                                                  "message": f"the token's scope does not hold {BROADCAST_SCOPE}"}})
        try:
            event = parse_event(raw)
        except ValueError as e:
            return _json(request, 400, {"error": {"code": "invalid_body", "message": str(e)}})
        reached = self.voice.bus.broadcast(event["event_type"], event["data"], event["conversation_id"],
                                           event["user_id"], event["session_id"])
        log.info("broadcast {event_type} by {user_id}: {reached} sessions here", event_type=event["event_type"],
                 user_id=principal.user_id, reached=reached)
        return _json(request, 202, {"reached": reached, "node_id": self.voice.node_id})

    def _refused(self, failure: Failure, request: Request) -> bytes:
        code = failure.value.code if isinstance(failure.value, AuthError) else "auth_failed"
        request.setHeader(b"www-authenticate", b'Bearer error="invalid_token"')
        return _json(request, 401, {"error": {"code": code, "message": "authentication failed"}})

    @staticmethod
    def _respond(body: bytes, request: Request, gone: list[bool]) -> None:
        if not gone:
            request.write(body)
            request.finish()
