"""
Re-slicing of a PCM stream into frames of exactly 10, 20 or 30 ms.

The resampler and the codecs hand over chunks of any size (soxr in bursts of 0 or ~490 samples);
the VAD, the enhancers and the turn detector want fixed frames.  :class:`FrameAssembler` copies
each chunk once into a preallocated buffer and returns the complete frames as *views* of that
buffer, so the per-frame path allocates no sample memory.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FRAME_MS", "FrameAssembler", "frame_samples"]

_INT16 = np.dtype(np.int16)

#: Frame durations the signal path supports (those webrtcvad accepts).
FRAME_MS: frozenset[int] = frozenset({10, 20, 30})


def frame_samples(sample_rate: int, frame_ms: int) -> int:
    """Samples in one frame; raises ``ValueError`` for a duration that is not a whole number of samples."""
    n, rest = divmod(sample_rate * frame_ms, 1000)
    if rest or n <= 0:
        raise ValueError(f"{frame_ms} ms at {sample_rate} Hz is not a whole number of samples")
    return n


class FrameAssembler:
    """
    Per-stream accumulator that turns chunks of any length into ``(n, frame)`` int16 frames.

    Views, not copies: the array :meth:`push` returns is a view of the assembler's own buffer (or,
    when nothing was pending and a writable chunk holds whole frames, of that chunk: in-place
    consumers then write into it) and is valid only until the next :meth:`push`, :meth:`flush` or
    :meth:`reset`.  Every consumer
    on the signal path handles a frame synchronously (VAD, enhancers in place, the turn detector
    copies what it keeps), so a copy per frame would only cost time and garbage.  Keep a frame
    longer with ``frame.copy()``.

    The buffer holds one partial frame plus the largest chunk seen so far; it grows (rarely, by
    doubling) only when a larger chunk arrives.  With ``capacity_ms=0`` there is none until a
    chunk needs it (the native batch ingest assembles frames in C: its streams' assemblers only
    see the decoder's tail at the end, none for Opus).
    """

    def __init__(self, sample_rate: int = 16000, frame_ms: int = 20, *, capacity_ms: int = 200) -> None:
        if frame_ms not in FRAME_MS:
            raise ValueError(f"frame_ms must be one of {sorted(FRAME_MS)}, not {frame_ms}")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_size = frame_samples(sample_rate, frame_ms)
        capacity = max(2 * self.frame_size, sample_rate * capacity_ms // 1000) if capacity_ms else 0
        self._buf = np.zeros(capacity, dtype=np.int16)
        self._start = 0  # first pending sample; frames before it were handed out by the last push
        self._fill = 0  # pending samples (always < frame_size between calls)
        self.frames_out = 0

    @property
    def pending(self) -> int:
        """Samples waiting for the rest of their frame."""
        return self._fill

    @property
    def time_ms(self) -> float:
        """Stream time (ms) at the end of the last frame handed out."""
        return self.frames_out * self.frame_ms

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """
        Append mono int16 ``pcm``; return the frames now complete as a ``(n, frame_size)`` view
        (``n`` may be 0).  Iterating over the result yields one 1-D frame view at a time.
        """
        fill = self._fill
        size = self.frame_size
        if not fill and pcm.dtype is _INT16 and pcm.ndim == 1 and not len(pcm) % size and pcm.flags.writeable:
            # Whole frames and nothing pending (a decoded 20 ms Opus packet): the chunk itself,
            # reshaped, is the answer.  Nothing to copy; the buffer starts empty again.  Writable
            # chunks only, so consumers that work in place still can (PCM straight from the
            # client's bytes is read-only and is copied as before).
            n = len(pcm) // size
            self._start = 0
            self.frames_out += n
            return pcm.reshape(n, size)
        buf = self._buf
        if self._start:
            # Move the partial frame to the front; the previous push's views end here.
            buf[:fill] = buf[self._start : self._start + fill]
            self._start = 0
        total = fill + len(pcm)
        if total > len(buf):
            grown = np.zeros(max(total, 2 * len(buf), 2 * size), dtype=np.int16)
            grown[:fill] = buf[:fill]
            self._buf = buf = grown
        buf[fill:total] = pcm
        n = total // self.frame_size
        used = n * self.frame_size
        self._start = used
        self._fill = total - used
        self.frames_out += n
        return buf[:used].reshape(n, self.frame_size)

    def flush(self, pad: bool = False) -> np.ndarray:
        """
        End of stream: return the pending samples (a view, possibly empty) and empty the
        assembler.  With ``pad`` a non-empty remainder is zero-padded to a whole frame (and
        counted as one), which is what a VAD needs.
        """
        start, fill = self._start, self._fill
        self._start = self._fill = 0
        if not fill:
            return self._buf[:0]
        rest = self._buf[start : start + fill]
        if not pad:
            return rest
        if start:
            self._buf[:fill] = rest
        self._buf[fill : self.frame_size] = 0
        self.frames_out += 1
        return self._buf[: self.frame_size]

    def reset(self) -> None:
        """Drop pending samples and restart stream time at 0."""
        self._start = self._fill = 0
        self.frames_out = 0
