"""The native dialect, ``txvoice.v1``: S1's JSON envelope and message types, plus binary audio frames.

Every client message is answered or acted on; every bad input gets an ``error`` with a stable
``code`` and the offending ``message_id``, and the connection stays up.  See ``doc/protocol.md``.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.audio.format import CODEC_ALIASES, AudioFormat
from txvoice.dialects.native_conversations import HANDLERS as conversation_handlers
from txvoice.dialects.native_resume import HANDLERS as resume_handlers
from txvoice.dialects.native_sink import NativeResponseSink
from txvoice.dialects.registry import websocket_endpoint
from txvoice.errors import AudioError, ProtocolError, StateError, VoiceError
from txvoice.protocol.envelope import Envelope, decode_envelope, encode_envelope, encoded_size
from txvoice.protocol.messages import SUBPROTOCOL
from txvoice.server.base import CLOSE_NORMAL, VoiceServerProtocol
from txvoice.server.channel import VoiceChannel
from txvoice.server.observer import IChannelObserver, chunk_error
from txvoice.session.appheartbeat import AppHeartbeat, native_heartbeat
from txvoice.session.resume import AckedIds, ResumeState, new_resume_token
from txvoice.session.session import SessionState

if TYPE_CHECKING:  # pragma: no cover
    from twisted.web.resource import IResource

    from txvoice.server.context import VoiceServer

RESPONSE_TRANSPORTS = ("binary", "base64")

#: Largest ping ``data`` echoed by a pong (encoded bytes): a pong must not amplify what a client sends.
MAX_PING_DATA = 4096

#: What a session may send before it has authenticated, when authentication is required (S1).
BEFORE_AUTH = frozenset({"auth", "ping", "pong", "heartbeat", "connect", "disconnect", "error"})

_CATEGORY = {
    "invalid_json": "protocol", "invalid_message": "protocol", "unknown_type": "protocol",
    "missing_field": "protocol", "invalid_field": "protocol", "ping_too_large": "limit",
    "message_too_large": "limit", "auth_required": "auth", "auth_failed": "auth", "internal_error": "server",
}


def _category(error: VoiceError) -> str:
    code = error.code
    if code in _CATEGORY:
        return _CATEGORY[code]
    if isinstance(error, AudioError):
        return "audio"
    if "stream" in code or "audio" in code or code.startswith("unsupported") or "codec" in code:
        return "audio"
    if "conversation" in code or code.endswith("state"):
        return "state"
    return "server"


@implementer(IChannelObserver)
class NativeVoiceProtocol(VoiceServerProtocol):
    """txvoice.v1 over one WebSocket connection."""

    subprotocols = (SUBPROTOCOL,)
    dialect = SUBPROTOCOL
    in_protocol_auth = True

    channel: VoiceChannel | None = None
    app_heartbeat: AppHeartbeat | None = None  # --native-heartbeat
    #: Messages that arrived while an asynchronous step (a resume, recording a reliable message
    #: in the shared log) was pending: handled in order once it is done.  None: not holding.
    _waiting: list[tuple[bool, bytes]] | None = None
    #: The reliable-message log this session writes to (its first session's id; kept on resume).
    _log_id: str | None = None
    _pending_steps = 0
    #: Set by a handler that acknowledges its reliable message itself, once applied (asynchronously).
    _ack_later = False

    # lifecycle

    def sessionOpened(self) -> None:
        session = self.session
        assert session is not None
        self._sink = NativeResponseSink(self)
        self.channel = VoiceChannel(self.server, session, self._sink, self)
        if self.budget is not None:
            self.channel.budget = self.budget
            self.channel.drop_output = self.dropOutput
            self.budget.add_source(self.channel.queued_bytes)
        self._acked = AckedIds()
        session.resume_token = new_resume_token()
        self._log_id = session.id
        if self.server.config.resume_ttl > 0:
            self.server.resume_store.opened(session, self._log_id)
        if not self.server.config.auth_required:
            # Authentication is optional: a new session may stream at once.
            session.transition(SessionState.AUTHENTICATED)
        self.sendEnvelope("connect", self.greeting())
        if self.server.config.native_heartbeat:
            self.app_heartbeat = native_heartbeat(self)

    def greeting(self) -> dict[str, Any]:
        server = self.server
        config = server.config
        session = self.session
        assert session is not None
        return {
            "status": "connected",
            "session_id": session.id,
            "protocol": SUBPROTOCOL,
            "server": {"name": config.server_name, "version": server.version},
            "config": {
                "sample_rate": server.pipeline.pipeline_rate,
                "channels": 1,
                "sample_width": 2,
                "frame_duration_ms": 20,
                "max_message_size": config.max_message_size,
                "codecs": sorted(set(CODEC_ALIASES.values())),
                "response_audio": list(RESPONSE_TRANSPORTS),
            },
            "auth_required": config.auth_required,
            "authenticated": session.is_authenticated,
            "heartbeat": {"ping_interval": config.ping_interval, "ping_timeout": config.ping_timeout},
            "pipeline": server.pipeline.name,
            "resume_token": session.resume_token,
        }

    def chunkProcessed(self, events: list[Any] | None) -> None:
        """Audio is not acknowledged chunk by chunk in txvoice.v1 (IChannelObserver)."""

    def chunkFailed(self, failure: Failure) -> None:
        self.sendError(chunk_error(failure, self.wslog), None)

    def sessionClosing(self) -> None:
        if self.app_heartbeat is not None:
            self.app_heartbeat.stop()
        if self.channel is not None:
            self.channel.cancel()
        session = self.session
        ttl = self.server.config.resume_ttl
        token = session.resume_token if session is not None else None
        if token and ttl > 0 and session is not None:
            self.server.resume_store.keep(
                ResumeState(token, session.id, session.user_id, session.tenant, session.conversation_id, self._acked,
                            log_id=self._log_id),
                ttl,
            )
        if session is not None:
            self.server.resume_store.closed(session)

    def sessionGoingAway(self, reason: str) -> None:
        self.sendEnvelope("disconnect", {"reason": "server_shutdown", "message": reason})

    # sending

    def sendEnvelope(self, msg_type: str, data: dict[str, Any]) -> None:
        if msg_type == "metrics" and "reply_to" not in data and self.outputCongested():
            self.dropOutput("metrics")  # a push, not an answer: dropped while congested
            return
        session = self.session
        self.sendText(encode_envelope(msg_type, data, session.conversation_id if session else None))

    def outputStateChanged(self, state: str, queued: int) -> None:
        budget = self.budget
        assert budget is not None
        self.sendEnvelope(
            "status",
            {"event_type": "output_congested" if state == "congested" else "output_recovered",
             "queued_bytes": queued, "soft_limit": budget.soft_limit, "hard_limit": budget.hard_limit},
        )

    def outputExceeded(self) -> None:
        if self.channel is not None:
            self.channel.cancel()

    def reportError(self, error: VoiceError) -> None:
        self.sendError(error, None)

    def sendError(self, error: VoiceError, message_id: str | None) -> None:
        session = self.session
        if session is not None:
            session.counters.errors += 1
        self.server.record_error(error.code)
        data: dict[str, Any] = {
            "code": error.code,
            "message": error.message,
            "error_message": error.message,
            "category": _category(error),
            "message_id": message_id,
        }
        field = error.details.get("field")
        if field is not None:
            data["field"] = field
        self.sendEnvelope("error", data)

    def reply(self, env: Envelope, msg_type: str, data: dict[str, Any]) -> None:
        """Answer a client message: ``reply_to`` names the message answered."""
        data["reply_to"] = env.message_id
        self.sendEnvelope(msg_type, data)

    # receiving

    def messageTooLarge(self, size: int, is_binary: bool) -> None:
        limit = self.server.config.max_message_size
        self.sendError(
            VoiceError(f"message of {size} bytes exceeds max_message_size {limit}", code="message_too_large"), None
        )

    def _resumableChanged(self) -> None:
        """The user, tenant or conversation changed: a store shared by nodes writes the resume state now."""
        if (session := self.session) is not None:
            if self._log_id is not None and self.server.config.resume_ttl > 0:
                self.server.resume_store.opened(session, self._log_id)

    def _hold(self, d: Deferred) -> None:
        """Hold incoming messages until ``d`` (and any other step pending) has fired, then handle them in order."""
        if self._waiting is None:
            self._waiting = []
        self._pending_steps += 1

        def release(_: object) -> None:
            self._pending_steps -= 1
            if self._pending_steps:
                return  # another step is pending: the last one to finish releases
            held, self._waiting = self._waiting or [], None
            while held:
                is_binary, payload = held.pop(0)
                if is_binary:
                    self.binaryReceived(payload)
                else:
                    self.textReceived(payload)
                if self._waiting is not None:  # holding again: the rest waits behind that step
                    self._waiting.extend(held)
                    return

        d.addBoth(release).addErrback(lambda f: self.wslog.failure("handling held messages failed", f))

    def textReceived(self, payload: bytes) -> None:
        if self._waiting is not None:
            self._waiting.append((False, payload))
            return
        try:
            env = decode_envelope(payload)
        except ProtocolError as e:
            self.sendError(e, e.details.get("message_id"))
            return
        if env.reliable and env.message_id is not None and env.message_id in self._acked:
            # A re-send of something already handled (its ack was lost): acknowledge, do not redo.
            self.sendEnvelope("ack", {"message_id": env.message_id, "duplicate": True})
            return
        shared = self.server.reliable_log
        if env.reliable and env.message_id is not None and shared is not None and self._log_id is not None:
            # Scale-out: recorded in the shared log before it is applied, so that no node applies it twice.
            self._hold(shared.record(self._log_id, env.message_id).addCallbacks(
                self._recorded, self._notRecorded, callbackArgs=(env,), errbackArgs=(env,)))
            return
        self._handle(env)

    def _recorded(self, new: bool, env: Envelope) -> None:
        if self.session is None or self.session.state is SessionState.CLOSED:
            return
        if not new:
            assert env.message_id is not None
            self._acked.add(env.message_id)
            self.sendEnvelope("ack", {"message_id": env.message_id, "duplicate": True})
            return
        if not self._handle(env) and self.server.reliable_log is not None and self._log_id is not None:
            assert env.message_id is not None
            self.server.reliable_log.forget(self._log_id, env.message_id).addErrback(lambda f: None)

    def _notRecorded(self, failure: Failure, env: Envelope) -> None:
        # Redis is down: this node's own record is all there is (at least once across nodes until it is
        # back).  The shared log says so once per outage: a warning a message would be a log storm.
        if self.session is not None and self.session.state is not SessionState.CLOSED:
            self._handle(env)

    def _handle(self, env: Envelope) -> bool:
        """Apply one message; True when it was handled (and acknowledged if reliable)."""
        handler = self._handlers[env.type]
        session = self.session
        assert session is not None  # text arrives only on an open connection, which has its session
        try:
            if not session.is_authenticated and env.type not in BEFORE_AUTH:
                raise VoiceError(f"authenticate first: {env.type} needs an authenticated session", code="auth_required")
            self._ack_later = False
            handler(self, env)
            if env.reliable and env.message_id is not None and not self._ack_later:
                self._ack(env)
            return True
        except VoiceError as e:
            self.sendError(e, env.message_id)
        except Exception:
            self.wslog.failure("handling {msg_type} failed", msg_type=env.type)
            self.sendError(VoiceError("internal error handling the message", code="internal_error"), env.message_id)
        return False

    def _ack(self, env: Envelope) -> None:
        """Acknowledge a reliable message that has been applied."""
        if env.reliable and env.message_id is not None:
            self._acked.add(env.message_id)
            self.sendEnvelope("ack", {"message_id": env.message_id, "duplicate": False})

    def binaryReceived(self, payload: bytes) -> None:
        if self._waiting is not None:
            self._waiting.append((True, payload))
            return
        channel = self.channel
        try:
            if channel is None:
                raise StateError("session is not ready", code="invalid_state")
            if self.session is None or not self.session.is_authenticated:
                raise VoiceError("authenticate first: audio needs an authenticated session", code="auth_required")
            channel.audio(payload, None)
        except VoiceError as e:
            self.sendError(e, None)

    # handlers

    def on_disconnect(self, env: Envelope) -> None:
        self.reply(env, "disconnect", {"reason": env.data.get("reason", "client_request")})
        self.sendClose(CLOSE_NORMAL, "client disconnect")

    def on_ping(self, env: Envelope) -> None:
        if env.data and encoded_size(env.data) > MAX_PING_DATA:
            raise ProtocolError(
                f"ping data is over {MAX_PING_DATA} bytes; a pong echoes it", code="ping_too_large", field="data"
            )
        data = dict(env.data)
        data["client_timestamp"] = env.timestamp
        self.reply(env, "pong", data)

    def on_pong(self, env: Envelope) -> None:
        pass

    def on_heartbeat(self, env: Envelope) -> None:
        """S4's application heartbeat: answered, and counted as proof of life."""
        session = self.session
        assert session is not None
        session.heartbeat.alive(self.server.clock.seconds())
        if env.data.get("pong") and self.app_heartbeat is not None:
            self.app_heartbeat.answered()  # the answer to one of our heartbeats: nothing to say back
            return
        self.reply(env, "heartbeat", {"server_time": self.server.clock.seconds()})

    def on_auth(self, env: Envelope) -> None:
        session = self.session
        assert session is not None
        d = self.server.authenticate(env.data["token"], env.data.get("user_id"))

        def ok(principal) -> None:
            if session.state is SessionState.CLOSED:
                return
            session.identify(user_id=principal.user_id, tenant=principal.tenant)
            if session.state is SessionState.CONNECTED:
                session.transition(SessionState.AUTHENTICATED)
            self._resumableChanged()
            self.watchExpiry(principal.expires_at)
            self.reply(
                env,
                "auth_success",
                {"user_id": session.user_id, "tenant": session.tenant, "session_id": session.id,
                 "expires_at": principal.expires_at},
            )

        def failed(f: Failure) -> None:
            err = f.value if isinstance(f.value, VoiceError) else VoiceError("authentication failed", code="auth_failed")
            if not isinstance(f.value, VoiceError):
                self.wslog.failure("in-protocol auth failed", f)
            self.server.record_error(err.code)
            self.reply(env, "auth_failed", {"code": err.code, "message": err.message})

        d.addCallbacks(ok, failed)

    def on_voice_start(self, env: Envelope) -> None:
        data = env.data
        channel = self.channel
        assert channel is not None
        transport = data.get("response_audio", "binary")
        if transport not in RESPONSE_TRANSPORTS:
            raise ProtocolError(
                f"response_audio must be one of {list(RESPONSE_TRANSPORTS)}", code="invalid_field", field="response_audio"
            )
        fmt = AudioFormat.validated(
            codec=data.get("codec") or data.get("format") or "pcm_s16le",
            sample_rate=data.get("sample_rate", self.server.pipeline.pipeline_rate),
            channels=data.get("channels", 1),
            frame_duration_ms=data.get("frame_duration_ms", 20),
        )
        stream = channel.start(fmt, data.get("stream_id"), dict(data.get("options") or {}), data.get("mode"))
        self._sink.transport = transport
        self._sink.stream_id = stream.id
        settings = stream.settings
        self.reply(
            env,
            "voice_start",
            {"stream_id": stream.id, "format": fmt.as_dict(), "response_audio": transport, "mode": settings.mode,
             "vad": settings.vad},
        )

    def on_voice_chunk(self, env: Envelope) -> None:
        channel = self.channel
        assert channel is not None
        stream_id = env.data.get("stream_id")
        if stream_id is not None and (channel.stream is None or channel.stream.id != stream_id):
            raise StateError(f"stream {stream_id!r} is not active", code="unknown_stream")
        try:
            raw = base64.b64decode(env.data["audio"], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("data.audio is not valid base64", code="invalid_audio", field="audio") from None
        channel.audio(raw, env.data.get("sequence"))

    def on_voice_end(self, env: Envelope) -> None:
        channel = self.channel
        assert channel is not None
        stream_id = env.data.get("stream_id")
        self.reply(env, "voice_end", channel.active(stream_id).as_dict())
        channel.end(stream_id)

    def on_playback(self, env: Envelope) -> None:
        """The client's playback position in the current response (used when it barges in)."""
        channel = self.channel
        assert channel is not None
        channel.playbackPosition(env.data.get("response_id"), float(env.data["position_ms"]))

    def on_status(self, env: Envelope) -> None:
        session = self.session
        channel = self.channel
        assert session is not None and channel is not None
        self.reply(
            env,
            "status",
            {
                "event_type": "session_status",
                "session": session.as_dict(),
                "stream": channel.stream.as_dict() if channel.stream is not None else None,
            },
        )

    def on_metrics(self, env: Envelope) -> None:
        session = self.session
        assert session is not None
        if "subscribe" in env.data:
            session.metrics_subscribed = bool(env.data["subscribe"])
        data = self.metricsSnapshot()
        data["subscribed"] = session.metrics_subscribed
        self.reply(env, "metrics", data)

    def pushMetrics(self) -> None:
        """The periodic push to a subscribed session (``metrics_interval``)."""
        self.sendEnvelope("metrics", self.metricsSnapshot())

    def metricsSnapshot(self) -> dict[str, Any]:
        """The session's counters and the server's real-time figures (``metrics`` messages)."""
        session = self.session
        assert session is not None
        server = self.server
        return {
            "session": session.counters.as_dict(),
            "server": {
                "active_sessions": len(server.registry),
                "connections_total": server.stats.connections_total,
                "audio_queue_depth": server.workers.queue_depth,
            },
            "realtime": server.history.get_real_time_metrics(),
        }

    def on_error(self, env: Envelope) -> None:
        self.wslog.warn(
            "client {session_id} reported error {code}: {message}",
            session_id=self.session.id if self.session else None,
            code=env.data.get("code"),
            message=env.data.get("message"),
        )

    def deliverEvent(self, event_type: str, data: dict, conversation_id: str | None) -> None:
        self.sendEnvelope("status", {"event_type": event_type, **data})

    _handlers: dict[str, Callable[["NativeVoiceProtocol", Envelope], None]] = {}


NativeVoiceProtocol._handlers = {
    name[3:]: getattr(NativeVoiceProtocol, name) for name in dir(NativeVoiceProtocol) if name.startswith("on_")
} | conversation_handlers | resume_handlers


def endpoints(server: "VoiceServer") -> dict[str, IResource]:
    """The native dialect at ``--path``, off when that is empty (the dialect registry calls this)."""
    return websocket_endpoint(server.config.path, server, NativeVoiceProtocol)
