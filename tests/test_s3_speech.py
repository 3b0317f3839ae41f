"""
Spoken audio (espeak-ng) through S3's ``/voice-ws`` into the default offline pipeline (PocketSphinx,
rules, espeak-ng): 1920-byte 48 kHz PCM frames without ``voice_start``, then ``transcription``,
``user_transcript``, ``navigation`` for "go to the pricing page", ``audio_response`` with binary
audio, and ``barge_in`` when the user talks over the answer (its latency reported and bounded).
"""

from __future__ import annotations

import json
import queue
import threading
import time

import numpy as np
import pytest
from websockets.sync.client import connect

from daemons import start_daemon
from signal_speech import silence, speak
from test_s3_dialect import SECRET, token

pytestmark = pytest.mark.slow
FRAME = 960  # samples: 20 ms at 48 kHz = 1920 bytes


@pytest.fixture(scope="module")
def speech_s3(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("s3speech"), "--pipeline", "speech", env={"TXVOICE_JWT_SECRET": SECRET})
    yield d
    d.stop()


class Reader:
    """Every message of a socket, with its arrival time, from a thread."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.inbox: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for msg in self.ws:
                self.inbox.put((time.perf_counter(), json.loads(msg) if isinstance(msg, str) else msg))
        except Exception:
            pass

    def until(self, predicate, timeout: float = 30.0) -> list:
        got, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            got.append(item)
            if predicate(item[1]):
                return got
        raise AssertionError(f"timed out; got {[m if isinstance(m, dict) else len(m) for _, m in got]}")


def frames(pcm: np.ndarray, size: int = FRAME) -> list[bytes]:
    pcm = np.concatenate([pcm, np.zeros((-len(pcm)) % size, dtype=np.int16)])
    return [pcm[i:i + size].tobytes() for i in range(0, len(pcm), size)]


def send_realtime(ws, chunks: list[bytes], sent_at: list[float] | None = None) -> None:
    due = time.perf_counter()
    for chunk in chunks:
        due += 0.02
        while time.perf_counter() < due:
            time.sleep(0.001)
        if sent_at is not None:
            sent_at.append(time.perf_counter())
        ws.send(chunk)


def is_type(kind: str, **metadata):
    return lambda m: isinstance(m, dict) and m["type"] == kind and all(m["metadata"].get(k) == v for k, v in metadata.items())


def test_speech_is_transcribed_navigated_answered_and_barged_into(speech_s3) -> None:
    with connect(f"ws://127.0.0.1:{speech_s3.port}/voice-ws", additional_headers={"Authorization": f"Bearer {token()}"},
                 open_timeout=5, max_size=None) as ws:
        reader = Reader(ws)
        ready = reader.until(is_type("ready"))[-1][1]
        session_id = ready["metadata"]["sessionId"]
        # 1. "go to the pricing page", no voice_start: 48 kHz PCM, 1920-byte frames.
        said = np.concatenate([speak("Go to the pricing page.", 48000, pad_ms=(300, 0)), silence(900, 48000)])
        for chunk in frames(said):
            assert len(chunk) == 1920
        send_realtime(ws, frames(said))
        got = reader.until(is_type("audio_response", final=True), timeout=30)
        messages = [m for _, m in got if isinstance(m, dict)]
        kinds = [m["type"] for m in messages]
        final = next(m for m in messages if m["type"] == "transcription" and m["metadata"]["final"])
        assert final["data"] == "go to the pricing page" and final["metadata"]["partial"] is False
        assert final["metadata"]["audioEndMs"] > final["metadata"]["audioStartMs"] >= 0
        assert next(m for m in messages if m["type"] == "user_transcript")["data"] == "go to the pricing page"
        navigation = next(m for m in messages if m["type"] == "navigation")
        assert navigation["metadata"]["page"] == "pricing" and navigation["data"] == "/pricing"
        start = next(m for m in messages if m["type"] == "audio_response")
        assert start["metadata"]["streaming"] is True and "Pricing" in start["data"]
        assert start["metadata"]["latency"] >= 0 and start["metadata"]["sampleRate"] == 48000
        assert kinds.index("transcription") < kinds.index("audio_response")
        audio = [m for _, m in got if isinstance(m, bytes)]
        assert audio and sum(map(len, audio)) > 48000  # over half a second of 48 kHz PCM
        sequences = [m["metadata"]["sequence"] for m in messages]
        assert sequences == sorted(sequences) and all(m["metadata"]["sessionId"] == session_id for m in messages)
        vads = [m["metadata"]["vadActive"] for m in messages if m["type"] == "vad"]
        assert True in vads and False in vads

        # 2. A long answer ("what can you do"), then the user talks over it.
        rate = 48000
        ws.send(json.dumps({"type": "voice_start", "metadata": {"sampleRate": rate, "channels": 1, "codec": "pcm"}}))
        n = rate // 50
        send_realtime(ws, frames(np.concatenate([speak("What can you do?", rate), silence(900, rate)]), n))
        reader.until(is_type("audio_response", streaming=True), timeout=30)
        time.sleep(0.4)
        sent_at: list[float] = []
        send_realtime(ws, frames(speak("Stop please.", rate, pad_ms=(200, 300)), n), sent_at)
        got = reader.until(is_type("barge_in"), timeout=10)
        t_barge, barge = got[-1]
        # S3's figure is <= 50 ms from the first voiced frame.  Measured with the "fast" barge-in rule and
        # the "LL" resampler (issue #21): 39.6-40.9 ms in 4 runs (HQ held a 20 ms frame back).
        assert barge["metadata"]["latency"] <= 50, barge
        tail = reader.until(is_type("audio_response", final=True), timeout=10)
        assert tail[-1][1]["metadata"]["cancelled"] is True
        assert not [m for _, m in tail if isinstance(m, bytes)], "audio kept coming after the barge-in"
        print(f"barge-in latency (server, ms): {barge['metadata']['latency']}")
