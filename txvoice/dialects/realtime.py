"""
The realtime dialect (seed S4, "AI Answer Ninja"), at ``/realtime/ws``: call sessions.

S4's wire format, exactly: every JSON message is ``{type, callId, timestamp, data}``.  A client
connects, sends ``session_start {data: {userId, callId, authToken}}`` (the session token from
``POST /auth/websocket``, or a JWT), then streams binary audio with no announcement:
``MediaRecorder`` WebM/Opus chunks, or PCM.  The container is found in the first bytes (EBML =
WebM, ``RIFF``/``WAVE``, ``OggS``), else the format ``session_start.data`` declares is used
(S4's ``AudioProcessingOptions``: ``sampleRate``, ``channels``, ``enableVAD``, ``vadThreshold``,
``enableDenoising``, ``enableAGC``, ``maxChunkSize``, ``bufferDuration``).  Turns are found by
voice activity and answered with ``transcript``, ``ai_response``, ``processing_status`` (stages and
latencies), ``audio_response`` + binary audio (PCM16 mono, 16 kHz unless asked otherwise).  The
server sends ``heartbeat`` every ``interval``; a client answers ``{data: {pong: true}}`` or is
closed with 4004 after ``maxMissed``.  Calls survive a dropped connection (``resume_ttl``):
what is produced meanwhile is queued and delivered at the next ``session_start`` of that call.
See ``doc/realtime.md``.
"""

from __future__ import annotations

import base64
import binascii
import json
import weakref
from typing import TYPE_CHECKING, Any, Callable

from autobahn.twisted.resource import WebSocketResource
from twisted.python.failure import Failure

from txvoice.audio.format import AudioFormat
from txvoice.audio.sniff import sniff_container, wav_shape
from txvoice.dialects.realtime_calls import CallTable
from txvoice.dialects.realtime_callsession import CallSession, envelope, user_address
from txvoice.dialects.realtime_options import audio_options
from txvoice.dialects.realtime_sink import RealtimeSink
from txvoice.errors import ProtocolError, StateError, VoiceError
from txvoice.security.session_tokens import BINDING_CLAIM
from txvoice.server.base import CLOSE_NORMAL, VoiceServerProtocol
from txvoice.server.factory import VoiceServerFactory
from txvoice.server.observer import chunk_error
from txvoice.session.appheartbeat import CLOSE_HEARTBEAT_MISSED, AppHeartbeat, HeartbeatConfig
from txvoice.session.session import SessionState

if TYPE_CHECKING:  # pragma: no cover
    from twisted.web.resource import IResource

    from txvoice.server.context import VoiceServer

#: Close code of a connection whose call was taken over by a newer connection (a reconnect).
CLOSE_TAKEN_OVER = 4005

_ERROR_CATEGORY = {
    "auth_required": "auth", "auth_failed": "auth", "token_expired": "auth", "token_missing": "auth",
    "call_mismatch": "auth", "user_mismatch": "auth", "call_in_use": "auth",
    "invalid_json": "protocol", "invalid_message": "protocol", "unknown_type": "protocol",
    "missing_field": "protocol", "invalid_field": "protocol", "session_required": "state",
    "session_already_started": "state", "message_too_large": "limit", "chunk_too_large": "limit",
    "rate_limited": "limit",
}


class RealtimeProtocol(VoiceServerProtocol):
    """S4's ``/realtime/ws``."""

    dialect = "realtime"
    in_protocol_auth = True

    call: CallSession | None = None
    heartbeat: AppHeartbeat | None = None
    _pending_start = False

    @property
    def calls(self) -> CallTable:
        return call_table(self.server)

    # lifecycle

    def sessionOpened(self) -> None:
        table = self.calls
        self.heartbeat = AppHeartbeat(self.server.clock, table.heartbeat, self._sendHeartbeat, self._heartbeatMissed)
        self.heartbeat.start()
        table.on_heartbeat_config.append(self.heartbeat.reconfigure)
        assert self.session is not None
        self.sendS4("connection_status", {
            "status": "connected", "sessionId": self.session.id, "server": self.server.config.server_name,
            "version": self.server.version, "heartbeat": table.heartbeat.as_s4(),
            "authRequired": self.server.admission.authenticator is not None,
        })

    def sessionClosing(self) -> None:
        heartbeat = self.heartbeat
        if heartbeat is not None:
            heartbeat.stop()
            if heartbeat.reconfigure in self.calls.on_heartbeat_config:
                self.calls.on_heartbeat_config.remove(heartbeat.reconfigure)
        call, self.call = self.call, None
        if call is not None:
            call.detach(self)

    def sessionGoingAway(self, reason: str) -> None:
        self.sendS4("connection_status", {"status": "server_shutdown", "message": reason})

    def _sendHeartbeat(self, seq: int, config: HeartbeatConfig) -> None:
        self.sendS4("heartbeat", {"ping": True, "seq": seq, "serverTime": int(self.server.clock.seconds() * 1000),
                                  "interval": round(config.interval * 1000)})

    def _heartbeatMissed(self, missed: int) -> None:
        server = self.server
        server.stats.heartbeat_drops += 1
        server.metrics.heartbeat_drop()
        self.reportError(VoiceError(f"{missed} heartbeats went unanswered", code="heartbeat_timeout"))
        self.closeSession(CLOSE_HEARTBEAT_MISSED, "heartbeat timeout")

    # sending

    def writeOut(self, payload: bytes, is_binary: bool) -> None:
        if is_binary:
            self.sendBinary(payload)
        else:
            self.sendText(payload)

    def sendS4(self, msg_type: str, data: dict[str, Any], call_id: str | None = None) -> None:
        self.sendText(envelope(msg_type, call_id or (self.call.call_id if self.call else None), data))

    def reportError(self, error: VoiceError) -> None:
        self.sendError(error)

    def sendError(self, error: VoiceError, msg_type: str | None = None) -> None:
        session = self.session
        if session is not None:
            session.counters.errors += 1
        self.server.record_error(error.code)
        data: dict[str, Any] = {"code": error.code, "message": error.message,
                                "category": _ERROR_CATEGORY.get(error.code, "server"), "messageType": msg_type}
        if error.details.get("field") is not None:
            data["field"] = error.details["field"]
        self.sendS4("error", data)

    def _current(self) -> CallSession:
        """The call this connection serves (handlers other than session_start run only with one)."""
        call = self.call
        assert call is not None
        return call

    def sink_for(self, call: CallSession) -> RealtimeSink:
        return RealtimeSink(call)

    # receiving

    def messageTooLarge(self, size: int, is_binary: bool) -> None:
        self.sendError(VoiceError(f"message of {size} bytes exceeds {self.server.config.max_message_size}",
                                  code="message_too_large"))

    def textReceived(self, payload: bytes) -> None:
        msg_type = None
        try:
            try:
                message = json.loads(payload)
            except ValueError:
                raise ProtocolError("the message is not JSON", code="invalid_json") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ProtocolError("a message is an object {type, callId, timestamp, data}", code="invalid_message")
            msg_type = message["type"]
            data = message.get("data", {})
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise ProtocolError("data must be an object", code="invalid_field", field="data")
            handler = self._handlers.get(msg_type)
            if handler is None:
                raise ProtocolError(f"unknown message type {msg_type!r}", code="unknown_type")
            if self.call is None and msg_type not in ("session_start", "heartbeat", "error"):
                raise StateError(f"{msg_type} needs a call session: send session_start first",
                                 code="session_required")
            handler(self, message, data)
        except VoiceError as e:
            self.sendError(e, msg_type)
        except Exception:
            self.wslog.failure("handling {msg_type} failed", msg_type=msg_type)
            self.sendError(VoiceError("internal error handling the message", code="internal_error"), msg_type)

    def binaryReceived(self, payload: bytes) -> None:
        try:
            self._audio(payload)
        except VoiceError as e:
            self.sendError(e, "audio_chunk")

    def _audio(self, payload: bytes) -> None:
        call = self.call
        if call is None:
            raise StateError("audio before session_start: send session_start first", code="session_required")
        if call.max_chunk_size and len(payload) > call.max_chunk_size:
            raise VoiceError(f"chunk of {len(payload)} bytes exceeds maxChunkSize {call.max_chunk_size}",
                             code="chunk_too_large")
        channel = call.channel
        assert channel is not None
        if channel.stream is None:
            channel.start(self._streamFormat(call, payload), options=dict(call.options), mode="voice_activity")
        channel.audio(payload)

    def _streamFormat(self, call: CallSession, first: bytes) -> AudioFormat:
        container = call.detected = sniff_container(first)
        declared = call.fallback_format
        if container == "webm":
            return AudioFormat("webm_opus", 48000, declared.channels)
        if container == "wav":
            shape = wav_shape(first)
            rate, channels = shape if shape is not None else (declared.sample_rate, declared.channels)
            return AudioFormat.validated("wav", rate, channels)
        if container == "ogg":
            raise VoiceError("Ogg audio is not decoded here: send WebM/Opus (MediaRecorder's audio/webm;codecs=opus), "
                             "WAV or raw PCM", code="unsupported_container")
        return declared

    def chunkFailed(self, failure: Failure) -> None:
        self.sendError(chunk_error(failure, self.wslog), "audio_chunk")

    # handlers: (self, message, data)

    def on_heartbeat(self, message: dict[str, Any], data: dict[str, Any]) -> None:
        if data.get("pong") and self.heartbeat is not None:
            self.heartbeat.answered(data.get("seq"))
        elif data.get("ping"):
            self.sendS4("heartbeat", {"pong": True, "serverTime": int(self.server.clock.seconds() * 1000)})

    def on_error(self, message: dict[str, Any], data: dict[str, Any]) -> None:
        self.wslog.warn("client {session_id} reported error: {error}",
                        session_id=self.session.id if self.session is not None else None, error=data)

    def on_session_start(self, message: dict[str, Any], data: dict[str, Any]) -> None:
        if self.call is not None or self._pending_start:
            raise StateError("a call session is already started on this connection; send session_end first",
                             code="session_already_started")
        call_id = data.get("callId") or message.get("callId")
        user_id = data.get("userId")
        if not isinstance(call_id, str) or not call_id:
            raise ProtocolError("session_start needs data.callId", code="missing_field", field="callId")
        if message.get("callId") and data.get("callId") and message["callId"] != data["callId"]:
            raise VoiceError("the envelope's callId and data.callId differ", code="call_mismatch")
        if user_id is not None and not isinstance(user_id, str):
            raise ProtocolError("data.userId must be a string", code="invalid_field", field="userId")
        audio = audio_options(data, self.server.config.max_message_size)
        heartbeat = self.calls.heartbeat.updated(data["heartbeat"]) if isinstance(data.get("heartbeat"), dict) else None
        token = data.get("authToken")
        admitted = self.admission.principal if self.admission is not None else None
        if token is None and admitted is None and self.server.admission.authenticator is not None:
            raise VoiceError("session_start needs data.authToken (POST /auth/websocket gives one)",
                             code="auth_required")
        if token is not None and not isinstance(token, str):
            raise ProtocolError("data.authToken must be a string", code="invalid_field", field="authToken")
        self._pending_start = True
        if token is None:
            from twisted.internet.defer import succeed

            d = succeed(admitted) if admitted is not None else self.server.authenticate("", user_id)
        else:
            d = self.server.authenticate(token, user_id)
        d.addCallback(self._authenticated, call_id, user_id, audio, heartbeat)
        d.addErrback(self._startFailed)

    def _authenticated(self, principal: Any, call_id: str, user_id: str | None,
                       audio: tuple[AudioFormat, dict[str, Any], int], heartbeat: HeartbeatConfig | None) -> None:
        self._pending_start = False
        session = self.session
        if session is None or session.state is SessionState.CLOSED or self.state != self.STATE_OPEN:
            return
        binding = dict(principal.claims.get(BINDING_CLAIM) or {})
        if binding.get("callId") is not None and binding["callId"] != call_id:
            raise VoiceError("this session token was issued for another call", code="call_mismatch")
        if user_id is not None and user_id != principal.user_id and self.server.admission.authenticator is not None:
            raise VoiceError("data.userId is not the token's user", code="user_mismatch")
        call = self.calls.get(call_id)
        if call is not None:
            self._startCall(principal, call, True, audio, heartbeat)
            return
        # Not held here: the call store says whether it is new or another node's (then handed over).
        fmt, options, chunk = audio
        self._pending_start = True
        d = self.calls.claim(call_id, principal.user_id, principal.tenant,
                             {"fallbackFormat": fmt.as_dict(), "options": options, "maxChunkSize": chunk})
        d.addCallback(self._claimed, principal, audio, heartbeat)
        d.addErrback(self._startFailed)

    def _claimed(self, claim: tuple[CallSession, bool], principal: Any,
                 audio: tuple[AudioFormat, dict[str, Any], int], heartbeat: HeartbeatConfig | None) -> None:
        self._pending_start = False
        call, resumed = claim
        session = self.session
        if session is None or session.state is SessionState.CLOSED or self.state != self.STATE_OPEN:
            if call.protocol is None and call._expiry is None and not call.ended:
                call.park()  # claimed for a connection that went meanwhile: kept for its reconnect
            return
        self._startCall(principal, call, resumed, audio, heartbeat)

    def takenOver(self, call: CallSession) -> None:
        """A newer connection (on this node or another) serves ``call`` now: close this one with 4005."""
        self.call = None
        call.detach(self)
        self.sendS4("connection_status", {"status": "taken_over", "callId": call.call_id})
        self.closeSession(CLOSE_TAKEN_OVER, "call taken over by a new connection")

    def _startCall(self, principal: Any, call: CallSession, resumed: bool,
                   audio: tuple[AudioFormat, dict[str, Any], int], heartbeat: HeartbeatConfig | None) -> None:
        session = self.session
        assert session is not None
        table = self.calls
        call_id = call.call_id
        if call.user_id != principal.user_id or call.tenant != principal.tenant:
            raise VoiceError("this call belongs to another user", code="call_in_use")
        if resumed:
            previous = call.protocol
            if previous is not None and previous is not self:
                previous.takenOver(call)
            table.resumes += 1
            self.server.stats.resumes += 1
            self.server.metrics.reconnection()
        call.fallback_format, call.options, call.max_chunk_size = audio
        if session.state is SessionState.CONNECTED:
            session.transition(SessionState.AUTHENTICATED)
        session.identify(user_id=principal.user_id, tenant=principal.tenant, conversation_id=call_id)
        self.watchExpiry(principal.expires_at)
        if heartbeat is not None and self.heartbeat is not None:
            self.heartbeat.reconfigure(heartbeat)
        self.call = call

        def announce(queued: int) -> None:
            self.sendS4("connection_status", {
                "status": "session_started", "callId": call_id, "userId": principal.user_id, "sessionId": session.id,
                "resumed": resumed, "queued": queued,
                "heartbeat": (self.heartbeat.config if self.heartbeat else table.heartbeat).as_s4(),
                "audio": {"fallbackFormat": call.fallback_format.as_dict(), "detect": ["webm", "wav", "ogg"],
                          "maxChunkSize": call.max_chunk_size or self.server.config.max_message_size,
                          "response": {"format": call.options["output_codec"],
                                       "sampleRate": call.options["output_sample_rate"], "channels": 1}},
                "limits": self._limits(),
            })

        d = call.attach(self, announce)
        d.addCallback(self._deliverUserQueue, principal.user_id)
        d.addErrback(lambda f: self.wslog.failure("delivering queued messages failed", f))

    def _deliverUserQueue(self, delivered: int, user_id: str) -> None:
        self.calls.queued_delivered += delivered
        d = self.calls.store.take(user_address(user_id))

        def write(queued: list[Any]) -> None:
            for message in queued:
                self.writeOut(message.payload, message.is_binary)
            self.calls.queued_delivered += len(queued)

        d.addCallback(write)

    def _limits(self) -> dict[str, Any]:
        config = self.server.config
        return {"MAX_AUDIO_DURATION": 180_000, "PROCESSING_TIMEOUT": config.processing_timeout_ms,
                "MAX_CONCURRENT_PROCESSING": config.max_concurrent_processing,
                "maxMessageSize": config.max_message_size}

    def _startFailed(self, failure: Failure) -> None:
        self._pending_start = False
        error = failure.value
        if not isinstance(error, VoiceError):
            self.wslog.failure("session_start failed", failure)
            error = VoiceError("authentication failed", code="auth_failed")
        self.sendError(error, "session_start")

    def on_session_end(self, message: dict[str, Any], data: dict[str, Any]) -> None:
        call, self.call = self.call, None
        assert call is not None
        if call.channel is not None and call.channel.stream is not None:
            call.channel.end()
        call.end()
        self.sendS4("connection_status", {"status": "session_ended", "callId": call.call_id,
                                          "reason": data.get("reason", "client_request")}, call.call_id)

    def on_audio_chunk(self, message: dict[str, Any], data: dict[str, Any]) -> None:
        """Audio in JSON (``data.audio``, base64), for clients that cannot send binary messages."""
        raw = data.get("audio")
        if not isinstance(raw, str):
            raise ProtocolError("audio_chunk needs data.audio (base64)", code="missing_field", field="audio")
        try:
            chunk = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("data.audio is not base64", code="invalid_field", field="audio") from None
        self._audio(chunk)

    def on_metrics(self, message: dict[str, Any], data: dict[str, Any]) -> None:
        session = self.session
        assert session is not None
        if "subscribe" in data:
            session.metrics_subscribed = bool(data["subscribe"])
        self.sendS4("metrics", {**self.metricsSnapshot(), "subscribed": session.metrics_subscribed})

    def pushMetrics(self) -> None:
        """The periodic push to a call session that subscribed (``metrics_interval``)."""
        self.sendS4("metrics", {**self.metricsSnapshot(), "subscribed": True})

    def metricsSnapshot(self) -> dict[str, Any]:
        """S4's connection and processing metrics for this connection and server (also pushed to subscribers)."""
        session = self.session
        assert session is not None
        server = self.server
        counters = session.counters
        realtime = server.history.get_real_time_metrics()
        return {
            "connection": {"messagesReceived": counters.text_in + counters.binary_in,
                           "messagesSent": counters.text_out + counters.binary_out,
                           "bytesReceived": counters.text_bytes_in + counters.binary_bytes_in,
                           "bytesSent": counters.text_bytes_out + counters.binary_bytes_out,
                           "errors": counters.errors},
            "server": {"activeConnections": len(server.registry), "totalConnections": server.stats.connections_total,
                       "calls": len(self.calls), "reconnections": self.calls.resumes,
                       "offlineDropped": dict(self.calls.store.dropped)},
            "processing": {"audioChunksProcessed": counters.audio_frames_in, "turns": counters.turns},
            "realtime": realtime,
        }

    def on_connection_status(self, message: dict[str, Any], data: dict[str, Any]) -> None:
        self.sendS4("connection_status", {"status": "connected", "callId": self._current().call_id,
                                          "heartbeat": self.heartbeat.config.as_s4() if self.heartbeat else None})

    def on_processing_status(self, message: dict[str, Any], data: dict[str, Any]) -> None:
        call = self._current()
        streaming = call.channel is not None and call.channel.stream is not None
        self.sendS4("processing_status", {"stage": "session", "status": "streaming" if streaming else "idle",
                                          "container": call.detected})

    def deliverEvent(self, event_type: str, data: dict[str, Any], conversation_id: str | None) -> None:
        """A broadcast (metrics pushes, server events): S4's envelope with that type."""
        self.sendS4(event_type, dict(data))

    def closeCall(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        self.closeSession(code, reason)

    _handlers: dict[str, Callable[["RealtimeProtocol", dict[str, Any], dict[str, Any]], None]] = {}


RealtimeProtocol._handlers = {
    name[3:]: getattr(RealtimeProtocol, name) for name in dir(RealtimeProtocol) if name.startswith("on_")
}


#: Each server's call table, kept beside the server rather than as an attribute patched onto it.
_tables: "weakref.WeakKeyDictionary[VoiceServer, CallTable]" = weakref.WeakKeyDictionary()


def call_table(server: "VoiceServer") -> CallTable:
    """
    The server's call sessions (one table per server, made on first use), with its offline store and
    the ``txvoice_offline_messages_dropped_total`` counter.  Embedding code reaches it here
    (``updateHeartbeatConfig``, ``sendToUser``, ``sendToCall``).
    """
    table = _tables.get(server)
    if table is None:
        from prometheus_client import Counter

        table = _tables[server] = CallTable(server)
        table.dropped_counter = Counter(
            "offline_messages_dropped", "Messages for disconnected call sessions or users dropped from the offline "
            "queue (oldest first), by bound: count, bytes, expired", ["reason"],
            namespace="txvoice", registry=server.metrics.registry)
    return table


def endpoints(server: "VoiceServer") -> dict[str, IResource]:
    """The realtime dialect at ``--realtime-path``, off when that is empty (the dialect registry calls this)."""
    path = server.config.realtime_path
    if not path:
        return {}
    call_table(server)
    return {path: WebSocketResource(VoiceServerFactory(server, RealtimeProtocol))}
