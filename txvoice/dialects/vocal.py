"""
The Vocal dialect (seed S2), at ``/ws/audio``: binary audio in, one acknowledgement per chunk.

S2's wire format, exactly: a greeting ``{"status": "connected", "session_id", "config": {...}}``,
then every binary chunk is answered ``{"status": "chunk_received"}`` once the server has processed
it, and problems with ``{"status": "error", "message": ...}`` (plus a txvoice ``code``).

S2 always sends WebM/Opus at 44.1 kHz mono from ``MediaRecorder``; other clients may declare
another format in the query string (``?codec=opus&sample_rate=48000&channels=1``).  The voice
stream opens with the connection (voice-activity turns) and closes with it.  S2 defines no
response messages, so turns are reported (``{"status": "turn_end", ...}``) but answered only with
``?respond=1`` (``{"status": "response", ...}``, binary audio, ``{"status": "response_end"}``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
from typing import Any

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.errors import VoiceError
from txvoice.pipeline.interfaces import IResponseSink
from txvoice.server.base import VoiceServerProtocol
from txvoice.server.channel import VoiceChannel
from txvoice.server.framing import PreparedText
from txvoice.server.observer import IChannelObserver, chunk_error
from txvoice.dialects.registry import websocket_endpoint

if TYPE_CHECKING:  # pragma: no cover
    from twisted.web.resource import IResource

    from txvoice.server.context import VoiceServer

CHUNK_RECEIVED = b'{"status":"chunk_received"}'
_CHUNK_RECEIVED = PreparedText(CHUNK_RECEIVED)  # sent once per chunk: framed once
S2_DEFAULT = {"codec": "webm_opus", "sample_rate": "44100", "channels": "1"}


def _format_from_query(params: dict[str, list[str]]) -> AudioFormat:
    def get(name: str) -> str:
        return params.get(name, [S2_DEFAULT[name]])[0]

    try:
        rate, channels = int(get("sample_rate")), int(get("channels"))
    except ValueError:
        raise VoiceError("sample_rate and channels must be integers", code="invalid_field") from None
    return AudioFormat.validated(codec=get("codec"), sample_rate=rate, channels=channels)


@implementer(IResponseSink)
class _VocalResponseSink:
    """S2 has no response messages of its own: responses use its status style."""

    def __init__(self, protocol: "VocalProtocol") -> None:
        self.protocol = protocol

    def event(self, event_type: str, data: dict[str, Any]) -> None:
        self.protocol.sendJSON({"status": event_type, **data})

    def startResponse(self, text_content: str | None, audio_format: AudioFormat | None,
                      metadata: dict[str, Any]) -> None:
        self.protocol.sendJSON(
            {"status": "response", "text": text_content, "audio": audio_format.as_dict() if audio_format else None}
        )

    def audio(self, chunk: bytes) -> None:
        self.protocol.sendBinary(chunk)

    def endResponse(self, summary: dict[str, Any]) -> None:
        self.protocol.sendJSON({"status": "response_end", **summary})


@implementer(IChannelObserver)
class VocalProtocol(VoiceServerProtocol):
    """S2's ``/ws/audio``."""

    dialect = "vocal"
    format: AudioFormat

    def onConnect(self, request: ConnectionRequest) -> Any:
        chosen = super().onConnect(request)
        # S2 clients know no response messages: turns are answered only when asked (?respond=1).
        self.respond = request.params.get("respond", ["0"])[0] in ("1", "true", "yes")
        try:
            self.format = _format_from_query(request.params)
        except VoiceError as e:
            raise ConnectionDeny(400, e.message) from None
        return chosen

    def sessionOpened(self) -> None:
        session = self.session
        assert session is not None
        self.channel = VoiceChannel(self.server, session, _VocalResponseSink(self), self)
        session.transition(session.state.AUTHENTICATED)
        self.channel.start(self.format, options={}, mode="voice_activity", respond=self.respond)
        self.sendJSON(
            {
                "status": "connected",
                "session_id": session.id,
                "config": {
                    "sample_rate": self.format.sample_rate,
                    "channels": self.format.channels,
                    "sample_width": 2,
                    "max_message_size": self.server.config.max_message_size,
                    "codec": self.format.codec,
                },
            }
        )

    def sessionClosing(self) -> None:
        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.cancel()

    def sendJSON(self, obj: dict[str, Any]) -> None:
        self.sendText(json.dumps(obj, separators=(",", ":")).encode("utf-8"))

    def sendError(self, code: str, message: str) -> None:
        session = self.session
        if session is not None:
            session.counters.errors += 1
        self.server.record_error(code)
        self.sendJSON({"status": "error", "message": message, "code": code})

    def reportError(self, error: VoiceError) -> None:
        self.sendError(error.code, error.message)

    def chunkProcessed(self, events: list[Any] | None) -> None:  # IChannelObserver
        # The acks of one audio batch leave in one write, after the batch (and before anything else).
        self.sendPreparedTextSoon(_CHUNK_RECEIVED)

    def chunkFailed(self, failure: Failure) -> None:  # IChannelObserver
        error = chunk_error(failure, self.wslog, "processing a chunk failed", "the chunk could not be processed")
        self.sendError(error.code, error.message)

    def binaryReceived(self, payload: bytes) -> None:
        try:
            self.channel.audio(payload)
        except VoiceError as e:
            self.sendError(e.code, e.message)

    def textReceived(self, payload: bytes) -> None:
        self.sendError("unexpected_text", "this endpoint takes binary audio chunks only")

    def messageTooLarge(self, size: int, is_binary: bool) -> None:
        self.sendError("message_too_large", f"chunk of {size} bytes exceeds {self.server.config.max_message_size}")


def endpoints(server: "VoiceServer") -> dict[str, IResource]:
    """The vocal dialect at ``--vocal-path``, off when that is empty (the dialect registry calls this)."""
    return websocket_endpoint(server.config.vocal_path, server, VocalProtocol)
