"""
G.711 mu-law and A-law at 8 kHz, through numpy lookup tables.

``audioop`` is gone in Python 3.13, so the tables are computed here, once, with the algorithm of
the ITU-T reference implementation (G.191 STL ``g711.c``): a 256-entry table per law to expand and
a 65536-entry table, indexed by the 16-bit sample, to compress.  The tests check every entry
against a bit-by-bit transcription of the reference code.
"""

from __future__ import annotations

import numpy as np
from zope.interface import implementer

from txvoice.audio.codecs.pcm import PcmFramer, as_pcm, empty_pcm
from txvoice.audio.format import AudioFormat
from txvoice.audio.interfaces import IAudioDecoder, IAudioEncoder

__all__ = [
    "ALAW_DECODE",
    "ALAW_ENCODE",
    "ULAW_DECODE",
    "ULAW_ENCODE",
    "G711Decoder",
    "G711Encoder",
    "alaw_decode",
    "alaw_encode",
    "ulaw_decode",
    "ulaw_encode",
]


def _all_samples() -> np.ndarray:
    """Every int16 value, ordered by its uint16 bit pattern (the compress-table index)."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _segment(magnitude: np.ndarray, first_threshold: int) -> np.ndarray:
    """Number of doublings of ``magnitude`` above ``first_threshold`` (0..7), vectorized."""
    seg = np.zeros(magnitude.shape, dtype=np.int32)
    for step in range(7):
        seg += magnitude >= (first_threshold << step)
    return seg


def _alaw_compress_table() -> np.ndarray:
    x = _all_samples()
    ix = np.where(x < 0, ~x, x) >> 4  # 1's complement for negatives; 12-bit magnitude 0..2047
    exp = _segment(ix, 16)  # 0 for ix <= 15 (linear), then one more per doubling: 16..31 -> 1
    mant = np.where(exp > 1, ix >> np.maximum(exp - 1, 0), ix) & 0x0F
    code = np.where(exp > 0, (exp << 4) | mant, ix)
    code = np.where(x >= 0, code | 0x80, code)
    return (code ^ 0x55).astype(np.uint8)


def _alaw_expand_table() -> np.ndarray:
    code = np.arange(256, dtype=np.int32)
    ix = (code ^ 0x55) & 0x7F
    exp = ix >> 4
    mant = ix & 0x0F
    mant = np.where(exp > 0, mant + 16, mant)
    mant = (mant << 4) + 8
    mant = np.where(exp > 1, mant << np.maximum(exp - 1, 0), mant)
    return np.where(code > 127, mant, -mant).astype(np.int16)


def _ulaw_compress_table() -> np.ndarray:
    x = _all_samples()
    absno = np.minimum(np.where(x < 0, ~x, x) >> 2, 0x1FFF - 33) + 33  # 14-bit magnitude + bias
    segno = _segment(absno, 64) + 1
    high = 8 - segno
    low = 0x0F - ((absno >> segno) & 0x0F)
    code = (high << 4) | low
    code = np.where(x >= 0, code | 0x80, code)
    return code.astype(np.uint8)


def _ulaw_expand_table() -> np.ndarray:
    code = np.arange(256, dtype=np.int32)
    sign = np.where(code < 0x80, -1, 1)
    inverted = ~code
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    step = 4 << (exponent + 1)
    return (sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)).astype(np.int16)


#: Expansion tables: 8-bit code -> int16 sample.
ULAW_DECODE: np.ndarray = _ulaw_expand_table()
ALAW_DECODE: np.ndarray = _alaw_expand_table()
#: Compression tables, indexed by ``sample.view(uint16)``: int16 sample -> 8-bit code.
ULAW_ENCODE: np.ndarray = _ulaw_compress_table()
ALAW_ENCODE: np.ndarray = _alaw_compress_table()
for _table in (ULAW_DECODE, ALAW_DECODE, ULAW_ENCODE, ALAW_ENCODE):
    _table.flags.writeable = False

_TABLES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "mulaw": (ULAW_DECODE, ULAW_ENCODE),
    "alaw": (ALAW_DECODE, ALAW_ENCODE),
}


def ulaw_decode(data: bytes) -> np.ndarray:
    """Expand mu-law bytes to a new ``int16`` array."""
    return ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def alaw_decode(data: bytes) -> np.ndarray:
    """Expand A-law bytes to a new ``int16`` array."""
    return ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """Compress ``int16`` samples to mu-law bytes."""
    return ULAW_ENCODE[as_pcm(pcm).view(np.uint16)].tobytes()


def alaw_encode(pcm: np.ndarray) -> bytes:
    """Compress ``int16`` samples to A-law bytes."""
    return ALAW_ENCODE[as_pcm(pcm).view(np.uint16)].tobytes()


@implementer(IAudioDecoder)
class G711Decoder:
    """
    Decodes ``mulaw`` or ``alaw`` (by ``format.codec``).

    Every byte is one sample, so any chunk decodes; for stereo an odd trailing byte waits for the
    next chunk.  Returns a new array per call.  ``sequence`` is ignored.
    """

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self.output_rate = fmt.sample_rate
        self.output_channels = fmt.channels
        self._expand = _TABLES[fmt.codec][0]
        self._carry = b""

    def decode(self, data: bytes, sequence: int | None = None) -> np.ndarray:
        """Expand the whole frames of ``data``."""
        if self.format.channels > 1:
            if self._carry:
                data = self._carry + bytes(data)
            usable = len(data) - len(data) % self.format.channels
            self._carry = bytes(data[usable:])
            data = data[:usable]
        if not len(data):
            return empty_pcm()
        return self._expand[np.frombuffer(data, dtype=np.uint8)]

    def flush(self) -> np.ndarray:
        """Drop a dangling half stereo frame (G.711 has no notion of truncation)."""
        self._carry = b""
        return empty_pcm()


@implementer(IAudioEncoder)
class G711Encoder:
    """Encodes ``mulaw`` or ``alaw`` in packets of exactly ``format.frame_duration_ms`` (the last may be short)."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._compress = _TABLES[fmt.codec][1]
        self._framer = PcmFramer(fmt.samples_per_frame * fmt.channels)

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """Return the complete packets ``pcm`` yields."""
        compress = self._compress
        return [compress[frame.view(np.uint16)].tobytes() for frame in self._framer.frames(as_pcm(pcm))]

    def flush(self) -> list[bytes]:
        """Return the pending partial packet, unpadded."""
        rest = self._framer.take_rest()
        return [self._compress[rest.view(np.uint16)].tobytes()] if len(rest) else []
