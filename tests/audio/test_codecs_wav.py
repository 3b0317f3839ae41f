"""WAV: incremental RIFF header, extra chunks, streaming sizes, every header error and recovery."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txvoice.audio.codecs import decoder_for, encoder_for
from txvoice.audio.codecs.wav import wav_header
from txvoice.audio.format import AudioFormat
from txvoice.errors import AudioError, UnsupportedFormat


def fmt_chunk(tag=1, channels=1, rate=16000, bits=16, extra=b""):
    block_align = channels * bits // 8
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * block_align, block_align, bits) + extra
    return b"fmt " + struct.pack("<I", len(body)) + body


def chunk(name: bytes, body: bytes) -> bytes:
    return name + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def riff(*chunks: bytes, size=None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if size is None else size) + body


def extensible(subtype: int, channels=1, rate=16000, bits=16):
    guid = struct.pack("<H", subtype) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    extra = struct.pack("<HHI", 22, bits, 0x4) + guid
    return fmt_chunk(0xFFFE, channels, rate, bits, extra)


PCM = np.array([0, 1, -1, 32767, -32768, 1234], np.int16)
DATA = PCM.tobytes()
FMT16 = AudioFormat("wav", 16000, 1)


def decode_all(fmt, *chunks):
    decoder = decoder_for(fmt)
    return np.concatenate([decoder.decode(c) for c in chunks] + [decoder.flush()])


def test_sox_files_decode_to_their_data(sox_wav):
    for rate in (8000, 16000, 22050, 24000, 44100, 48000):
        for channels in (1, 2):
            data = sox_wav(rate, channels)
            start = data.index(b"data") + 8
            expected = np.frombuffer(data[start:], "<i2")
            out = decode_all(AudioFormat("wav", rate, channels), data)
            np.testing.assert_array_equal(out, expected)


def test_header_split_at_every_offset():
    data = riff(chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00sox!\x00"), fmt_chunk(), chunk(b"data", DATA))
    expected = decode_all(FMT16, data)
    np.testing.assert_array_equal(expected, PCM)
    for i in range(1, len(data)):
        np.testing.assert_array_equal(decode_all(FMT16, data[:i], data[i:]), expected, err_msg=f"split at {i}")


@settings(max_examples=60, deadline=1000)
@given(cuts=st.lists(st.integers(1, 200), max_size=12))
def test_split_anywhere_gives_the_same_pcm(sox_wav, cuts):
    data = sox_wav(16000, 2)[:2000]
    whole = decode_all(AudioFormat("wav", 16000, 2), data[: len(data) // 4 * 4])
    points = sorted({0, *[c for c in cuts], len(data) // 4 * 4})
    parts = [data[i:j] for i, j in zip(points, points[1:])]
    np.testing.assert_array_equal(decode_all(AudioFormat("wav", 16000, 2), *parts), whole)


def test_extra_chunks_before_data_are_skipped():
    data = riff(
        chunk(b"JUNK", b"\0" * 28),
        fmt_chunk(),
        chunk(b"fact", b"\x06\0\0\0"),
        chunk(b"LIST", b"INFOIART\x03\0\0\0ab\0"),  # odd-sized: padded
        chunk(b"data", DATA),
    )
    np.testing.assert_array_equal(decode_all(FMT16, data), PCM)


def test_extensible_pcm_is_accepted():
    data = riff(extensible(1), chunk(b"data", DATA))
    np.testing.assert_array_equal(decode_all(FMT16, data), PCM)


@pytest.mark.parametrize("size", [0, 0xFFFFFFFF])
def test_streaming_sizes_mean_until_the_end(size):
    header = riff(fmt_chunk(), size=size) + b"data" + struct.pack("<I", size)
    decoder = decoder_for(FMT16)
    assert len(decoder.decode(header)) == 0
    for _ in range(3):
        np.testing.assert_array_equal(decoder.decode(DATA), PCM)


def test_bytes_after_a_sized_data_chunk_are_ignored():
    data = riff(fmt_chunk(), chunk(b"data", DATA), chunk(b"LIST", b"INFOtrailer!"))
    np.testing.assert_array_equal(decode_all(FMT16, data[:50], data[50:]), PCM)


def test_wav_header_helper_round_trips():
    for rate, channels in [(8000, 1), (44100, 2)]:
        data = wav_header(rate, channels, len(DATA)) + DATA
        np.testing.assert_array_equal(decode_all(AudioFormat("wav", rate, channels), data), PCM)


GOOD = riff(fmt_chunk(), chunk(b"data", DATA))

BAD = {
    "not_riff": (b"RIFX" + GOOD[4:], "invalid_wav_header"),
    "garbage_prefix": (b"\x00\x01", "invalid_wav_header"),
    "not_wave": (GOOD[:8] + b"AVI " + GOOD[12:], "invalid_wav_header"),
    "data_before_fmt": (riff(chunk(b"data", DATA), fmt_chunk()), "invalid_wav_header"),
    "short_fmt": (riff(chunk(b"fmt ", b"\x01\x00\x01\x00"), chunk(b"data", DATA)), "invalid_wav_header"),
    "duplicate_fmt": (riff(fmt_chunk(), fmt_chunk(), chunk(b"data", DATA)), "invalid_wav_header"),
    "huge_chunk": (riff(b"LIST" + struct.pack("<I", 1 << 30)), "invalid_wav_header"),
    "bad_block_align": (
        riff(chunk(b"fmt ", struct.pack("<HHIIHH", 1, 1, 16000, 32000, 4, 16)), chunk(b"data", DATA)),
        "invalid_wav_header",
    ),
    "float": (riff(fmt_chunk(tag=3, bits=32), chunk(b"data", DATA)), "unsupported_wav_encoding"),
    "mulaw_in_wav": (riff(fmt_chunk(tag=7, bits=8), chunk(b"data", DATA)), "unsupported_wav_encoding"),
    "pcm_8bit": (riff(fmt_chunk(bits=8), chunk(b"data", DATA)), "unsupported_wav_encoding"),
    "pcm_24bit": (riff(fmt_chunk(bits=24), chunk(b"data", DATA)), "unsupported_wav_encoding"),
    "extensible_float": (riff(extensible(3, bits=32), chunk(b"data", DATA)), "unsupported_wav_encoding"),
    "rate_mismatch": (riff(fmt_chunk(rate=8000), chunk(b"data", DATA)), "wav_format_mismatch"),
    "channel_mismatch": (riff(fmt_chunk(channels=2), chunk(b"data", DATA)), "wav_format_mismatch"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_header_errors_have_codes_and_the_next_stream_decodes(name):
    data, code = BAD[name]
    decoder = decoder_for(FMT16)
    with pytest.raises(AudioError) as caught:
        for i in range(0, len(data), 7):  # byte-dribbled: the error comes as soon as it is known
            decoder.decode(data[i : i + 7])
    assert caught.value.code == code
    if code == "unsupported_wav_encoding":
        assert isinstance(caught.value, UnsupportedFormat)
    np.testing.assert_array_equal(decoder.decode(GOOD), PCM)
    assert len(decoder.flush()) == 0


def test_not_riff_is_detected_on_the_first_bytes():
    with pytest.raises(AudioError) as caught:
        decoder_for(FMT16).decode(b"OggS")
    assert caught.value.code == "invalid_wav_header"


def test_flush_inside_the_header_is_truncated():
    decoder = decoder_for(FMT16)
    decoder.decode(GOOD[:30])
    with pytest.raises(AudioError) as caught:
        decoder.flush()
    assert caught.value.code == "truncated_frame"
    np.testing.assert_array_equal(decoder.decode(GOOD), PCM)


def test_encoder_streams_a_header_then_frames(speech):
    pcm = speech(16000)
    encoder = encoder_for(AudioFormat("wav", 16000, 1))
    packets = encoder.encode(pcm[:1000]) + encoder.encode(pcm[1000:]) + encoder.flush()
    assert packets[0][:4] == b"RIFF" and len(packets[0]) == 44 + 640
    assert all(len(p) == 640 for p in packets[1:-1])
    np.testing.assert_array_equal(decode_all(FMT16, *packets), pcm)
    empty = encoder_for(AudioFormat("wav", 16000, 1))
    assert empty.flush() == [wav_header(16000, 1)]


@settings(max_examples=150, deadline=500)
@given(prefix=st.sampled_from([b"", GOOD[:44], GOOD[:20]]), chunks=st.lists(st.binary(max_size=80), max_size=6))
def test_fuzz_only_audio_errors(prefix, chunks):
    decoder = decoder_for(FMT16)
    for data in [prefix, *chunks]:
        try:
            out = decoder.decode(data)
        except AudioError:
            continue
        assert out.dtype == np.int16 and out.ndim == 1
    try:
        decoder.flush()
    except AudioError as e:
        assert e.code == "truncated_frame"
