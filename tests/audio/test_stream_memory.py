"""
What one streaming session's ingest keeps between its chunks (issue 26: RSS per session).

The benchmark's session -- ``/ws/audio``, Opus 48 kHz decoded to 16 kHz, VAD, turns reported and
not answered, the fast barge-in onset -- streams speech; what its :class:`StreamIngest` then holds
in Python objects and numpy buffers is measured with :mod:`tracemalloc`, over several streams.
Before issue 26's memory work it was ~37 KB (a 14 KB pre-roll ring nobody read, the unused
decode buffer, 64 arrival tuples, the last batch's decisions, deques); the C states (the Opus
decoder's 18 KB, webrtcvad's) are not traced and not in the bound.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest

import signal_speech as speech
from txvoice.audio import native
from txvoice.audio.codecs.opus import OpusEncoder
from txvoice.audio.format import AudioFormat
from txvoice.audio.ingest import StreamIngest, StreamSettings

OPUS48 = AudioFormat("opus", 48000, 1)
STREAMS = 8
#: Bytes a streaming native ingest may keep (measured: ~6.7 KB, the 1 KB arrival log and small objects).
BOUND = 9000


def _vocal_ingest() -> StreamIngest:
    """The ingest the Vocal dialect's stream gets (channel.start: voice_activity, respond=False)."""
    settings = StreamSettings.parse("voice_activity", {"barge_in_rule": "fast"})
    return StreamIngest(OPUS48, settings, 16000, feed_raw=False, answers=False)


@pytest.mark.skipif(not native.available(), reason="the native batch ingest is not built")
def test_a_streaming_session_keeps_little_between_its_chunks() -> None:
    pcm = speech.speak(rate=48000, pad_ms=(300, 600))
    packets = OpusEncoder(OPUS48, bitrate=24000).encode(pcm)
    assert len(packets) > 100  # more chunks than the arrival log holds

    def stream() -> StreamIngest:
        ingest = _vocal_ingest()
        for k, packet in enumerate(packets):
            ingest.process((packet, k, k * 0.02))
        return ingest

    kept = [stream()]  # warm: lazily made shared state (FFT plans, ctypes types) is not the stream's
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [stream() for _ in range(STREAMS)]
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert all(ingest.native is not None and ingest.turns.vad.speaking is not None for ingest in kept)
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown / STREAMS < BOUND, f"{grown / STREAMS:.0f} bytes per stream"


@pytest.mark.skipif(not native.available(), reason="the native batch ingest is not built")
def test_the_onset_s_webrtcvad_is_made_when_a_reply_first_plays() -> None:
    """Until then the idle onset only tracks its gate in C; the Python path's decisions match (test_native_ingest)."""
    ingest = _vocal_ingest()
    assert ingest.onset is not None and ingest.native is not None
    assert ingest.native.onset_vad is None
    ingest.replying(False)
    assert ingest.native.onset_vad is None
    ingest.replying(True)
    made = ingest.native.onset_vad
    assert made is not None
    ingest.replying(False)
    ingest.replying(True)
    assert ingest.native.onset_vad is made  # one for the stream's life, as on the Python path
