"""The echo pipeline: a turn's response is the audio it received, so the whole loop is testable."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from txvoice.pipeline.interfaces import IResponseSink, ITurn, IVoicePipeline, TurnContext


@implementer(ITurn)
class EchoTurn:
    """Keeps the chunks as received and plays them back at the end of the turn."""

    def __init__(self, context: TurnContext, sink: IResponseSink) -> None:
        self.context = context
        self.sink = sink
        self.chunks: list[bytes] = []
        self.cancelled = False

    def feed(self, raw: bytes, pcm: object) -> None:
        self.chunks.append(raw)

    def finish(self) -> Deferred:
        if self.cancelled:
            return succeed(None)
        total = sum(len(c) for c in self.chunks)
        self.sink.startResponse(
            None,
            self.context.input_format,
            {"pipeline": "echo", "chunks": len(self.chunks), "bytes": total},
        )
        for chunk in self.chunks:
            if self.cancelled:
                break
            self.sink.audio(chunk)
        self.sink.endResponse({"chunks": len(self.chunks), "bytes": total, "cancelled": self.cancelled})
        self.chunks = []
        return succeed(None)

    def cancel(self) -> None:
        self.cancelled = True
        self.chunks = []


@implementer(IVoicePipeline)
class EchoPipeline:
    """Answers every turn with its own audio."""

    name = "echo"
    decodes = False
    pipeline_rate = 16000

    def startTurn(self, context: TurnContext, sink: IResponseSink) -> ITurn:
        return EchoTurn(context, sink)
