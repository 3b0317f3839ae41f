"""
Streaming conversion of one decoded stream to mono PCM at the pipeline rate.

Each stream owns one :class:`Resampler`: it downmixes interleaved stereo and runs a libsoxr
stream (:mod:`txvoice.audio._libsoxr`) so that the filter state carries over from chunk to chunk.
PCM is int16 in and out with soxr's dither off: the output is bit-identical for any chunking and
equal to :func:`resample_once` (python-soxr's float path, rounded and clipped by us).  The binding
keeps the GIL and writes into a reused buffer: ~10 µs per 20 ms of 48 kHz input, and the audio
thread never waits for the reactor to hand the GIL back (python-soxr drops it for every chunk).

soxr emits its output in bursts -- e.g. 0, 490, 0, 489 samples for each 20 ms of 48 kHz input at
``HQ`` (a frame held back every other chunk) -- so callers re-slice it with
:class:`txvoice.audio.frames.FrameAssembler`.  ``LL`` (the ingest default, see
:data:`txvoice.audio._libsoxr.LOW_LATENCY`) gives output on every 20 ms chunk.
"""

from __future__ import annotations

import numpy as np

from txvoice.audio.codecs.pcm import downmix  # one implementation, shared with the codecs
import soxr

from txvoice.audio._libsoxr import SoxrStream
from txvoice.errors import AudioError

__all__ = ["PIPELINE_RATE", "downmix", "resample_once", "Resampler"]

#: The default rate of the signal path (VAD, turn detection, pipelines).
PIPELINE_RATE = 16000

_EMPTY = np.zeros(0, dtype=np.int16)
_EMPTY.flags.writeable = False


def _grown(buf: np.ndarray, n: int) -> np.ndarray:
    """``buf`` if it holds ``n`` elements, else a new one at least twice as large."""
    return buf if len(buf) >= n else np.empty(max(n, 2 * len(buf)), dtype=buf.dtype)


def float_to_int16(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Scale float PCM in -1..1 (in place in ``x``) to int16 in ``out``: round half to even, clip."""
    x *= np.float32(32768.0)
    # Two ufuncs: np.clip's Python wrapper costs ~5 µs a call, more than the work.
    np.maximum(x, np.float32(-32768.0), out=x)
    np.minimum(x, np.float32(32767.0), out=x)
    np.rint(x, out=x)
    np.copyto(out, x, casting="unsafe")
    return out


def resample_once(pcm: np.ndarray, in_rate: int, out_rate: int = 16000, quality: str = "HQ") -> np.ndarray:
    """One-shot mono resampling that :class:`Resampler` matches exactly for any chunking."""
    if quality.upper() == "LL":  # a tuning python-soxr does not offer: the binding, in one chunk
        stream = SoxrStream(in_rate, out_rate, quality=quality)
        head = stream.process(np.ascontiguousarray(pcm, dtype=np.int16)).copy()
        return np.concatenate((head, stream.process(None)))
    y = soxr.resample(pcm.astype(np.float32) / np.float32(32768.0), in_rate, out_rate, quality=quality)
    return float_to_int16(y.astype(np.float32, copy=False), np.empty(len(y), dtype=np.int16))



_PRIME = np.zeros(2, dtype=np.int16)


class Resampler:
    """
    Per-stream downmix and sample-rate conversion to ``out_rate`` (int16 mono out).

    ``process`` takes interleaved int16 PCM in arbitrary chunk sizes, even ones that split a
    stereo frame (the odd sample is carried over), and returns what soxr has ready, which may be
    empty.  When the rates are equal and the input is mono, it passes the input through untouched.
    The returned array is a view of a per-stream buffer, valid until the next call: consume or
    copy it first (the frame assembler copies it).  Downmix and output reuse buffers that grow to
    the largest chunk: nothing is allocated per chunk.
    """

    def __init__(
        self, in_rate: int, out_rate: int = PIPELINE_RATE, channels: int = 1, quality: str = "HQ"
    ) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.channels = channels
        self.quality = quality
        self.passthrough = in_rate == out_rate
        self._stream: SoxrStream | None = None
        if not self.passthrough:
            self._stream = SoxrStream(in_rate, out_rate, quality=quality)
            self._prime()
        self._mono = np.empty(0, dtype=np.int16)
        self._carry = np.empty(channels, dtype=np.int16)
        self._carried = 0
        self.samples_in = 0
        self.samples_out = 0

    def _downmix(self, pcm: np.ndarray) -> np.ndarray:
        if self.channels == 1:
            return pcm
        if self._carried:
            # Complete the frame split by the previous chunk; this path copies, which is rare.
            pcm = np.concatenate((self._carry[: self._carried], pcm))
            self._carried = 0
        whole = len(pcm) - len(pcm) % self.channels
        if whole != len(pcm):
            self._carried = len(pcm) - whole
            self._carry[: self._carried] = pcm[whole:]
            pcm = pcm[:whole]
        self._mono = _grown(self._mono, whole // self.channels)
        return downmix(pcm, self.channels, self._mono)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """
        Feed interleaved int16 PCM; return the mono int16 output ready so far (possibly empty).
        In pass-through of mono input that is the input itself.
        """
        if pcm.dtype != np.int16:
            raise AudioError(f"expected int16 PCM, got {pcm.dtype}")
        mono = self._downmix(pcm)
        n = len(mono)
        self.samples_in += n
        if self._stream is None:
            self.samples_out += n
            return mono
        if not n:
            return _EMPTY
        out = self._stream.process(np.ascontiguousarray(mono))
        self.samples_out += len(out)
        return out

    def flush(self) -> np.ndarray:
        """End of stream: return soxr's remaining output; the resampler is reset afterwards."""
        self._carried = 0
        if self._stream is None:
            return _EMPTY
        out = self._stream.process(None)  # also clears the stream
        self.samples_out += len(out)
        self._prime()
        return out

    def _prime(self) -> None:
        """
        "QQ" (cubic) looks 2 input samples ahead, so each chunk's output came up a few samples
        short and every frame of it waited for the next chunk (a whole frame of latency, 20 ms at
        20 ms chunks).  Two samples of silence first align its output with its input.
        """
        if self._stream is not None and self.quality.upper() == "QQ":
            self._stream.process(_PRIME)

    def reset(self) -> None:
        """Drop all state, ready for a new stream with the same formats."""
        self._carried = 0
        self.samples_in = self.samples_out = 0
        if self._stream is not None:
            self._stream.clear()
            self._prime()

    @property
    def delay(self) -> float:
        """Output samples soxr holds back at this moment (0 in pass-through)."""
        return 0.0 if self._stream is None else self._stream.delay()

    def __repr__(self) -> str:
        return f"<Resampler {self.in_rate}x{self.channels} -> {self.out_rate} {self.quality}>"
