"""G.711 tables against a bit-by-bit transcription of the ITU-T reference code (G.191 STL g711.c)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txvoice.audio.codecs import decoder_for, encoder_for
from txvoice.audio.codecs import g711
from txvoice.audio.format import AudioFormat


def _short(value: int) -> int:
    """Wrap to a C ``short``, as the reference code's assignments do."""
    return ((value + 0x8000) & 0xFFFF) - 0x8000


def ref_alaw_compress(sample: int) -> int:
    """STL ``alaw_compress`` for one sample."""
    ix = (~sample) >> 4 if sample < 0 else sample >> 4
    if ix > 15:
        iexp = 1
        while ix > 16 + 15:
            ix >>= 1
            iexp += 1
        ix -= 16
        ix += iexp << 4
    if sample >= 0:
        ix |= 0x0080
    return (ix ^ 0x0055) & 0xFF


def ref_alaw_expand(code: int) -> int:
    """STL ``alaw_expand`` for one code."""
    ix = code ^ 0x0055
    ix &= 0x007F
    iexp = ix >> 4
    mant = ix & 0x000F
    if iexp > 0:
        mant = mant + 16
    mant = (mant << 4) + 0x0008
    if iexp > 1:
        mant = mant << (iexp - 1)
    return _short(mant if code > 127 else -mant)


def ref_ulaw_compress(sample: int) -> int:
    """STL ``ulaw_compress`` for one sample."""
    absno = ((~sample) >> 2) + 33 if sample < 0 else (sample >> 2) + 33
    if absno > 0x1FFF:
        absno = 0x1FFF
    i = absno >> 6
    segno = 1
    while i != 0:
        segno += 1
        i >>= 1
    high_nibble = 0x0008 - segno
    low_nibble = (absno >> segno) & 0x000F
    low_nibble = 0x000F - low_nibble
    code = (high_nibble << 4) | low_nibble
    if sample >= 0:
        code |= 0x0080
    return code & 0xFF


def ref_ulaw_expand(code: int) -> int:
    """STL ``ulaw_expand`` for one code."""
    sign = -1 if code < 0x0080 else 1
    mantissa = ~code
    exponent = (mantissa >> 4) & 0x0007
    segment = exponent + 1
    mantissa = mantissa & 0x000F
    step = 4 << segment
    return _short(sign * ((0x0080 << exponent) + step * mantissa + step // 2 - 4 * 33))


ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int32)


@pytest.mark.parametrize(
    "table, reference",
    [(g711.ULAW_ENCODE, ref_ulaw_compress), (g711.ALAW_ENCODE, ref_alaw_compress)],
    ids=["ulaw", "alaw"],
)
def test_compress_table_matches_reference_for_all_65536_inputs(table, reference):
    expected = np.array([reference(int(s)) for s in ALL_SAMPLES], dtype=np.uint8)
    got = table[ALL_SAMPLES.astype(np.int16).view(np.uint16)]
    mismatches = np.flatnonzero(got != expected)
    assert mismatches.size == 0, f"first mismatch at sample {ALL_SAMPLES[mismatches[0]]}"


@pytest.mark.parametrize(
    "table, reference",
    [(g711.ULAW_DECODE, ref_ulaw_expand), (g711.ALAW_DECODE, ref_alaw_expand)],
    ids=["ulaw", "alaw"],
)
def test_expand_table_matches_reference_for_all_256_codes(table, reference):
    expected = np.array([reference(code) for code in range(256)], dtype=np.int16)
    np.testing.assert_array_equal(table, expected)


def test_known_values():
    """Spot values from G.711 itself: silence codes and full scale."""
    assert g711.ULAW_ENCODE[np.array([0], np.int16).view(np.uint16)][0] == 0xFF
    assert g711.ALAW_ENCODE[np.array([0], np.int16).view(np.uint16)][0] == 0xD5
    assert g711.ULAW_DECODE[0x80] == 32124 and g711.ULAW_DECODE[0x00] == -32124
    assert g711.ALAW_DECODE[0xAA] == 32256 and g711.ALAW_DECODE[0x2A] == -32256


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_expand_then_compress_is_identity_on_codes(law):
    """Every code survives decode then encode (except mu-law's negative zero, 0x7F -> 0xFF)."""
    decode, encode = g711._TABLES[law]
    codes = np.arange(256, dtype=np.uint8)
    again = encode[decode[codes].view(np.uint16)]
    differ = set(np.flatnonzero(again != codes).tolist())
    assert differ == ({0x7F} if law == "mulaw" else set())


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_decoder_and_encoder_round_trip_speech(law, speech):
    pcm = speech(8000)
    fmt = AudioFormat.validated(law, 8000, 1)
    encoder = encoder_for(fmt)
    packets = encoder.encode(pcm) + encoder.flush()
    assert all(len(p) == 160 for p in packets[:-1]) and 0 < len(packets[-1]) <= 160
    data = b"".join(packets)
    assert len(data) == len(pcm)
    decoded = decoder_for(fmt).decode(data)
    table_path = g711._TABLES[law][0][g711._TABLES[law][1][pcm.view(np.uint16)]]
    np.testing.assert_array_equal(decoded, table_path)
    # Companding noise is small against speech: SNR above 30 dB.
    noise = (decoded.astype(np.float64) - pcm) ** 2
    assert 10 * np.log10(np.mean(pcm.astype(np.float64) ** 2) / np.mean(noise)) > 30


def test_function_helpers_agree_with_tables():
    pcm = np.array([-32768, -1000, -1, 0, 1, 1000, 32767], np.int16)
    assert g711.ulaw_encode(pcm) == bytes(g711.ULAW_ENCODE[pcm.view(np.uint16)])
    assert g711.alaw_encode(pcm) == bytes(g711.ALAW_ENCODE[pcm.view(np.uint16)])
    np.testing.assert_array_equal(g711.ulaw_decode(b"\x00\x7f\xff"), g711.ULAW_DECODE[[0, 0x7F, 0xFF]])
    np.testing.assert_array_equal(g711.alaw_decode(b"\x00\x55\xd5"), g711.ALAW_DECODE[[0, 0x55, 0xD5]])


@settings(max_examples=60, deadline=500)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_stereo_chunking_invariance(data, cuts):
    """Splitting a stereo stream anywhere gives the same samples, in whole frames."""
    fmt = AudioFormat.validated("alaw", 8000, 2)
    whole = decoder_for(fmt).decode(data)
    decoder = decoder_for(fmt)
    points = sorted({0, len(data), *[c for c in cuts if c < len(data)]})
    parts = [decoder.decode(data[i:j]) for i, j in zip(points, points[1:])]
    for part in parts:
        assert len(part) % 2 == 0
    joined = np.concatenate([np.zeros(0, np.int16), *parts])
    np.testing.assert_array_equal(joined, whole)
    assert len(whole) == len(data) // 2 * 2
