"""The echo pipeline: a turn's response is the audio it received, so the whole loop is testable."""

from __future__ import annotations

import numpy as np
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.pipeline.interfaces import IResponseSink, ITurn, IVoicePipeline, TurnContext


@implementer(ITurn)
class EchoTurn:
    """
    Keeps what it is fed and plays it back when the turn ends: the chunks exactly as the client
    sent them (push-to-talk without analysis), or else the turn's decoded audio, which the
    server encodes back into the client's format.
    """

    def __init__(self, context: TurnContext, sink: IResponseSink, pipeline_rate: int) -> None:
        self.context = context
        self.sink = sink
        self.pipeline_rate = pipeline_rate
        self.chunks: list[bytes] = []
        self.frames: list[np.ndarray] = []
        self.cancelled = False

    def feed(self, raw: bytes | None, pcm: np.ndarray | None) -> None:
        if raw is not None:
            self.chunks.append(raw)
        elif pcm is not None:
            self.frames.append(pcm.copy())  # frames are views into the assembler's buffer

    def finish(self) -> Deferred[None]:
        if self.cancelled:
            return succeed(None)
        sink = self.sink
        if self.chunks:
            total = sum(len(c) for c in self.chunks)
            sink.startResponse(None, self.context.input_format,
                               {"pipeline": "echo", "chunks": len(self.chunks), "bytes": total})
            for chunk in self.chunks:
                sink.audio(chunk)
            sink.endResponse({"chunks": len(self.chunks), "bytes": total})
        else:
            pcm = np.concatenate(self.frames) if self.frames else np.zeros(0, dtype=np.int16)
            sink.startResponse(None, AudioFormat("pcm_s16le", self.pipeline_rate, 1, 20),
                               {"pipeline": "echo", "samples": int(pcm.size)})
            if pcm.size:
                sink.audio(pcm)
            sink.endResponse({"samples": int(pcm.size)})
        self.chunks, self.frames = [], []
        return succeed(None)

    def cancel(self) -> None:
        self.cancelled = True
        self.chunks, self.frames = [], []


@implementer(IVoicePipeline)
class EchoPipeline:
    """Answers every turn with its own audio."""

    name = "echo"
    decodes = False
    pipeline_rate = 16000

    @classmethod
    def fromConfig(cls, config: object = None) -> "EchoPipeline":
        """The ``echo`` pipeline plugin's maker: it has no settings."""
        return cls()

    def startTurn(self, context: TurnContext, sink: IResponseSink) -> ITurn:
        return EchoTurn(context, sink, self.pipeline_rate)
