"""
Seed S3's raw voice WebSocket at ``/voice-ws`` (``--voicews-path``): ``VoiceStreamMessage`` JSON
text messages and binary 20 ms audio frames, exactly as S3's clients speak it.

- A JWT on the HTTP upgrade (``Authorization: Bearer`` or ``?token=``) is always required: without
  one, or with a bad one, the upgrade gets HTTP 401 before any frame, whatever ``--auth-required``
  says (only ``--voicews-allow-anonymous`` serves it without, for development).  The token's tenant,
  ``siteId`` and user go into the session.
- On open: ``ready`` with ``metadata.sessionId``.  Binary frames are audio: 48 kHz 16-bit mono PCM
  (S3's 1920-byte test frames) unless a ``voice_start`` declared another format (e.g. Opus).
- ``?sessionId=`` joins the Socket.IO session of that id instead of opening a new one (one session,
  two transports: audio in here, JSON out on both; see :mod:`txvoice.dialects.s3session`).
- Heartbeat pings carry a fresh payload that the pong must echo; permessage-deflate is negotiated
  as S3 configures it (threshold 1024 bytes, zlib level 1).

See ``doc/dialects.md``.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.logger import Logger

from txvoice.errors import ProtocolError, VoiceError
from txvoice.security.jwt_auth import extract_token
from txvoice.server.base import VoiceServerProtocol
from txvoice.server.factory import VoiceServerFactory, _accept_deflate
from txvoice.session.session import SessionState
from txvoice.dialects.s3session import Coordinator, UnifiedSession

if TYPE_CHECKING:  # pragma: no cover
    from twisted.web.resource import IResource

    from txvoice.server.context import VoiceServer

_authlog = Logger(namespace="txvoice.auth")
#: The payload the heartbeat service pings with; this dialect replaces it with a fresh one.
_HEARTBEAT_PAYLOAD = b"txvoice-hb"


def require_token(server: "VoiceServer", token: str | None, where: str) -> None:
    """S3 always authenticates: refuse (401) a missing token, or every client when no key is set."""
    if server.config.voicews_allow_anonymous:
        return
    if server.admission.authenticator is None:
        server.record_refused("auth_failed")
        raise ConnectionDeny(401, f"auth_not_configured: {where} needs --jwt-secret or --jwt-public-keys")
    if not token:
        server.record_refused("auth_failed")
        raise ConnectionDeny(401, "token_missing: authentication required")


def principal_attributes(session: Any, principal: Any) -> None:
    """S3's UnifiedSession fields from the JWT: tenantId, siteId, userId."""
    if principal is None:
        return
    claims = principal.claims or {}
    site = claims.get("siteId", claims.get("site_id"))
    if site is not None:
        session.attributes["site_id"] = str(site)
    if session.tenant is None and claims.get("tenantId") is not None:
        session.identify(tenant=str(claims["tenantId"]))


class VoiceWSProtocol(VoiceServerProtocol):
    """S3's ``/voice-ws``: one raw transport of a :class:`UnifiedSession`."""

    dialect = "voicews"
    s3_transport = "voicews"
    unified: UnifiedSession | None = None
    _join_id: str | None = None
    _ping_payload: bytes | None = None

    def onConnect(self, request: ConnectionRequest) -> Any:
        require_token(self.server, extract_token(request.headers, request.params), "/voice-ws")
        join = request.params.get("sessionId", [None])[0]
        if join is not None and Coordinator.of(self.server).get(join) is None:
            raise ConnectionDeny(404, f"unknown_session: no session {join!r} to join")
        self._join_id = join
        return super().onConnect(request)

    def sessionOpened(self) -> None:
        session = self.session
        assert session is not None
        if session.state is SessionState.CONNECTED:
            session.transition(SessionState.AUTHENTICATED)  # --voicews-allow-anonymous
        principal_attributes(session, self.admission.principal if self.admission else None)  # tenant: reported
        coordinator = self._coordinator = Coordinator.of(self.server)
        joined = coordinator.get(self._join_id)
        if joined is not None:
            # This socket's own session stays out of the registry: the joined one is the session.
            self.server.registry.remove(session)
            self.server.connection_closed(session)
            self.unified = joined
        else:
            self.unified = UnifiedSession(self.server, session)
            coordinator.add(self.unified)
        self.unified.attach(self)
        self.unified.send("ready", None, sampleRate=self.unified.format.sample_rate,
                          channels=self.unified.format.channels, joined=True if joined is not None else None)

    def sessionClosing(self) -> None:
        unified = self.unified
        if unified is None:
            return
        unified.detach(self)
        session = self.session
        assert session is not None  # sessionClosing is only called for a session that was opened
        if unified.session is not session:
            unified.session.counters.add(session.counters)  # a joined socket counts in the session
        else:
            # The raw socket owns the session it opened: it ends with it (Socket.IO is told).
            unified.send("error", None, error="the voice socket closed: session ended", code="session_ended")
            Coordinator.of(self.server).remove(unified)
            unified.close()

    # S3Transport

    def sendS3(self, message: dict[str, Any]) -> None:
        self._count("out", "text")
        self.sendText(json.dumps(message, separators=(",", ":")).encode("utf-8"))

    def sendS3Audio(self, chunk: bytes) -> None:
        self._count("out", "binary")
        self.sendBinary(chunk)

    def _count(self, direction: str, kind: str) -> None:
        key = ("voicews", direction, kind)
        counts = self._coordinator.counts
        counts[key] = counts.get(key, 0) + 1

    # errors

    def reportError(self, error: VoiceError) -> None:
        if self.unified is not None:
            self.unified.error(error, to=self)

    def messageTooLarge(self, size: int, is_binary: bool) -> None:
        limit = self.server.config.max_message_size
        self.reportError(VoiceError(f"message of {size} bytes exceeds {limit}", code="message_too_large"))

    # receiving

    def binaryReceived(self, payload: bytes) -> None:
        unified = self.unified
        if unified is None:
            return
        self._count("in", "binary")
        if payload:
            try:
                unified.audio_in(payload)
            except VoiceError as e:
                self.reportError(e)

    def textReceived(self, payload: bytes) -> None:
        unified = self.unified
        if unified is None:
            return
        self._count("in", "text")
        try:
            try:
                msg = json.loads(payload)
            except ValueError:
                raise ProtocolError("a text message must be JSON (a VoiceStreamMessage)", code="invalid_json") from None
            if not isinstance(msg, dict):
                raise ProtocolError("a message must be a JSON object", code="invalid_message")
            unified.handle(msg.get("type"), msg.get("data"), msg.get("metadata"))
        except VoiceError as e:
            self.reportError(e)
        except Exception:
            self.wslog.failure("handling an S3 message failed")
            self.reportError(VoiceError("internal error handling the message", code="internal_error"))

    # heartbeat: the pong must echo this connection's latest ping payload

    def sendPing(self, payload: bytes | None = None) -> None:
        if payload == _HEARTBEAT_PAYLOAD:
            payload = self._ping_payload = os.urandom(8).hex().encode("ascii")
        super().sendPing(payload)

    def onPong(self, payload: bytes) -> None:
        if self._ping_payload is not None and payload != self._ping_payload:
            self.wslog.debug("ignoring a pong that does not echo the ping")
            return
        self._ping_payload = None
        super().onPong(payload)


def websocket_factory(server: "VoiceServer", protocol: type) -> VoiceServerFactory:
    """A factory for S3's sockets: permessage-deflate as S3 configures it unless turned off."""
    factory = VoiceServerFactory(server, protocol)
    if server.config.voicews_compression:
        factory.setProtocolOptions(perMessageCompressionAccept=_accept_deflate)
    return factory


def endpoints(server: "VoiceServer") -> dict[str, "IResource"]:
    """S3's raw socket at ``--voicews-path``; off when that is empty (the dialect registry calls this)."""
    path = server.config.voicews_path
    if not path:
        return {}
    if server.admission.authenticator is None and not server.config.voicews_allow_anonymous:
        _authlog.warn(
            "{path} refuses every client (HTTP 401): no JWT key is configured (--jwt-secret / --jwt-public-keys);"
            " --voicews-allow-anonymous serves it without authentication, for development only", path=path)
    return {path: WebSocketResource(websocket_factory(server, VoiceWSProtocol))}
