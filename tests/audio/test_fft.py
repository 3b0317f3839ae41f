"""The spectral gate's real FFT: pocketfft's ufunc called directly, checked against ``np.fft.rfft``."""

from __future__ import annotations

import numpy as np
import pytest

from txvoice.audio import _fft
from txvoice.audio._fft import planned_rfft
from txvoice.audio.vad import SpectralGate


@pytest.fixture
def fresh_plans():
    """Each test that changes what numpy offers sees a fresh plan cache, and leaves one."""
    planned_rfft.cache_clear()
    yield
    planned_rfft.cache_clear()


@pytest.mark.parametrize("n", [80, 160, 240, 320, 480, 960, 1440, 321, 7, 1])
def test_matches_numpy_rfft(n: int) -> None:
    rfft = planned_rfft(n)
    rng = np.random.default_rng(n + 1)
    for _ in range(3):
        x = (rng.standard_normal(n) * rng.uniform(1e-4, 1.0)).astype(np.float32)
        out = np.full(n // 2 + 1, np.nan, dtype=np.complex64)
        rfft(x, out)
        np.testing.assert_allclose(out, np.fft.rfft(x), rtol=1e-4, atol=1e-5 * np.abs(x).sum())


def test_this_numpy_gets_the_direct_ufunc() -> None:
    """numpy >= 2 (what installs here) has the ufunc: the gate must not pay for the Python wrapper."""
    assert planned_rfft(320) is not _fft._public_rfft
    assert SpectralGate(16000, 320)._rfft is not _fft._public_rfft


def test_planned_once_per_length() -> None:
    assert planned_rfft(320) is planned_rfft(320)
    assert SpectralGate(16000, 320)._rfft is SpectralGate(16000, 320)._rfft


def test_falls_back_without_the_private_module(monkeypatch: pytest.MonkeyPatch, fresh_plans) -> None:
    monkeypatch.setattr(_fft, "_pocketfft", None)  # numpy < 2
    assert planned_rfft(320) is _fft._public_rfft
    out = np.empty(161, dtype=np.complex64)
    x = np.arange(320, dtype=np.float32)
    planned_rfft(320)(x, out)
    np.testing.assert_allclose(out, np.fft.rfft(x), rtol=1e-4, atol=1e-2)


def test_falls_back_when_the_ufunc_disagrees(monkeypatch: pytest.MonkeyPatch, fresh_plans) -> None:
    """A numpy whose private ufunc means something else must not be trusted."""

    def reference(x: np.ndarray, out: np.ndarray) -> None:
        out[:] = np.fft.rfft(x)
        out[1] += 1.0  # "the public rfft" now disagrees with the ufunc by one bin

    monkeypatch.setattr(_fft, "_public_rfft", reference)
    assert planned_rfft(320) is reference


def test_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        planned_rfft(0)
