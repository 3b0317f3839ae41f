"""
What S3's two transports share (``/voice-ws`` and Socket.IO ``/voice``): its ``VoiceStreamMessage``
messages, the sink that turns pipeline events into them, and the unified session that one client
may hold over both transports (S3's ``WebSocketCoordinator`` / ``UnifiedSession``).

A message is ``{"type", "data", "metadata"}``; ``metadata`` always carries ``sessionId``,
``sequence`` (per session, counting every message sent on any transport) and ``timestamp`` (ms since
the epoch), plus the type's own fields (see ``doc/dialects.md``).
"""

from __future__ import annotations

import base64
import binascii
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.errors import ProtocolError, VoiceError
from txvoice.pipeline.interfaces import IResponseSink
from txvoice.server.channel import VoiceChannel
from txvoice.server.observer import IChannelObserver, chunk_error
from txvoice.session.session import Session

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client.metrics_core import Metric

    from txvoice.server.context import VoiceServer

#: Every type of S3's ``VoiceStreamMessage``; the first three are the client's.
CLIENT_TYPES = ("voice_start", "voice_data", "voice_end")
SERVER_TYPES = ("ready", "vad", "transcription", "user_transcript", "audio_response", "barge_in", "error",
                "navigation")
#: Audio sent without ``voice_start``: S3's test frames, 20 ms of 48 kHz 16-bit mono PCM (1920 bytes).
DEFAULT_FORMAT = AudioFormat("pcm_s16le", 48000, 1, 20)
CODEC_FIELDS = ("codec", "format", "encoding")


class S3Transport(Protocol):
    """One way to a client: the raw socket or a Socket.IO connection (reactor thread)."""

    s3_transport: str  # "voicews" or "socketio"

    def sendS3(self, message: dict[str, Any]) -> None: ...

    def sendS3Audio(self, chunk: bytes) -> None: ...


def format_from_metadata(metadata: dict[str, Any] | None) -> AudioFormat:
    """A ``voice_start``'s audio format: ``codec`` (``pcm``, ``opus``, ...), ``sampleRate``, ``channels``."""
    metadata = metadata or {}
    if not isinstance(metadata, dict):
        raise ProtocolError("metadata must be an object", code="invalid_field", field="metadata")
    codec = next((metadata[f] for f in CODEC_FIELDS if metadata.get(f)), DEFAULT_FORMAT.codec)
    return AudioFormat.validated(
        codec=codec,
        sample_rate=metadata.get("sampleRate", DEFAULT_FORMAT.sample_rate),
        channels=metadata.get("channels", DEFAULT_FORMAT.channels),
        frame_duration_ms=metadata.get("frameDurationMs", 20),
    )


@implementer(IResponseSink)
class S3Sink:
    """Pipeline events and responses as S3 messages, to every transport of a unified session."""

    def __init__(self, unified: "UnifiedSession") -> None:
        self.unified = unified
        self.turn_start_ms = 0.0
        self.turn_end_at: float | None = None

    def _since_turn_end(self) -> float | None:
        if self.turn_end_at is None:
            return None
        return round((self.unified.server.clock.seconds() - self.turn_end_at) * 1000.0, 1)

    def event(self, event_type: str, data: dict[str, Any]) -> None:
        send = self.unified.send
        if event_type == "vad":
            active = data.get("event") == "speech_start"
            send("vad", None, vadActive=active, active=active, audioStartMs=data.get("stream_time_ms"))
        elif event_type == "turn_start":
            self.turn_start_ms = float(data.get("stream_time_ms") or 0.0)
        elif event_type == "turn_end":
            self.turn_end_at = self.unified.server.clock.seconds()
            self.turn_start_ms = float(data.get("start_ms", self.turn_start_ms))
        elif event_type == "transcript":
            final = bool(data.get("final"))
            meta: dict[str, Any] = {"partial": not final, "final": final, "audioStartMs": round(self.turn_start_ms),
                    "audioEndMs": round(self.turn_start_ms + float(data.get("audio_ms") or 0))}
            if final:
                meta["latency"] = self._since_turn_end()
            send("transcription", data.get("text", ""), **meta)
            if final:
                send("user_transcript", data.get("text", ""), **meta)
        elif event_type == "barge_in":
            send("barge_in", None, active=True, latency=data.get("detection_delay_ms"),
                 playedMs=data.get("played_ms"))
        elif event_type == "tool_result" and data.get("name") == "navigate_to_page":
            result = data.get("result") or {}
            send("navigation", result.get("path"), page=result.get("page"), path=result.get("path"),
                 title=result.get("title"))
        elif event_type in ("processing_failed", "busy"):
            self.unified.error(VoiceError(str(data.get("message", event_type)), code=str(data.get("code", event_type))))
        # Other txvoice events (processing_*, turn ends, tool calls) have no S3 message.

    def startResponse(self, text_content: str | None, audio_format: AudioFormat | None, metadata: dict[str, Any]) -> None:
        extra: dict[str, Any] = {}
        if audio_format is not None:
            extra = {"sampleRate": audio_format.sample_rate, "channels": audio_format.channels,
                     "codec": audio_format.codec}
        self.unified.send("audio_response", text_content, streaming=True, final=False,
                          latency=self._since_turn_end(), **extra)

    def audio(self, chunk: bytes) -> None:
        self.unified.session.counters.audio_frames_out += 1
        self.unified.audio(chunk)

    def endResponse(self, summary: dict[str, Any]) -> None:
        self.unified.send("audio_response", None, streaming=False, final=True,
                          cancelled=bool(summary.get("cancelled")) or None)


@implementer(IChannelObserver)
class UnifiedSession:
    """One S3 session: a txvoice session and voice channel, reached over one or two transports."""

    def __init__(self, server: "VoiceServer", session: Session) -> None:
        self.server = server
        self.session = session
        self.id = session.id
        self.sequence = 0
        self.transports: dict[str, S3Transport] = {}
        self.format = DEFAULT_FORMAT
        self.mode = "voice_activity"
        self.sink = S3Sink(self)
        self.channel = VoiceChannel(server, session, self.sink, self)
        session.attributes["transports"] = []

    # transports

    def attach(self, transport: S3Transport) -> None:
        self.transports[transport.s3_transport] = transport
        self.session.attributes["transports"] = sorted(self.transports)

    def detach(self, transport: S3Transport) -> None:
        if self.transports.get(transport.s3_transport) is transport:
            del self.transports[transport.s3_transport]
        self.session.attributes["transports"] = sorted(self.transports)

    def message(self, msg_type: str, data: Any = None, **metadata: Any) -> dict[str, Any]:
        self.sequence += 1
        meta = {"sessionId": self.id, "sequence": self.sequence, "timestamp": int(time.time() * 1000)}
        meta.update((k, v) for k, v in metadata.items() if v is not None)
        return {"type": msg_type, "data": data, "metadata": meta}

    def send(self, msg_type: str, data: Any = None, **metadata: Any) -> None:
        """One message to every transport (JSON out on both)."""
        msg = self.message(msg_type, data, **metadata)
        for transport in list(self.transports.values()):
            transport.sendS3(msg)

    def audio(self, chunk: bytes) -> None:
        """Response audio: on the raw socket when there is one, else on Socket.IO."""
        transport = self.transports.get("voicews") or self.transports.get("socketio")
        if transport is not None:
            transport.sendS3Audio(chunk)

    def error(self, error: VoiceError, to: S3Transport | None = None) -> None:
        """An ``error`` (``metadata.error`` the message, ``metadata.code`` txvoice's stable code)."""
        self.session.counters.errors += 1
        self.server.record_error(error.code)
        msg = self.message("error", None, error=error.message, code=error.code)
        for transport in [to] if to is not None else list(self.transports.values()):
            transport.sendS3(msg)

    def chunkProcessed(self, events: list[Any] | None) -> None:
        """S3 acknowledges no audio frame (IChannelObserver)."""

    def chunkFailed(self, failure: Any) -> None:
        self.error(chunk_error(failure, self.channel.log, "processing S3 audio failed"))

    # the client's messages

    def voice_start(self, metadata: dict[str, Any] | None) -> None:
        fmt = format_from_metadata(metadata)
        mode = (metadata or {}).get("mode", "voice_activity")
        if self.channel.stream is not None:
            self.channel.end()
        self.format, self.mode = fmt, mode
        self._open()

    def _open(self) -> None:
        """Open a voice stream; the client hears the voice-activity state it starts in."""
        self.channel.start(self.format, options={}, mode=self.mode)
        self.send("vad", None, vadActive=False, active=False, sampleRate=self.format.sample_rate,
                  channels=self.format.channels, codec=self.format.codec)

    def voice_data(self, data: Any) -> None:
        if not isinstance(data, str):
            raise ProtocolError("voice_data needs data: base64 audio", code="missing_field", field="data")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("data is not valid base64", code="invalid_audio", field="data") from None
        self.audio_in(raw)

    def audio_in(self, raw: bytes) -> None:
        """A binary frame: opens a stream in the last declared (or default) format when none is open."""
        if self.channel.stream is None:
            self._open()
        self.channel.audio(raw)

    def voice_end(self) -> None:
        if self.channel.stream is not None:
            self.channel.end()

    def handle(self, msg_type: Any, data: Any, metadata: Any) -> None:
        """A client message by type; raises VoiceError for bad ones."""
        if msg_type == "voice_start":
            self.voice_start(metadata)
        elif msg_type == "voice_data":
            self.voice_data(data)
        elif msg_type == "voice_end":
            self.voice_end()
        elif not isinstance(msg_type, str):
            raise ProtocolError("a message needs a string 'type'", code="invalid_message", field="type")
        else:
            raise ProtocolError(f"unknown message type {msg_type!r}; clients send {', '.join(CLIENT_TYPES)}",
                                code="unknown_type", field="type")

    def close(self) -> None:
        self.channel.cancel()


TRANSPORTS = ("voicews", "socketio")


class _TransportCollector:
    """``txvoice_s3_messages{transport, direction, kind}`` and ``txvoice_s3_connections{transport}``."""

    def __init__(self, coordinator: "Coordinator") -> None:
        self.coordinator = coordinator

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        messages = CounterMetricFamily("txvoice_s3_messages", "S3 messages by transport",
                                       labels=["transport", "direction", "kind"])
        for (transport, direction, kind), n in sorted(self.coordinator.counts.items()):
            messages.add_metric([transport, direction, kind], n)
        live = GaugeMetricFamily("txvoice_s3_connections", "S3 sessions reached over each transport now", labels=["transport"])
        for transport in TRANSPORTS:
            live.add_metric([transport], sum(transport in u.transports for u in self.coordinator.sessions.values()))
        return [messages, live]


class Coordinator:
    """The unified sessions of one server, by id, so a second transport can join one."""

    _by_server: "weakref.WeakKeyDictionary[Any, Coordinator]" = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.sessions: dict[str, UnifiedSession] = {}
        #: (transport, direction, kind) -> messages, for the ``transport``-labelled counters.
        self.counts: dict[tuple[str, str, str], int] = {}

    @classmethod
    def of(cls, server: "VoiceServer") -> "Coordinator":
        found = cls._by_server.get(server)
        if found is None:
            found = cls._by_server[server] = cls()
            registry = getattr(getattr(server, "metrics", None), "registry", None)
            if registry is not None:
                registry.register(_TransportCollector(found))
        return found

    def count(self, transport: str, direction: str, kind: str) -> None:
        key = (transport, direction, kind)
        self.counts[key] = self.counts.get(key, 0) + 1

    def add(self, unified: UnifiedSession) -> None:
        self.sessions[unified.id] = unified

    def remove(self, unified: UnifiedSession) -> None:
        if self.sessions.get(unified.id) is unified:
            del self.sessions[unified.id]

    def get(self, session_id: str | None) -> UnifiedSession | None:
        return self.sessions.get(session_id) if session_id else None
