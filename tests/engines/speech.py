"""
Speech made at test time with ``espeak-ng`` (and ``sox`` to resample), for the engine tests and the
benchmark.  WAVs live in a temporary directory that is removed before returning: no audio is ever
written into the tree.  Loaded by file path (see ``conftest.py``) because ``tests/audio`` has its
own ``speech`` module.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (Debian package {name})")
    return path


def read_wav(path: str | Path) -> tuple[int, np.ndarray]:
    """Read a mono 16-bit WAV: ``(rate, int16 samples)``."""
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1, f"{path}: not mono 16-bit"
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def speak_wav(text: str, path: str | Path, rate: int = 16000, voice: str = "en-us", wpm: int = 175,
              pad_ms: int = 0) -> Path:
    """Write ``text`` spoken by espeak-ng to a mono 16-bit WAV at ``rate``, with ``pad_ms`` of silence each side."""
    path = Path(path)
    raw = path.with_suffix(".espeak.wav")
    subprocess.run([_tool("espeak-ng"), "-v", voice, "-s", str(wpm), "-w", str(raw), "--stdin"],
                   input=text.encode(), check=True, capture_output=True)
    effects = ["rate", "-h", str(rate)]
    if pad_ms:
        effects += ["pad", f"{pad_ms / 1000}", f"{pad_ms / 1000}"]
    subprocess.run([_tool("sox"), str(raw), "-b", "16", "-c", "1", str(path), *effects], check=True, capture_output=True)
    raw.unlink()
    return path


@functools.lru_cache(maxsize=128)
def _speak(text: str, rate: int, voice: str, wpm: int, pad_ms: int) -> bytes:
    with tempfile.TemporaryDirectory(prefix="txvoice-engines-") as tmp:
        got, pcm = read_wav(speak_wav(text, Path(tmp) / "speech.wav", rate, voice, wpm, pad_ms))
        assert got == rate
        return pcm.tobytes()


def speak(text: str, rate: int = 16000, voice: str = "en-us", wpm: int = 175, pad_ms: int = 100) -> np.ndarray:
    """``text`` spoken by espeak-ng: mono int16 samples at ``rate`` (cached per arguments)."""
    return np.frombuffer(_speak(text, rate, voice, wpm, pad_ms), dtype=np.int16)


def frames(pcm: np.ndarray, rate: int = 16000, ms: int = 20):
    """Split ``pcm`` into ``ms``-long frames, as a client would stream it."""
    step = rate * ms // 1000
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]
