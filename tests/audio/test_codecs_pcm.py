"""Raw PCM: exact round trips at every rate, chunking invariance, dangling bytes, downmix, framing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txvoice.audio.codecs import decoder_for, downmix, encoder_for
from txvoice.audio.codecs.pcm import PcmFramer, as_pcm
from txvoice.audio.format import AudioFormat
from txvoice.errors import AudioError

RATES = [8000, 16000, 22050, 24000, 44100, 48000]


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", RATES)
def test_round_trip_is_exact(rate, channels, speech, stereo_speech):
    pcm = speech(rate) if channels == 1 else stereo_speech(rate)
    fmt = AudioFormat.validated("pcm_s16le", rate, channels)
    encoder = encoder_for(fmt)
    packets = encoder.encode(pcm) + encoder.flush()
    frame_bytes = fmt.samples_per_frame * channels * 2
    assert all(len(p) == frame_bytes for p in packets[:-1])
    decoder = decoder_for(fmt)
    assert (decoder.output_rate, decoder.output_channels) == (rate, channels)
    out = np.concatenate([decoder.decode(p) for p in packets] + [decoder.flush()])
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, pcm)


def test_bytes_are_little_endian():
    decoder = decoder_for(AudioFormat())
    np.testing.assert_array_equal(decoder.decode(b"\x01\x00\xff\x7f\x00\x80"), [1, 32767, -32768])


@settings(max_examples=80, deadline=500)
@given(
    data=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 600), max_size=10),
    channels=st.sampled_from([1, 2]),
)
def test_split_anywhere_gives_the_same_pcm(data, cuts, channels):
    """Chunks split at arbitrary byte offsets (odd ones included) decode to the one-shot PCM."""
    fmt = AudioFormat.validated("pcm_s16le", 16000, channels)
    block = 2 * channels
    usable = len(data) - len(data) % block
    whole = decoder_for(fmt).decode(data[:usable])
    decoder = decoder_for(fmt)
    points = sorted({0, usable, *[c for c in cuts if c < usable]})
    parts = [decoder.decode(data[i:j]) for i, j in zip(points, points[1:])]
    assert all(len(p) % channels == 0 for p in parts), "a chunk broke channel alignment"
    np.testing.assert_array_equal(np.concatenate([whole[:0], *parts]), whole)
    assert len(decoder.flush()) == 0


def test_dangling_byte_is_kept_for_the_next_chunk():
    decoder = decoder_for(AudioFormat())
    assert len(decoder.decode(b"\x01")) == 0
    np.testing.assert_array_equal(decoder.decode(b"\x01\x02"), [0x0101])
    np.testing.assert_array_equal(decoder.decode(b"\x00"), [0x0002])


def test_stereo_keeps_whole_frames():
    decoder = decoder_for(AudioFormat("pcm_s16le", 16000, 2))
    assert len(decoder.decode(b"\x01\x00\x02")) == 0  # one and a half samples: no whole frame yet
    np.testing.assert_array_equal(decoder.decode(b"\x00\x03\x00"), [1, 2])
    np.testing.assert_array_equal(decoder.decode(b"\x04\x00"), [3, 4])
    assert len(decoder.flush()) == 0


def test_flush_reports_a_truncated_frame_then_recovers():
    decoder = decoder_for(AudioFormat())
    decoder.decode(b"\x01\x00\x02")
    with pytest.raises(AudioError) as caught:
        decoder.flush()
    assert caught.value.code == "truncated_frame"
    np.testing.assert_array_equal(decoder.decode(b"\x05\x00"), [5])
    assert len(decoder.flush()) == 0


def test_mutable_buffers_are_copied():
    """A bytearray chunk reused by the caller does not change decoded audio."""
    decoder = decoder_for(AudioFormat())
    chunk = bytearray(b"\x01\x00\x02\x00")
    out = decoder.decode(chunk)
    chunk[:] = b"\x00\x00\x00\x00"
    np.testing.assert_array_equal(out, [1, 2])


def test_downmix():
    stereo = np.array([100, 200, -100, -300, 32767, 32767, -32768, -32768], np.int16)
    np.testing.assert_array_equal(downmix(stereo, 2), [150, -200, 32767, -32768])
    mono = np.arange(5, dtype=np.int16)
    assert downmix(mono, 1) is mono
    np.testing.assert_array_equal(downmix(np.array([3, 6, 9, -3, -6, -10], np.int16), 3), [6, -7])
    out = np.zeros(10, np.int16)
    result = downmix(stereo, 2, out)
    assert np.shares_memory(result, out) and result.tolist() == [150, -200, 32767, -32768]
    with pytest.raises(AudioError) as caught:
        downmix(np.zeros(3, np.int16), 2)
    assert caught.value.code == "invalid_frame_size"


@settings(max_examples=50, deadline=500)
@given(sizes=st.lists(st.integers(0, 700), max_size=12))
def test_framer_emits_exact_frames_in_order(sizes):
    framer = PcmFramer(160)
    total = sum(sizes)
    stream = np.arange(total, dtype=np.int64).astype(np.int16)
    frames, pos = [], 0
    for size in sizes:
        frames += [f.copy() for f in framer.frames(stream[pos : pos + size])]
        pos += size
    assert all(len(f) == 160 for f in frames)
    rest = framer.take_rest()
    assert len(frames) * 160 + len(rest) == total
    np.testing.assert_array_equal(np.concatenate([stream[:0], *frames, rest]), stream)


def test_encoder_rejects_non_int16():
    encoder = encoder_for(AudioFormat())
    with pytest.raises(TypeError):
        encoder.encode(np.zeros(10, np.float32))
    with pytest.raises(ValueError):
        as_pcm(np.zeros((2, 2), np.int16))


@settings(max_examples=100, deadline=500)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_only_audio_errors(chunks):
    decoder = decoder_for(AudioFormat("pcm_s16le", 48000, 2))
    for chunk in chunks:
        out = decoder.decode(chunk)
        assert out.dtype == np.int16 and out.ndim == 1 and len(out) % 2 == 0
    try:
        decoder.flush()
    except AudioError as e:
        assert e.code == "truncated_frame"
