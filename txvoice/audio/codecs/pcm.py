"""
Raw signed 16-bit little-endian PCM, and the sample-level helpers the other codecs share.

A client may split a PCM stream anywhere, even inside a sample or between the left and right
sample of a stereo frame; the decoder keeps the incomplete tail for the next chunk so the output
never loses sample or channel alignment.
"""

from __future__ import annotations

import sys
from typing import Iterator

import numpy as np
from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.audio.interfaces import IAudioDecoder, IAudioEncoder
from txvoice.errors import AudioError

__all__ = ["PcmDecoder", "PcmEncoder", "PcmFramer", "as_pcm", "downmix", "empty_pcm"]

_LITTLE_ENDIAN = sys.byteorder == "little"

_EMPTY = np.zeros(0, dtype=np.int16)
_EMPTY.flags.writeable = False


def empty_pcm() -> np.ndarray:
    """A shared, read-only empty ``int16`` array (what a decoder returns when it has no audio yet)."""
    return _EMPTY


def as_pcm(pcm: np.ndarray) -> np.ndarray:
    """
    Check that ``pcm`` is a 1-D ``int16`` array (what encoders take) and make it contiguous.

    Encoder input comes from server code, not from clients, so a wrong type is a bug:
    ``TypeError`` / ``ValueError``, not :class:`AudioError`.
    """
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16:
        raise TypeError(f"expected a numpy int16 array, got {getattr(pcm, 'dtype', type(pcm))!r}")
    if pcm.ndim != 1:
        raise ValueError(f"expected a 1-D array of interleaved samples, got shape {pcm.shape}")
    return np.ascontiguousarray(pcm)


def pcm_from_bytes(data: bytes) -> np.ndarray:
    """
    View whole little-endian samples of ``data`` as ``int16`` without copying.

    ``data`` must be immutable ``bytes`` with an even length; the array is read-only and keeps
    ``data`` alive.
    """
    pcm = np.frombuffer(data, dtype="<i2")
    return pcm if _LITTLE_ENDIAN else pcm.astype(np.int16)


def pcm_to_bytes(pcm: np.ndarray) -> bytes:
    """Serialize ``int16`` samples as little-endian bytes."""
    return pcm.tobytes() if _LITTLE_ENDIAN else pcm.astype("<i2").tobytes()


def downmix(pcm: np.ndarray, channels: int, out: np.ndarray | None = None) -> np.ndarray:
    """
    Average interleaved ``channels`` down to mono ``int16`` (for analysis: VAD, levels, ASR).

    Mono input is returned as is.  The average is floored (``(l + r) >> 1`` for stereo), so it
    never overflows.  ``out`` (at least ``len(pcm) // channels`` samples) receives the result
    when given, letting a stream reuse one buffer; the returned array is then a view of it.
    Raises :class:`AudioError` ``invalid_frame_size`` when the sample count is not a whole
    number of frames.
    """
    if channels == 1:
        return pcm
    if channels < 1:
        raise ValueError(f"channels must be >= 1, not {channels}")
    frames, rest = divmod(len(pcm), channels)
    if rest:
        raise AudioError(
            f"{len(pcm)} samples is not a whole number of {channels}-channel frames",
            code="invalid_frame_size",
        )
    shaped = pcm[: frames * channels].reshape(frames, channels)
    result = np.empty(frames, dtype=np.int16) if out is None else out[:frames]
    if channels == 2:
        # (l + r) >> 1 in int32: no overflow, no float temporaries (the common stereo case).
        acc = np.add(shaped[:, 0], shaped[:, 1], dtype=np.int32)
        np.right_shift(acc, 1, out=acc)
    else:
        acc = shaped.sum(axis=1, dtype=np.int32)
        np.floor_divide(acc, channels, out=acc)
    np.copyto(result, acc, casting="unsafe")
    return result


class PcmFramer:
    """
    Cuts a stream of interleaved ``int16`` samples into frames of exactly ``frame_len`` samples.

    Encoders use it to emit packets of exactly the format's frame duration whatever the size of
    the PCM they are given.  The partial frame lives in one preallocated buffer.
    """

    def __init__(self, frame_len: int) -> None:
        if frame_len <= 0:
            raise ValueError(f"frame_len must be positive, not {frame_len}")
        self.frame_len = frame_len
        self.buffer = np.zeros(frame_len, dtype=np.int16)
        self._fill = 0

    @property
    def pending(self) -> int:
        """Samples waiting for a complete frame."""
        return self._fill

    def frames(self, pcm: np.ndarray) -> Iterator[np.ndarray]:
        """
        Yield each complete frame that ``pcm`` completes, in order.

        A yielded array is a view (of ``pcm`` or of :attr:`buffer`) that is valid only until the
        generator resumes: consume it (encode or copy) at once, and run the generator to its end,
        which is when the tail is stored.
        """
        frame_len = self.frame_len
        total = len(pcm)
        pos = 0
        if self._fill:
            take = min(frame_len - self._fill, total)
            self.buffer[self._fill : self._fill + take] = pcm[:take]
            self._fill += take
            pos = take
            if self._fill < frame_len:
                return
            self._fill = 0
            yield self.buffer
        while total - pos >= frame_len:
            yield pcm[pos : pos + frame_len]
            pos += frame_len
        rest = total - pos
        if rest:
            self.buffer[:rest] = pcm[pos:]
            self._fill = rest

    def take_rest(self) -> np.ndarray:
        """Return a copy of the pending partial frame and forget it."""
        rest = self.buffer[: self._fill].copy()
        self._fill = 0
        return rest

    def take_padded(self) -> np.ndarray | None:
        """
        Zero-pad the pending partial frame to a full one and return it (a view of
        :attr:`buffer`, valid until the next call), or ``None`` when nothing is pending.
        """
        if not self._fill:
            return None
        self.buffer[self._fill :] = 0
        self._fill = 0
        return self.buffer


@implementer(IAudioDecoder)
class PcmDecoder:
    """
    Decodes raw ``pcm_s16le``.

    Each call returns a new array of whole frames that later calls never modify; when the chunk
    needs no carry-over it is a read-only zero-copy view of the chunk.  ``sequence`` is ignored:
    raw PCM has no frame boundaries to conceal.
    """

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self.output_rate = fmt.sample_rate
        self.output_channels = fmt.channels
        self._block_align = 2 * fmt.channels
        self._carry = b""

    def decode(self, data: bytes, sequence: int | None = None) -> np.ndarray:
        """Decode whole frames of ``data``; keep an incomplete trailing frame for the next chunk."""
        if self._carry:
            data = self._carry + bytes(data)
        elif not isinstance(data, bytes):
            data = bytes(data)  # a mutable buffer could change under a zero-copy view
        usable = len(data) - len(data) % self._block_align
        self._carry = data[usable:]
        if not usable:
            return _EMPTY
        if usable != len(data):
            data = data[:usable]
        return pcm_from_bytes(data)

    def flush(self) -> np.ndarray:
        """
        End of stream: nothing is buffered but a partial frame, which cannot be decoded and is
        reported as ``truncated_frame``.
        """
        carry, self._carry = self._carry, b""
        if carry:
            raise AudioError(
                f"stream ended inside a frame ({len(carry)} dangling bytes)",
                code="truncated_frame",
                dangling_bytes=len(carry),
            )
        return _EMPTY


@implementer(IAudioEncoder)
class PcmEncoder:
    """Encodes ``pcm_s16le`` in packets of exactly ``format.frame_duration_ms`` (the last one may be short)."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._framer = PcmFramer(fmt.samples_per_frame * fmt.channels)

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """Return the complete packets ``pcm`` yields."""
        return [pcm_to_bytes(frame) for frame in self._framer.frames(as_pcm(pcm))]

    def flush(self) -> list[bytes]:
        """Return the pending partial packet unpadded (PCM has no frame size to respect)."""
        rest = self._framer.take_rest()
        return [pcm_to_bytes(rest)] if len(rest) else []
