"""Which container a stream's first bytes announce (S4 sends WebM, WAV, Ogg or raw PCM unannounced)."""

from __future__ import annotations

import struct


def sniff_container(first: bytes) -> str | None:
    """The container the first bytes of a stream announce: ``webm``, ``wav``, ``ogg`` or None (raw)."""
    if first[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if first[:4] == b"RIFF" and first[8:12] == b"WAVE":
        return "wav"
    if first[:4] == b"OggS":
        return "ogg"
    return None


def wav_shape(first: bytes) -> tuple[int, int] | None:
    """(sample rate, channels) from a canonical WAV header in the first chunk, if it is there."""
    if len(first) >= 36 and first[12:16] == b"fmt ":
        channels, rate = struct.unpack_from("<HI", first, 22)
        return rate, channels
    return None
