"""
How a turn's response is written in ``txvoice.v1``: ``voice_response``, then the audio (binary
frames, or base64 in ``voice_stream_chunk`` when the stream asked for it), then a final
``voice_stream_chunk``.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any, Protocol

from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.pipeline.interfaces import IResponseSink
from txvoice.session.session import Session


class EnvelopeConnection(Protocol):
    """What the sink writes through (the native dialect's protocol)."""

    session: Session | None

    def sendEnvelope(self, msg_type: str, data: dict[str, Any]) -> None: ...

    def sendBinary(self, payload: bytes) -> None: ...

    def outputCongested(self) -> bool: ...

    def dropOutput(self, kind: str) -> None: ...


@implementer(IResponseSink)
class NativeResponseSink:
    """Writes a turn's response as ``voice_response`` + audio + a final ``voice_stream_chunk``."""

    def __init__(self, protocol: EnvelopeConnection) -> None:
        self.protocol = protocol
        self.response_id: str | None = None
        self.sequence = 0
        self.transport = "binary"
        self.stream_id: str | None = None

    def event(self, event_type: str, data: dict[str, Any]) -> None:
        self.protocol.sendEnvelope("status", {"event_type": event_type, **data})

    def startResponse(self, text_content: str | None, audio_format: AudioFormat | None, metadata: dict[str, Any]) -> None:
        self.response_id = "resp_" + uuid.uuid4().hex[:16]
        self.sequence = 0
        self.protocol.sendEnvelope(
            "voice_response",
            {
                "response_id": self.response_id,
                "stream_id": self.stream_id,
                "text_content": text_content,
                "audio": audio_format.as_dict() if audio_format is not None else None,
                "audio_transport": self.transport,
                "metadata": metadata,
            },
        )

    def audio(self, chunk: bytes) -> None:
        protocol = self.protocol
        self.sequence += 1
        if protocol.session is not None:
            protocol.session.counters.audio_frames_out += 1
        if self.transport == "binary":
            protocol.sendBinary(chunk)
        elif protocol.outputCongested():
            protocol.dropOutput("audio")
        else:
            protocol.sendEnvelope(
                "voice_stream_chunk",
                {
                    "response_id": self.response_id,
                    "sequence": self.sequence,
                    "audio": base64.b64encode(chunk).decode("ascii"),
                    "final": False,
                },
            )

    def endResponse(self, summary: dict[str, Any]) -> None:
        self.protocol.sendEnvelope(
            "voice_stream_chunk",
            {"response_id": self.response_id, "sequence": self.sequence + 1, "final": True, "audio": None, **summary},
        )
