"""
A real FFT of one fixed length without ``numpy.fft.rfft``'s per-call Python.

``np.fft.rfft`` spends ~11 of its ~14 µs on a 320-sample frame (this project's slow CI VM) in
Python argument handling before it reaches pocketfft; the VAD's spectral gate calls it on every
voiced frame of every stream.  numpy >= 2.0 exposes pocketfft as a ufunc
(``numpy.fft._pocketfft_umath.rfft_n_even`` / ``rfft_n_odd``), which costs ~3 µs called directly.
That module is private, so :func:`planned_rfft` checks it against ``np.fft.rfft`` once and falls
back to the public call if it is missing or disagrees.  The check runs once per length, not per
stream.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

try:
    from numpy.fft import _pocketfft_umath as _pocketfft  # type: ignore[attr-defined]  # private, numpy >= 2
except ImportError:  # numpy < 2
    _pocketfft = None

#: ``rfft(x, out)``: the real FFT of the 1-D float32 ``x`` into the complex64 ``out``.
RealFFT = Callable[[np.ndarray, np.ndarray], None]


def _public_rfft(x: np.ndarray, out: np.ndarray) -> None:
    np.fft.rfft(x, out=out)


def _ufunc_rfft(n: int) -> RealFFT | None:
    """pocketfft's ufunc for length ``n``, or ``None`` when this numpy has none that agrees."""
    ufunc = getattr(_pocketfft, "rfft_n_even" if n % 2 == 0 else "rfft_n_odd", None)
    if ufunc is None:
        return None
    scale = np.float32(1.0)  # "backward" normalisation; a float32 factor keeps the float32 loop

    def rfft(x: np.ndarray, out: np.ndarray) -> None:
        ufunc(x, scale, out=out)

    t = np.arange(n, dtype=np.float64)
    probe = (np.sin(t * 0.37) + 0.5 * np.cos(t * t * 0.011) + 0.25).astype(np.float32)
    got = np.empty(n // 2 + 1, dtype=np.complex64)
    want = np.empty_like(got)
    try:
        rfft(probe, got)
    except Exception:
        return None
    _public_rfft(probe, want)
    return rfft if np.allclose(got, want, rtol=1e-5, atol=1e-5) else None


@functools.lru_cache(maxsize=None)
def planned_rfft(n: int) -> RealFFT:
    """The fastest correct real FFT of ``n`` float32 samples into ``n // 2 + 1`` complex64 bins."""
    if n < 1:
        raise ValueError(f"FFT length must be positive, not {n}")
    return _ufunc_rfft(n) or _public_rfft
