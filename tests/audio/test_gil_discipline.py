"""
The per-frame audio path keeps the GIL through its C calls (reply encoding, ~0.45 ms a frame and
ahead of its playing, is the one exception).

Why: the audio thread shares the GIL with the reactor.  When it lets go of the GIL for a C call of
20-40 µs (ctypes through ``CDLL``, python-soxr) while the reactor is busy, getting it back waits for
the reactor's next switch interval (5 ms): measured, a 25 µs Opus decode took 2.6 ms of wall time
and a 23 µs resample 1.6 ms (``.venv/bin/python bench/bench_gil.py`` measures it).  Holding the GIL
through such a call costs the reactor at most those microseconds.  Whether a call keeps the GIL is
a property of its ctypes binding, checked here; the timing is the benchmark's.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from txvoice.audio import _libsoxr
from txvoice.audio._libsoxr import SoxrStream
from txvoice.audio.codecs import _libopus
from txvoice.audio.resample import Resampler, resample_once

_PYTHONAPI = ctypes._FUNCFLAG_PYTHONAPI  # set on functions of a PyDLL: called with the GIL held


@pytest.mark.parametrize(
    "function",
    [_libopus._opus_decode, _libopus._lib.opus_decoder_ctl, _libsoxr._process,
     _libsoxr._lib.soxr_clear, _libsoxr._lib.soxr_delay],
    ids=lambda f: f.__name__,
)
def test_per_frame_c_calls_keep_the_gil(function) -> None:
    assert function._flags_ & _PYTHONAPI, f"{function.__name__} lets go of the GIL"


def test_reply_encoding_lets_go_of_the_gil() -> None:
    """The exception: ~0.45 ms of libopus per reply frame, encoded ahead of its playing (see _libopus)."""
    assert not _libopus._opus_encode._flags_ & _PYTHONAPI
    assert isinstance(_libopus._released, ctypes.CDLL) and not isinstance(_libopus._released, ctypes.PyDLL)


def test_resampler_uses_the_gil_keeping_binding() -> None:
    resampler = Resampler(48000)
    assert isinstance(resampler._stream, SoxrStream)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_soxr_stream_matches_one_shot_python_soxr_for_any_chunking(rate: int) -> None:
    """The binding is the same filter python-soxr runs, rounded the same way, whatever the chunks."""
    rng = np.random.default_rng(rate)
    x = (np.sin(np.arange(rate * 2) * 2 * np.pi * 440 / rate) * 20000 + rng.normal(0, 4000, rate * 2))
    x = x.clip(-32768, 32767).astype(np.int16)
    expected = resample_once(x, rate)
    for cuts in (np.arange(0, len(x), rate // 50), np.sort(rng.integers(0, len(x), 80))):
        stream = SoxrStream(rate, 16000)
        parts = [stream.process(np.ascontiguousarray(p)).copy() for p in np.split(x, cuts)]
        got = np.concatenate(parts + [stream.process(None).copy()])
        np.testing.assert_array_equal(got, expected)


def test_soxr_stream_edges() -> None:
    x = (np.sin(np.arange(48000) * 0.01) * 10000).astype(np.int16)
    whole = SoxrStream(48000, 16000)
    expected = np.concatenate([whole.process(x).copy(), whole.process(None).copy()])
    stream = SoxrStream(48000, 16000)
    # An empty chunk in the middle is not a flush: the output equals the uninterrupted stream's.
    parts = [stream.process(x[:20000]).copy(), stream.process(np.zeros(0, np.int16)).copy(),
             stream.process(x[20000:]).copy(), stream.process(None).copy()]
    np.testing.assert_array_equal(np.concatenate(parts), expected)
    assert 15900 <= len(expected) <= 16000
    # After a flush the stream starts afresh (libsoxr itself crashes if fed after end of input).
    again = np.concatenate([stream.process(x).copy(), stream.process(None).copy()])
    np.testing.assert_array_equal(again, expected)
    assert stream.delay() >= 0
    stream.clear()
    stream.close()
    with pytest.raises(_libsoxr.SoxrError):
        stream.process(np.ones(10, np.int16))
    with pytest.raises(ValueError):
        SoxrStream(48000, 16000, quality="best")
