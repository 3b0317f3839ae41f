"""
Fixtures for the audio tests: real speech made at test time.

Speech comes from ``espeak-ng``, is resampled with ``sox`` and, for WebM, muxed by ``ffmpeg``
(Debian packages espeak-ng, sox, ffmpeg), all in temporary directories: no audio is committed.
A test that needs a missing tool fails with the tool's name: scripts/test.sh installs them all.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

SENTENCE = (
    "The quick brown fox jumps over the lazy dog. "
    "Real time voice needs robust codecs, even when packets are lost."
)


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (apt-get install {tool}; scripts/test.sh does it)")
    return path


def _run(args: list[str]) -> bytes:
    return subprocess.run(args, check=True, capture_output=True, timeout=120).stdout


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WAV of espeak-ng speech (22.05 kHz mono, about 6 s)."""
    espeak = _require("espeak-ng")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    _run([espeak, "-v", "en-us", "-s", "160", "-w", str(path), SENTENCE])
    return path


@pytest.fixture(scope="session")
def speech(speech_wav: Path) -> Callable[[int], np.ndarray]:
    """``speech(rate)``: the espeak sentence as mono int16 at ``rate``, resampled by sox."""
    sox = _require("sox")
    cache: dict[int, np.ndarray] = {}

    def make(rate: int) -> np.ndarray:
        if rate not in cache:
            args = [sox, "-G", str(speech_wav), "-b", "16", "-e", "signed-integer", "-t", "raw"]
            raw = _run(args + ["-r", str(rate), "-c", "1", "-", "gain", "-3"])
            pcm = np.frombuffer(raw, dtype="<i2").astype(np.int16)
            pcm.flags.writeable = False
            cache[rate] = pcm
        return cache[rate]

    return make


@pytest.fixture(scope="session")
def stereo_speech(speech: Callable[[int], np.ndarray]) -> Callable[[int], np.ndarray]:
    """``stereo_speech(rate)``: interleaved stereo whose channels differ (right: delayed, quieter)."""

    def make(rate: int) -> np.ndarray:
        left = speech(rate)
        right = np.concatenate([np.zeros(rate // 100, np.int16), left[: -(rate // 100)] // 2])
        return np.column_stack([left, right]).ravel()

    return make


@pytest.fixture(scope="session")
def sox_wav(speech_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., bytes]:
    """``sox_wav(rate, channels, *extra)``: the speech as a WAV file written by sox."""
    sox = _require("sox")
    directory = tmp_path_factory.mktemp("wav")

    def make(rate: int, channels: int = 1, *extra: str) -> bytes:
        path = directory / f"s{rate}_{channels}_{len(extra)}.wav"
        args = [sox, "-G", str(speech_wav), *extra, "-b", "16", "-e", "signed-integer"]
        _run(args + ["-r", str(rate), "-c", str(channels), str(path)])
        return path.read_bytes()

    return make


@pytest.fixture(scope="session")
def ffmpeg_webm(speech_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., bytes]:
    """
    ``ffmpeg_webm(channels=1, bitrate="32k", live=False)``: the speech encoded by ffmpeg with
    ``-c:a libopus -f webm``, written to a pipe (not seekable, like a live recorder);
    ``live=True`` adds ``-live 1 -cluster_size_limit 2000`` (many small Clusters).
    """
    ffmpeg = _require("ffmpeg")
    cache: dict[tuple, bytes] = {}

    def make(channels: int = 1, bitrate: str = "32k", live: bool = False, frame_ms: int = 20) -> bytes:
        key = (channels, bitrate, live, frame_ms)
        if key not in cache:
            args = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(speech_wav), "-ar", "48000"]
            args += ["-ac", str(channels), "-c:a", "libopus", "-b:a", bitrate, "-frame_duration", str(frame_ms)]
            if live:
                args += ["-live", "1", "-cluster_size_limit", "2000"]
            cache[key] = _run(args + ["-f", "webm", "pipe:1"])
        return cache[key]

    return make


@pytest.fixture(scope="session")
def ffmpeg_decode() -> Callable[[bytes, int, int], np.ndarray]:
    """``ffmpeg_decode(data, rate, channels)``: decode a whole file with ffmpeg (the reference)."""
    ffmpeg = _require("ffmpeg")

    def decode(data: bytes, rate: int, channels: int) -> np.ndarray:
        out = subprocess.run(
            [ffmpeg, "-nostdin", "-loglevel", "error", "-i", "pipe:0"]
            + ["-f", "s16le", "-ar", str(rate), "-ac", str(channels), "pipe:1"],
            input=data,
            check=True,
            capture_output=True,
            timeout=120,
        ).stdout
        return np.frombuffer(out, dtype="<i2").astype(np.int16)

    return decode


def aligned_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[float, int]:
    """
    Pearson correlation of ``a`` and ``b`` at the lag (``|lag| <= max_lag``, ``b`` delayed by
    ``lag`` samples) that maximizes it, found by FFT cross-correlation; returns (r, lag).
    """
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    n = len(a) + len(b)
    size = 1 << (n - 1).bit_length()
    xcorr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    lag = int(lags[np.argmax(xcorr[lags])])
    if lag >= 0:
        x, y = a, b[lag:]
    else:
        x, y = a[-lag:], b
    length = min(len(x), len(y))
    return float(np.corrcoef(x[:length], y[:length])[0, 1]), lag


@pytest.fixture(scope="session")
def correlate() -> Callable[..., tuple[float, int]]:
    """The :func:`aligned_correlation` helper, as a fixture (test modules cannot import conftest)."""
    return aligned_correlation


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets (sorted, deduplicated, clipped)."""
    cuts = sorted({p for p in points if 0 < p < len(data)})
    return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)])]


@pytest.fixture(scope="session")
def splitter() -> Callable[[bytes, list[int]], list[bytes]]:
    """The :func:`split_at` helper, as a fixture."""
    return split_at
