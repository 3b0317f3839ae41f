"""
The fast barge-in onset (txvoice.audio.bargein.FastOnset) behind the native dialect, inline workers
and a fake clock: the channel tells the stream's worker (through its queue) when a reply plays, the
onset classifies nothing before that or after the last reply, and speech over the reply barges in
within 30 ms of stream time of its onset (issue 26).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import barge_corpus as corpus  # noqa: E402

from txvoice.testing import MemoryClient, memory_server  # noqa: E402


class Counting:
    def __init__(self, classify) -> None:
        self.calls = 0
        self._classify = classify

    def __call__(self, frame):
        self.calls += 1
        return self._classify(frame)


def test_onset_runs_only_while_the_reply_plays_and_barges_in_fast() -> None:
    server = memory_server()
    client = MemoryClient(server)
    client.send_json({"type": "voice_start", "message_id": "s",
                      "data": {"codec": "pcm", "sample_rate": 16000, "mode": "voice_activity"}})
    channel = client.protocol.channel
    onset = channel.stream.ingest.onset
    assert onset is not None and onset.active is False
    counter = onset.classifier.classify = Counting(onset.classifier.classify)
    speech = corpus.espeak("Hello there.")
    chunks = 0

    def send(x: np.ndarray, until=None) -> bool:
        nonlocal chunks
        for i in range(0, len(x) - 319, 320):
            client.send_binary(x[i:i + 320].astype("<i2").tobytes())
            chunks += 1
            server.clock.advance(0.02)
            if until is not None and until():
                return True
        return False

    send(np.zeros(16000, np.int16))
    send(speech)  # a turn: the echo pipeline answers it once it ends
    assert counter.calls == 0 and not onset.active
    assert send(np.zeros(16000, np.int16), until=lambda: channel.playing is not None)
    assert onset.active and counter.calls <= 2  # told through the worker queue, in order with the chunks
    assert not channel.barge_ins
    start = chunks * 20.0  # stream time at which the user speaks again, over the reply
    first = next(i for i in range(0, len(speech), 320) if np.abs(speech[i:i + 320].astype(np.int32)).max() > 300)
    assert send(speech, until=lambda: bool(channel.barge_ins)), "no barge-in"
    info = channel.barge_ins[0]
    assert chunks * 20.0 - (start + first / 16.0) <= 30.0 + 20.0, (chunks, start, first, info)  # sound may start late in its chunk
    assert chunks * 20.0 - info["stream_time_ms"] <= 30.0, (chunks, info)
    # Barged in: the reply is gone and the onset idles again.
    server.clock.advance(0.1)
    assert channel.playing is None and not channel.responses
    before = counter.calls
    send(np.zeros(16000, np.int16))
    assert not onset.active and counter.calls == before
