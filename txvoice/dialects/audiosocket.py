"""
Asterisk AudioSocket over TCP (``--audiosocket tcp:9092:interface=127.0.0.1``; off by default).

The protocol as Asterisk documents it (https://docs.asterisk.org/Configuration/Channel-Drivers/AudioSocket/):
every message is a 3-byte header, a one-byte kind and a two-byte big-endian payload length, then
the payload.  Kinds: ``0x00`` hangup (no payload; closing the socket is also enough), ``0x01`` the
call's UUID (16 bytes, sent first), ``0x03`` one DTMF digit (ASCII), ``0x10`` audio: signed
linear 16-bit little-endian mono at 8 kHz (20 ms = 320 bytes), ``0xff`` an error (an optional
one-byte code: 0x01 hangup, 0x02 frame forwarding, 0x04 memory).  Asterisk's dialplan
``AudioSocket(<uuid>,host:port)`` (or ``Dial(AudioSocket/host:port/<uuid>)``) connects here.

Why AudioSocket and not chan_websocket: both are documented, but AudioSocket's whole protocol is
the five kinds above, so a test client can replay it exactly without an Asterisk, while
chan_websocket (Asterisk 22+) is driven by ARI and its control messages and flow control need a
running Asterisk to be tested against.  AudioSocket also runs on Asterisk 18 and later.

A call is one session: the UUID opens a voice-activity stream (the UUID is its conversation),
audio goes to the same channel, turns and pipeline as every dialect, the reply comes back as
``0x10`` frames paced at real time, and a barge-in simply stops them (Asterisk plays what it is
sent as it comes: there is no far buffer to clear).  Bad input is logged and counted, and the call
goes on.  With ``--processes N`` only the first process listens.
"""

from __future__ import annotations

import struct
import uuid
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.dialects.telephony import audio_failed, deliver_dtmf, input_problem, log, telephony_metrics
from txvoice.errors import VoiceError
from txvoice.pipeline.interfaces import IResponseSink
from txvoice.server.channel import VoiceChannel
from txvoice.server.observer import IChannelObserver
from txvoice.session.session import Session, SessionState

if TYPE_CHECKING:  # pragma: no cover
    from twisted.web.resource import IResource

    from txvoice.server.context import VoiceServer

DIALECT = "audiosocket"
KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_SLIN, KIND_ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
SLIN_FORMAT = AudioFormat("pcm_s16le", 8000, 1, 20)
ASTERISK_ERRORS: dict[int | None, str] = {0x01: "hangup", 0x02: "frame_forwarding", 0x04: "memory"}
_HEADER = struct.Struct(">BH")
HANGUP = _HEADER.pack(KIND_HANGUP, 0)


def message(kind: int, payload: bytes = b"") -> bytes:
    """One AudioSocket message: kind, big-endian length, payload."""
    return _HEADER.pack(kind, len(payload)) + payload


@implementer(IResponseSink)
class _AudioSocketSink:
    """A reply as ``0x10`` frames (the response stream has already cut it into 20 ms)."""

    def __init__(self, protocol: "AudioSocketProtocol") -> None:
        self.protocol = protocol

    def event(self, event_type: str, data: dict[str, Any]) -> None:
        if event_type == "barge_in":
            log.info("audiosocket call {call_id}: barge-in", call_id=self.protocol.call_id, barge_in=data)

    def startResponse(self, text_content: str | None, audio_format: AudioFormat | None, metadata: dict[str, Any]) -> None:
        pass

    def audio(self, chunk: bytes) -> None:
        protocol = self.protocol
        for i in range(0, len(chunk), 65535):
            protocol.send(KIND_SLIN, chunk[i:i + 65535])
        if protocol.session is not None:
            protocol.session.counters.audio_frames_out += 1

    def endResponse(self, summary: dict[str, Any]) -> None:
        log.debug("audiosocket call {call_id}: reply ended", call_id=self.protocol.call_id, summary=summary)


@implementer(IChannelObserver)
class AudioSocketProtocol(Protocol):
    """One Asterisk call over AudioSocket."""

    def __init__(self, server: "VoiceServer") -> None:
        self.server = server
        self.buffer = bytearray()
        self.session: Session | None = None
        self.channel: VoiceChannel | None = None
        self.call_id: str | None = None
        self._closed: "Deferred[None]" = Deferred()

    @property
    def wire(self) -> ITCPTransport:
        """The call's TCP connection (set from ``connectionMade`` on)."""
        assert self.transport is not None
        return cast(ITCPTransport, self.transport)

    def connectionMade(self) -> None:
        server = self.server
        peer = self.wire.getPeer()
        if server.shutting_down or len(server.registry) >= server.config.max_connections:
            server.record_refused("shutting_down" if server.shutting_down else "max_connections")
            self.wire.write(HANGUP)
            self.wire.loseConnection()
            return
        session = self.session = Session(peer=f"tcp:{getattr(peer, 'host', '')}:{getattr(peer, 'port', '')}",
                                         dialect=DIALECT)
        session.last_activity = server.clock.seconds()
        session.attributes["opened_at"] = session.last_activity
        session.attributes["subscriber"] = self
        session.close = self.closeSession
        session.transition(SessionState.AUTHENTICATED)
        self.channel = VoiceChannel(server, session, _AudioSocketSink(self), self)
        server.registry.add(session)
        server.connection_opened(session)
        log.info("audiosocket session {session_id} opened from {peer}", session_id=session.id, peer=session.peer)

    # receiving

    def dataReceived(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        size = len(buffer)
        while size - offset >= 3:
            kind, length = _HEADER.unpack_from(buffer, offset)
            if size - offset - 3 < length:
                break
            payload = bytes(buffer[offset + 3:offset + 3 + length])
            offset += 3 + length
            self.messageReceived(kind, payload)
            if self.session is None or self.session.state is SessionState.CLOSED:
                break
        del buffer[:offset]

    def messageReceived(self, kind: int, payload: bytes) -> None:
        session = self.session
        if session is None:
            return
        now = session.last_activity = self.server.clock.seconds()
        # Asterisk streams every 20 ms and AudioSocket has no ping: a message is proof of life.
        attributes = session.attributes
        if "ping_sent" in attributes:
            del attributes["ping_sent"]
            attributes["missed_pings"] = 0
        attributes["pong_at"] = now
        session.counters.binary_in += 1
        session.counters.binary_bytes_in += len(payload) + 3
        try:
            if kind == KIND_SLIN:
                self.on_audio(payload)
            elif kind == KIND_UUID:
                self.on_uuid(payload)
            elif kind == KIND_DTMF:
                self.on_dtmf(payload)
            elif kind == KIND_HANGUP:
                log.info("audiosocket call {call_id}: hangup", call_id=self.call_id)
                self.closeSession(1000, "hangup")
            elif kind == KIND_ERROR:
                code = payload[0] if payload else None
                self.problem("asterisk_error", f"Asterisk reported error {ASTERISK_ERRORS.get(code, code)}",
                             asterisk_code=code)
            else:
                raise VoiceError(f"message kind 0x{kind:02x} is not supported (audio is 0x10: slin 8 kHz)",
                                 code="unsupported_kind")
        except VoiceError as e:
            self.problem(e.code, e.message)
        except Exception:
            log.failure("handling an AudioSocket message failed")
            self.problem("internal_error", "the message could not be handled")

    def on_uuid(self, payload: bytes) -> None:
        channel = self.channel
        assert channel is not None and self.session is not None
        if len(payload) != 16:
            raise VoiceError(f"the UUID payload has {len(payload)} bytes, not 16", code="invalid_uuid")
        if channel.stream is not None:
            raise VoiceError("a second UUID on one call", code="uuid_repeated")
        call_id = self.call_id = str(uuid.UUID(bytes=payload))
        conversation = self.server.conversation(call_id)
        conversation.metadata.update(telephony=DIALECT, call_id=call_id)
        self.session.identify(conversation_id=conversation.id)
        self.session.attributes["call"] = {"uuid": call_id}
        channel.start(SLIN_FORMAT, stream_id=call_id, mode="voice_activity",
                      options={"telephony": DIALECT, "call_id": call_id, "dtmf": [], "resample_quality": "QQ"})
        telephony_metrics(self.server).calls.labels(DIALECT).inc()
        log.info("audiosocket call {call_id} started: session {session_id}", call_id=call_id,
                 session_id=self.session.id)

    def on_audio(self, payload: bytes) -> None:
        channel = self.channel
        assert channel is not None
        if channel.stream is None:
            raise VoiceError("audio before the call's UUID", code="audio_before_uuid")
        if not payload or len(payload) % 2:
            raise VoiceError(f"slin audio of {len(payload)} bytes is not whole 16-bit samples", code="invalid_audio")
        channel.audio(payload)

    def on_dtmf(self, payload: bytes) -> None:
        digit = payload.decode("ascii", "replace")
        if len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise VoiceError(f"DTMF payload {payload!r} is not one key", code="invalid_dtmf")
        assert self.channel is not None
        deliver_dtmf(self.server, self.channel, DIALECT, digit, {"call_id": self.call_id})

    def problem(self, code: str, message: str, **fields: Any) -> None:
        input_problem(self.server, self.session, DIALECT, code, message, call_id=self.call_id, **fields)

    def chunkProcessed(self, events: list[Any] | None) -> None:
        """AudioSocket acknowledges nothing (IChannelObserver)."""

    def chunkFailed(self, failure: Failure) -> None:
        audio_failed(failure, self.problem, log, "AudioSocket")

    # sending and closing

    def send(self, kind: int, payload: bytes = b"") -> None:
        if self.session is None or self.session.state is SessionState.CLOSED:
            return
        self.session.counters.binary_out += 1
        self.session.counters.binary_bytes_out += len(payload) + 3
        self.wire.write(_HEADER.pack(kind, len(payload)) + payload)

    def closeSession(self, code: int = 1000, reason: str = "") -> None:
        """End the call: hang up (unless Asterisk did) and close the socket."""
        if self.session is None or self.session.state is SessionState.CLOSED:
            return
        if reason != "hangup":
            self.wire.write(HANGUP)
        self.wire.loseConnection()

    def sendPing(self, payload: bytes = b"") -> None:
        """The heartbeat's ping: AudioSocket has none; the next message from Asterisk answers it."""

    def deliverEvent(self, event_type: str, data: dict[str, Any], conversation_id: str | None) -> None:
        """A broadcast event: AudioSocket carries no events to Asterisk."""

    def goingAway(self, reason: str = "server shutting down") -> None:
        self.closeSession(1001, reason)

    def whenClosed(self) -> "Deferred[None]":
        if self._closed.called:
            return succeed(None)
        d: "Deferred[None]" = Deferred()

        def closed(result: object) -> object:
            d.callback(None)
            return result

        self._closed.addBoth(closed)
        return d

    def dropConnection(self, abort: bool = True) -> None:
        self.wire.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        session = self.session
        try:
            if session is not None and session.state is not SessionState.CLOSED:
                if self.channel is not None:
                    self.channel.cancel()
                session.state = SessionState.CLOSED
                if self.server.registry.get(session.id) is session:
                    self.server.registry.remove(session)
                    self.server.connection_closed(session)
                log.info("audiosocket call {call_id} closed (session {session_id})", call_id=self.call_id,
                         session_id=session.id)
        finally:
            if not self._closed.called:
                self._closed.callback(None)


class AudioSocketFactory(Factory):
    noisy = False

    def __init__(self, server: "VoiceServer") -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> AudioSocketProtocol:
        protocol = AudioSocketProtocol(self.server)
        protocol.factory = self
        return protocol


class AudioSocketListener(Service):
    """Listens on ``--audiosocket`` (a Twisted endpoint description)."""

    name = "audiosocket"

    def __init__(self, server: "VoiceServer", description: str) -> None:
        self.server = server
        self.description = description
        self.port: Any = None
        self.listening: "Deferred[Any] | None" = None

    def startService(self) -> None:
        super().startService()
        endpoint = serverFromString(self.server.clock, self.description)
        self.listening = endpoint.listen(AudioSocketFactory(self.server))

        def listening(port: Any) -> Any:
            self.port = port
            address = port.getHost()
            log.info("AudioSocket listening on {host}:{port}", host=getattr(address, "host", ""),
                     port=getattr(address, "port", ""))
            return port

        def failed(failure: Any) -> None:
            log.failure("AudioSocket cannot listen on {description}", failure, description=self.description)
            from twisted.internet import reactor

            reactor.stop()

        self.listening.addCallbacks(listening, failed)

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return maybeDeferred(port.stopListening)  # IListeningPort: a Deferred, or None
        return succeed(None)


def services(server: "VoiceServer") -> list[Service]:
    """The AudioSocket listener when ``--audiosocket`` names an endpoint (first process only)."""
    description = server.config.audiosocket
    if not description or server.process_index != 0:
        return []
    return [AudioSocketListener(server, description)]


def endpoints(server: "VoiceServer") -> "dict[str, IResource]":
    """AudioSocket is TCP, not HTTP: no web resources."""
    return {}
