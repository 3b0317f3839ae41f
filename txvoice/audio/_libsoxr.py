"""
A minimal ctypes binding of libsoxr's streaming API, for the per-frame resampler.

python-soxr drops the GIL around every ``resample_chunk``: for ~20 µs of work per 20 ms frame the
audio thread then waited up to a switch interval (5 ms) to get the GIL back whenever the reactor
was busy (measured: 1.6 ms of wall time per chunk under load).  This binding is a
:class:`ctypes.PyDLL` -- calls keep the GIL -- and also takes int16 in and gives int16 out straight
from and into caller-owned numpy buffers, so no numpy loop (which drops the GIL above 500 elements)
and no allocation is left per chunk.  Dither is off (``SOXR_NO_DITHER``): with it, soxr's int16
output depended on where the chunks fell; without it, rounding is round-half-even and clipping, the
same for any chunking.

It loads the libsoxr that python-soxr carries (its extension exports the C API), so both give the
same filter; failing that, the system's ``libsoxr.so.0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

__all__ = ["LOW_LATENCY", "QUALITIES", "SoxrError", "SoxrStream"]

# soxr.h: datatypes, quality recipes, io flags.
_INT16_I = 3
_NO_DITHER = 8
#: python-soxr's quality names -> soxr recipes (SOXR_QQ .. SOXR_VHQ), plus "LL": HQ's filter
#: (20-bit, passband flat to 91 % of Nyquist) tuned for low latency, see :data:`LOW_LATENCY`.
QUALITIES = {"QQ": 0, "LQ": 1, "MQ": 2, "HQ": 4, "VHQ": 6, "LL": 4}
#: "LL" = HQ with a minimum-phase filter (phase_response 0) and 256-point DFT blocks
#: (log2_min_dft_size 8, log2_large_dft_size 10).  Measured for 20 ms chunks of 48 kHz -> 16 kHz
#: (issue #21): HQ emits 0, 490, 0, 489, ... (a frame held back every other chunk, up to 36.6 ms,
#: 21.6 ms on average); LL emits 296 or more on every chunk (at most 9.2 ms, 4.7 ms on average
#: behind), same passband, aliasing below -99 dB, same CPU (~8-10 µs a chunk).  The minimum phase
#: is harmless to the VAD and the recognisers, which look at magnitudes.
LOW_LATENCY = {"phase_response": 0.0, "log2_min_dft_size": 8, "log2_large_dft_size": 10}


class SoxrError(RuntimeError):
    """libsoxr returned an error string."""


class _IoSpec(ctypes.Structure):
    _fields_ = [("itype", ctypes.c_int), ("otype", ctypes.c_int), ("scale", ctypes.c_double),
                ("e", ctypes.c_void_p), ("flags", ctypes.c_ulong)]


class _QualitySpec(ctypes.Structure):
    _fields_ = [("precision", ctypes.c_double), ("phase_response", ctypes.c_double),
                ("passband_end", ctypes.c_double), ("stopband_begin", ctypes.c_double),
                ("e", ctypes.c_void_p), ("flags", ctypes.c_ulong)]


class _RuntimeSpec(ctypes.Structure):
    _fields_ = [("log2_min_dft_size", ctypes.c_uint), ("log2_large_dft_size", ctypes.c_uint),
                ("coef_size_kbytes", ctypes.c_uint), ("num_threads", ctypes.c_uint),
                ("e", ctypes.c_void_p), ("flags", ctypes.c_ulong)]


def _load() -> ctypes.PyDLL:
    candidates: list[str] = []
    try:
        from soxr import soxr_ext

        candidates.append(soxr_ext.__file__)
    except ImportError:
        pass
    candidates += ["libsoxr.so.0", ctypes.util.find_library("soxr") or ""]
    for name in candidates:
        if not name:
            continue
        try:
            lib = ctypes.PyDLL(name)
            lib.soxr_create  # noqa: B018 -- the extension might not export the C API
            return lib
        except (OSError, AttributeError):
            continue
    raise ImportError("libsoxr not found (install python-soxr, or Debian's libsoxr0)")


_lib = _load()
_size_p = ctypes.POINTER(ctypes.c_size_t)
_lib.soxr_io_spec.argtypes = (ctypes.c_int, ctypes.c_int)
_lib.soxr_io_spec.restype = _IoSpec
_lib.soxr_quality_spec.argtypes = (ctypes.c_ulong, ctypes.c_ulong)
_lib.soxr_quality_spec.restype = _QualitySpec
_lib.soxr_runtime_spec.argtypes = (ctypes.c_uint,)
_lib.soxr_runtime_spec.restype = _RuntimeSpec
_lib.soxr_create.argtypes = (ctypes.c_double, ctypes.c_double, ctypes.c_uint, ctypes.POINTER(ctypes.c_char_p),
                             ctypes.POINTER(_IoSpec), ctypes.POINTER(_QualitySpec), ctypes.POINTER(_RuntimeSpec))
_lib.soxr_create.restype = ctypes.c_void_p
_process = _lib.soxr_process
_process.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, _size_p, ctypes.c_void_p, ctypes.c_size_t,
                     _size_p)
_process.restype = ctypes.c_char_p
_lib.soxr_clear.argtypes = (ctypes.c_void_p,)
_lib.soxr_clear.restype = ctypes.c_char_p
_lib.soxr_delay.argtypes = (ctypes.c_void_p,)
_lib.soxr_delay.restype = ctypes.c_double
_lib.soxr_delete.argtypes = (ctypes.c_void_p,)
_lib.soxr_delete.restype = None
_delete = _lib.soxr_delete  # kept for __del__ at interpreter exit


class SoxrStream:
    """One mono int16 -> int16 resampling stream whose filter state carries from chunk to chunk."""

    def __init__(self, in_rate: float, out_rate: float, quality: str = "HQ") -> None:
        recipe = QUALITIES.get(quality.upper())
        if recipe is None:
            raise ValueError(f"quality must be one of {', '.join(QUALITIES)}, not {quality!r}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._ratio = out_rate / in_rate
        io = _lib.soxr_io_spec(_INT16_I, _INT16_I)
        io.flags |= _NO_DITHER
        q = _lib.soxr_quality_spec(recipe, 0)
        runtime = _lib.soxr_runtime_spec(1)
        if quality.upper() == "LL":
            q.phase_response = LOW_LATENCY["phase_response"]
            runtime.log2_min_dft_size = int(LOW_LATENCY["log2_min_dft_size"])
            runtime.log2_large_dft_size = int(LOW_LATENCY["log2_large_dft_size"])
        error = ctypes.c_char_p()
        self._soxr: int | None = _lib.soxr_create(in_rate, out_rate, 1, ctypes.byref(error), ctypes.byref(io),
                                                  ctypes.byref(q), ctypes.byref(runtime))
        if error.value or not self._soxr:
            self._soxr = None
            raise SoxrError((error.value or b"soxr_create failed").decode())
        self._idone = ctypes.c_size_t()
        self._odone = ctypes.c_size_t()
        self._idone_ref = ctypes.byref(self._idone)
        self._odone_ref = ctypes.byref(self._odone)
        self._out = np.empty(0, dtype=np.int16)

    def _room(self, n_in: int) -> np.ndarray:
        # soxr emits in bursts (e.g. 0, 490, 0, 489 for 20 ms of 48 kHz -> 16 kHz); what does not fit
        # stays inside soxr until the next call, so ample room means one call per chunk.
        need = int(n_in * self._ratio) * 2 + 1024
        if len(self._out) < need:
            self._out = np.empty(need, dtype=np.int16)
        return self._out

    def process(self, pcm: np.ndarray | None) -> np.ndarray:
        """
        Feed C-contiguous int16 ``pcm`` (``None``: end of input -- flush, then start afresh); return
        the output ready so far as a view of a reused buffer, valid until the next call.
        """
        if self._soxr is None:
            raise SoxrError("the stream is closed")
        n_in = 0 if pcm is None else len(pcm)
        out = self._room(n_in)
        if pcm is not None and not n_in:
            return out[:0]  # nothing to feed (a NULL input would mean "flush")
        src: int | None = None if pcm is None else pcm.ctypes.data
        total = 0
        while True:
            error = _process(self._soxr, src, n_in, self._idone_ref, out.ctypes.data + 2 * total,
                             len(out) - total, self._odone_ref)
            if error:
                raise SoxrError(error.decode())
            total += self._odone.value
            if src is not None:
                src += 2 * self._idone.value
                n_in -= self._idone.value
            if total < len(out) and not n_in:
                if pcm is None:
                    # libsoxr crashes when fed after the end of input: a flush also clears, so the
                    # stream is ready for a new one (the output is in our buffer, untouched by it).
                    self.clear()
                return out[:total]
            if total == len(out):  # not with ample room; be safe: grow and go on
                grown = np.empty(2 * len(out), dtype=np.int16)
                grown[:total] = out[:total]
                self._out = out = grown

    def delay(self) -> float:
        """Output samples soxr holds back at this moment."""
        return 0.0 if self._soxr is None else _lib.soxr_delay(self._soxr)

    def clear(self) -> None:
        """Forget all state, ready for a new stream."""
        if self._soxr is not None:
            error = _lib.soxr_clear(self._soxr)
            if error:
                raise SoxrError(error.decode())

    def close(self) -> None:
        soxr, self._soxr = self._soxr, None
        if soxr:
            _delete(soxr)

    def __del__(self) -> None:
        soxr = getattr(self, "_soxr", None)
        if soxr:
            _delete(soxr)
