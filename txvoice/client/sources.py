"""
Where the client's audio comes from: a WAV file, a numpy array, or any live source.

A source is pulled by the streaming helper once per frame period; a live source (a microphone,
a pipe) answers with whatever it has, possibly nothing yet, so the same pacing loop serves both.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from zope.interface import Attribute, Interface, implementer

__all__ = ["ArraySource", "IAudioSource", "WavSource"]


class IAudioSource(Interface):
    """Signed 16-bit PCM, interleaved, pulled in frames."""

    sample_rate = Attribute("Samples per second per channel.")
    channels = Attribute("1 or 2.")
    duration_ms = Attribute("Total length in ms when known (files), else None (live sources).")

    def read(frames: int) -> np.ndarray | None:
        """
        Up to ``frames`` frames (samples per channel) as a 1-D ``numpy.int16`` array of
        interleaved samples: fewer, or none, when a live source has nothing more yet; ``None``
        at the end of the audio.
        """

    def close() -> None:
        """Release the source (files, devices)."""


@implementer(IAudioSource)
class ArraySource:
    """A source over PCM already in memory."""

    def __init__(self, pcm: np.ndarray, sample_rate: int, channels: int = 1) -> None:
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError("expected a 1-D int16 array of interleaved samples")
        if channels not in (1, 2) or len(pcm) % channels:
            raise ValueError("channels must be 1 or 2 and divide the sample count")
        self.pcm = pcm
        self.sample_rate = sample_rate
        self.channels = channels
        self.duration_ms = 1000.0 * len(pcm) / channels / sample_rate
        self._pos = 0

    def read(self, frames: int) -> np.ndarray | None:
        if self._pos >= len(self.pcm):
            return None
        n = frames * self.channels
        out = self.pcm[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def close(self) -> None:
        pass


@implementer(IAudioSource)
class WavSource:
    """A 16-bit PCM WAV file, read as it is streamed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._wav = wave.open(str(self.path), "rb")
        try:
            if self._wav.getsampwidth() != 2:
                raise ValueError(f"{self.path}: only 16-bit PCM WAV files are supported")
            self.channels = self._wav.getnchannels()
            if self.channels not in (1, 2):
                raise ValueError(f"{self.path}: {self.channels} channels; only mono or stereo")
            self.sample_rate = self._wav.getframerate()
            self.frames = self._wav.getnframes()
        except Exception:
            self._wav.close()
            raise
        self.duration_ms = 1000.0 * self.frames / self.sample_rate

    def read(self, frames: int) -> np.ndarray | None:
        data = self._wav.readframes(frames)
        if not data:
            return None
        return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)

    def close(self) -> None:
        self._wav.close()
