"""
Speech and noise fixtures for the signal-path tests, made at test time.

Speech comes from ``espeak-ng -w`` and is converted with ``sox`` inside a temporary directory
that is removed before the function returns, so no audio is ever written into the tree.  Noise
and mixing are done in numpy with a fixed seed, because a test needs an exact, repeatable SNR.
This is a plain module (not a conftest): tests ``import speech``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import pytest
from zope.interface import implementer

from txvoice.audio.vad import ISpeechClassifier

SENTENCE = "The quick brown fox jumps over the lazy dog."


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (scripts/test.sh installs it)")
    return path


def read_wav(path: str) -> tuple[int, np.ndarray]:
    """Read a 16-bit PCM WAV; return ``(rate, interleaved int16 samples)``."""
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: not 16-bit PCM")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
        return w.getframerate(), data


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> Path:
    """Write mono 16-bit ``pcm`` as a WAV at ``path`` (a test's temporary directory); the path."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


@functools.lru_cache(maxsize=32)
def _espeak(text: str, rate: int, channels: int, voice: str, wpm: int, pad_ms: tuple[int, int]) -> bytes:
    espeak = _require("espeak-ng")
    sox = _require("sox")
    tmp = tempfile.mkdtemp(prefix="txvoice-speech-")
    try:
        raw = os.path.join(tmp, "espeak.wav")
        out = os.path.join(tmp, "out.wav")
        subprocess.run([espeak, "-v", voice, "-s", str(wpm), "-w", raw, text], check=True, capture_output=True)
        effects = ["rate", "-h", str(rate)]
        if pad_ms != (0, 0):
            effects += ["pad", f"{pad_ms[0] / 1000}", f"{pad_ms[1] / 1000}"]
        if channels == 2:
            effects += ["remix", "1", "1"]
        subprocess.run(
            [sox, "-D", raw, "-b", "16", "-e", "signed-integer", "-c", str(channels), out, *effects],
            check=True,
            capture_output=True,
        )
        got_rate, pcm = read_wav(out)
        assert got_rate == rate
        return pcm.tobytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def speak(
    text: str = SENTENCE,
    rate: int = 16000,
    *,
    channels: int = 1,
    voice: str = "en-us",
    wpm: int = 160,
    pad_ms: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """
    Synthesize ``text`` as int16 PCM at ``rate`` (interleaved when ``channels`` is 2), with
    ``pad_ms`` (before, after) of digital silence added by sox.  Cached per arguments; each call
    returns a fresh, writable copy.
    """
    return np.frombuffer(_espeak(text, rate, channels, voice, wpm, tuple(pad_ms)), dtype=np.int16).copy()


def trim(pcm: np.ndarray, rate: int, floor_db: float = -50.0) -> np.ndarray:
    """Cut the leading and trailing part of ``pcm`` whose 10 ms envelope is below ``floor_db`` dBFS."""
    start, end = speech_span(pcm, rate, floor_db)
    return pcm[int(start * rate / 1000) : int(end * rate / 1000)].copy()


def envelope_db(pcm: np.ndarray, rate: int, block_ms: float = 10.0) -> np.ndarray:
    """RMS level (dBFS) of consecutive ``block_ms`` blocks."""
    n = int(rate * block_ms / 1000)
    blocks = pcm[: len(pcm) // n * n].astype(np.float64).reshape(-1, n) / 32768.0
    return 10 * np.log10(np.mean(blocks * blocks, axis=1) + 1e-12)


def speech_span(pcm: np.ndarray, rate: int, floor_db: float = -50.0, block_ms: float = 5.0) -> tuple[float, float]:
    """
    The true speech span of a *clean* signal in ms: from the start of the first to the end of the
    last ``block_ms`` block whose RMS is above ``floor_db`` dBFS.
    """
    env = envelope_db(pcm, rate, block_ms)
    active = np.flatnonzero(env > floor_db)
    if len(active) == 0:
        raise ValueError("no speech above the floor")
    return float(active[0] * block_ms), float((active[-1] + 1) * block_ms)


def silence(ms: float, rate: int = 16000) -> np.ndarray:
    """Digital silence."""
    return np.zeros(int(rate * ms / 1000), dtype=np.int16)


def noise(n: int, color: str = "white", *, seed: int = 1) -> np.ndarray:
    """``n`` samples of unit-RMS float64 noise: ``white`` or ``pink`` (1/f power, 20 Hz up)."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(n)
    if color == "white":
        out = white
    elif color == "pink":
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n)
        f[0] = f[1]
        spec /= np.sqrt(np.maximum(f, 20.0 / 16000))
        out = np.fft.irfft(spec, n)
    else:
        raise ValueError(f"unknown noise colour {color!r}")
    return out / np.sqrt(np.mean(out * out))


def noise_at(ms: float, dbfs: float, rate: int = 16000, color: str = "white", seed: int = 1) -> np.ndarray:
    """Noise with an RMS of ``dbfs`` dBFS as int16 (clipped)."""
    x = noise(int(rate * ms / 1000), color, seed=seed) * (32768.0 * 10 ** (dbfs / 20))
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def rms_db(x: np.ndarray) -> float:
    """RMS level in dBFS of int16-scaled samples."""
    x = np.asarray(x, dtype=np.float64) / 32768.0
    return float(10 * np.log10(np.mean(x * x) + 1e-20))


def mix(clean: np.ndarray, snr_db: float, color: str = "white", *, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """
    Add noise to ``clean`` so that the SNR over the whole signal is ``snr_db``.  Returns
    ``(noisy int16, the noise that was added as float64)``; the noisy signal is not clipped in
    practice for speech below about -10 dBFS RMS.
    """
    c = clean.astype(np.float64)
    n = noise(len(c), color, seed=seed) * np.sqrt(np.mean(c * c) / 10 ** (snr_db / 10))
    noisy = np.clip(np.round(c + n), -32768, 32767).astype(np.int16)
    return noisy, n


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """SNR of ``test`` against ``reference`` (same length), in dB."""
    r = np.asarray(reference, dtype=np.float64)
    e = np.asarray(test, dtype=np.float64) - r
    return float(10 * np.log10(np.sum(r * r) / max(np.sum(e * e), 1e-20)))


def scale_to(pcm: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale ``pcm`` so that its RMS is ``dbfs`` dBFS."""
    x = pcm.astype(np.float64) * 10 ** ((dbfs - rms_db(pcm)) / 20)
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def chunks(pcm: np.ndarray, size: int):
    """Yield consecutive views of at most ``size`` samples."""
    for i in range(0, len(pcm), size):
        yield pcm[i : i + size]


@implementer(ISpeechClassifier)
class ScriptedClassifier:
    """
    A VAD classifier that replays a script of decisions ('1' speech, '0' not, one per frame;
    '0' once the script runs out), so that hysteresis and turn logic can be tested to the frame.
    """

    def __init__(self, script: str, sample_rate: int = 16000, frame_size: int = 320) -> None:
        self.script = script
        self.sample_rate = sample_rate
        self.frame_size = frame_size
        self.i = 0

    def classify(self, frame) -> bool:
        self.i += 1
        return self.script[self.i - 1 : self.i] == "1"

    def reset(self) -> None:
        self.i = 0
