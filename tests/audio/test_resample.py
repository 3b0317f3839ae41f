"""Tests for txvoice.audio.resample: downmix and streaming resampling to the pipeline rate."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import signal_speech as speech
from txvoice.audio.resample import PIPELINE_RATE, Resampler, downmix, resample_once
from txvoice.errors import AudioError

#: Measured: the float32 streaming path is bit-identical to one-shot float32 resampling for any
#: chunking; against soxr's own one-shot int16 resampling (dithered) it is within 2 LSB.
STREAM_TOLERANCE_LSB = 0
SOXR_INT16_TOLERANCE_LSB = 2


def stream(resampler: Resampler, pcm: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Feed ``pcm`` in chunks of the given sizes (cycled), then flush; return all output."""
    out, i, k = [], 0, 0
    while i < len(pcm):
        n = sizes[k % len(sizes)]
        out.append(resampler.process(pcm[i : i + n]).copy())
        i += n
        k += 1
    out.append(resampler.flush())
    return np.concatenate(out)


def tone(freq: float, rate: int, seconds: float = 1.0, dbfs: float = -6.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(np.sin(2 * np.pi * freq * t) * 32767 * 10 ** (dbfs / 20)).astype(np.int16)


# -- downmix --------------------------------------------------------------------------------------


def test_downmix_averages_channels() -> None:
    stereo = np.array([100, 300, -32768, -32768, 32767, 32767, 1, -2], dtype=np.int16)
    assert downmix(stereo, 2).tolist() == [200, -32768, 32767, -1]


def test_downmix_mono_is_the_input_itself() -> None:
    mono = np.arange(10, dtype=np.int16)
    assert downmix(mono, 1) is mono


def test_downmix_into_a_given_buffer() -> None:
    out = np.zeros(8, dtype=np.int16)
    result = downmix(np.array([2, 4, 6, 8], dtype=np.int16), 2, out)
    assert result.tolist() == [3, 7]
    assert np.shares_memory(result, out)


def test_downmix_rejects_partial_frames() -> None:
    with pytest.raises(AudioError) as info:
        downmix(np.zeros(5, dtype=np.int16), 2)
    assert info.value.code == "invalid_frame_size"


def test_downmix_of_identical_channels_is_lossless() -> None:
    mono = speech.speak(rate=16000)
    stereo = speech.speak(rate=16000, channels=2)
    assert np.array_equal(downmix(stereo, 2), mono)


# -- Resampler --------------------------------------------------------------------------------------


def test_passthrough_when_rates_are_equal() -> None:
    r = Resampler(PIPELINE_RATE, PIPELINE_RATE)
    pcm = np.arange(320, dtype=np.int16)
    assert r.passthrough
    assert r.process(pcm) is pcm
    assert len(r.flush()) == 0


def test_rejects_non_int16() -> None:
    with pytest.raises(AudioError):
        Resampler(48000).process(np.zeros(10, dtype=np.float32))


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100, 48000])
def test_streaming_equals_one_shot(rate: int) -> None:
    pcm = speech.speak(rate=rate)
    got = stream(Resampler(rate), pcm, [rate // 50])
    expected = resample_once(pcm, rate, PIPELINE_RATE)
    assert len(got) == len(expected) == round(len(pcm) * PIPELINE_RATE / rate)
    assert np.max(np.abs(got.astype(np.int32) - expected)) <= STREAM_TOLERANCE_LSB
    soxr_int16 = soxr.resample(pcm, rate, PIPELINE_RATE, quality="HQ")
    assert np.max(np.abs(got.astype(np.int32) - soxr_int16)) <= SOXR_INT16_TOLERANCE_LSB


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rate=st.sampled_from([8000, 44100, 48000]),
    sizes=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=8),
)
def test_any_chunking_gives_the_same_output(rate: int, sizes: list[int]) -> None:
    pcm = speech.speak(rate=rate)[: rate // 2]
    whole = stream(Resampler(rate), pcm, [len(pcm)])
    got = stream(Resampler(rate), pcm, sizes)
    assert len(got) == len(whole)
    assert np.max(np.abs(got.astype(np.int32) - whole)) <= STREAM_TOLERANCE_LSB


def test_output_comes_in_bursts_but_sums_up() -> None:
    """soxr HQ at 48 kHz releases ~490 samples every other 20 ms chunk, and all of it in the end."""
    r = Resampler(48000)
    pcm = tone(440, 48000)
    sizes = [len(r.process(pcm[i : i + 960])) for i in range(0, len(pcm), 960)]
    assert sizes[:4] == [0, 490, 0, 489]
    assert 0 in sizes and max(sizes) > 320
    assert sum(sizes) + len(r.flush()) == PIPELINE_RATE


def test_stereo_chunks_may_split_a_frame() -> None:
    stereo = speech.speak(rate=48000, channels=2)
    whole = stream(Resampler(48000, channels=2), stereo, [len(stereo)])
    odd = stream(Resampler(48000, channels=2), stereo, [961, 7, 1, 960])
    assert np.array_equal(whole, odd)
    mono = stream(Resampler(48000), speech.speak(rate=48000), [960])
    assert np.array_equal(whole, mono)


def test_in_band_tone_keeps_its_level_and_out_of_band_tone_is_removed() -> None:
    r = Resampler(48000)
    kept = stream(r, tone(1000, 48000), [960])[1000:-1000]
    assert abs(speech.rms_db(kept) - speech.rms_db(tone(1000, 16000))) < 0.1
    alias = stream(Resampler(48000), tone(12000, 48000), [960])[1000:-1000]
    assert speech.rms_db(alias) < -90  # a 12 kHz tone would alias to 4 kHz without filtering


def test_reset_starts_a_new_stream() -> None:
    r = Resampler(44100)
    pcm = speech.speak(rate=44100)
    first = stream(r, pcm, [882])
    r.reset()
    assert np.array_equal(stream(r, pcm, [882]), first)


def test_low_latency_gives_output_on_every_20ms_chunk_at_48k() -> None:
    """Issue #21: "LL" (the ingest default) never holds a 20 ms frame back; "HQ" did, every other chunk."""
    pcm = tone(440, 48000)
    for quality, every_chunk in (("LL", True), ("HQ", False)):
        r = Resampler(48000, quality=quality)
        sizes = [len(r.process(pcm[i : i + 960])) for i in range(0, len(pcm), 960)]
        behind = np.arange(1, len(sizes) + 1) * 320 - np.cumsum(sizes)  # samples not yet out
        assert (min(sizes) > 0) is every_chunk, (quality, sizes[:8])
        if every_chunk:
            assert behind.max() < 320 / 2  # under 10 ms behind the input, always
        assert sum(sizes) + len(r.flush()) == PIPELINE_RATE


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_low_latency_is_the_same_for_any_chunking(rate: int) -> None:
    pcm = speech.speak(rate=rate)
    expected = resample_once(pcm, rate, PIPELINE_RATE, quality="LL")
    assert len(expected) == round(len(pcm) * PIPELINE_RATE / rate)
    for sizes in ([rate // 50], [961, 7, 1, 3000]):
        assert np.array_equal(stream(Resampler(rate, quality="LL"), pcm, sizes), expected)


@pytest.mark.parametrize("freq", [100, 1000, 4000, 7000, 7300])
def test_low_latency_passband_is_flat(freq: int) -> None:
    kept = stream(Resampler(48000, quality="LL"), tone(freq, 48000), [960])[1000:-1000]
    assert abs(speech.rms_db(kept) - speech.rms_db(tone(freq, 16000)[1000:-1000])) < 0.1


@pytest.mark.parametrize("freq", [8500, 9000, 12000, 20000])
def test_low_latency_aliasing_is_below_minus_50_db(freq: int) -> None:
    ref = speech.rms_db(tone(1000, 16000))
    alias = stream(Resampler(48000, quality="LL"), tone(freq, 48000), [960])[1000:-1000]
    assert speech.rms_db(alias) - ref < -50
