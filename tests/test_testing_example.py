"""
The example of doc/testing.md: a pipeline of one's own, tested with :mod:`txvoice.testing` alone,
first as a turn, then behind the native dialect, with no socket and no thread.  Keep the two in step
(``test_the_doc_shows_this_file`` checks it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from twisted.internet.defer import succeed
from zope.interface import implementer

from txvoice.pipeline.interfaces import ITurn, IVoicePipeline
from txvoice.testing import MemoryClient, memory_server, run_turn


@implementer(ITurn)
class LoudnessTurn:
    """Answers with how loud the user was (text only)."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.peak = 0

    def feed(self, raw, pcm):
        if pcm is not None:
            self.peak = max(self.peak, int(np.abs(pcm.astype(np.int32)).max(initial=0)))
        return None  # nothing to tell the reactor while the user speaks

    def finish(self):
        self.sink.startResponse(f"peak {self.peak}", None, {"pipeline": "loudness"})
        self.sink.endResponse({})
        return succeed(None)

    def cancel(self) -> None:
        pass


@implementer(IVoicePipeline)
class LoudnessPipeline:
    name = "loudness"
    decodes = True  # turns get decoded 16 kHz frames
    pipeline_rate = 16000

    def startTurn(self, context, sink):
        return LoudnessTurn(sink)


def test_one_turn_of_the_pipeline() -> None:
    frames = [np.full(320, level, dtype=np.int16) for level in (10, 1200, 300)]
    turn, sink, done = run_turn(LoudnessPipeline(), frames)
    assert done.called
    assert [r["text"] for r in sink.responses] == ["peak 1200"]


def test_the_pipeline_behind_the_native_dialect() -> None:
    client = MemoryClient(memory_server(pipeline=LoudnessPipeline()))
    assert client.messages()[0]["type"] == "connect"
    client.send_json({"type": "voice_start", "message_id": "s",
                      "data": {"codec": "pcm_s16le", "sample_rate": 16000, "mode": "push_to_talk"}})
    client.send_binary(np.full(320, 2500, dtype=np.int16).tobytes())
    client.send_json({"type": "voice_end", "message_id": "e", "data": {}})
    replies = [m for m in client.messages() if m["type"] == "voice_response"]
    assert [m["data"]["text_content"] for m in replies] == ["peak 2500"]


def test_the_doc_shows_this_file() -> None:
    doc = (Path(__file__).parent.parent / "doc" / "testing.md").read_text(encoding="utf-8")
    assert "tests/test_testing_example.py" in doc
    for name in ("run_turn", "memory_server", "MemoryClient", "RecordingSink"):
        assert name in doc
