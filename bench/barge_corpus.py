"""
The false-barge-in corpus: non-speech a caller's microphone hears while a reply plays, made by code.

Nothing here is committed audio: pink noise, coughs and clicks are numpy with fixed seeds, babble
is several espeak-ng voices mixed far down (synthesized at run time into memory), and the reply's
own echo is made from the reply itself (:func:`echo_of`; ``bench/turns.py --false-barge`` mixes
what the client receives back into what it sends, 40 ms later, at -20 dB).

Levels are dBFS RMS (int16 full scale = 0 dBFS).  The utterance that barges in (espeak-ng
"Hello there." at 160 wpm) is about -21 dBFS RMS over its voiced part, so babble at -45 dBFS is
24 dB under a caller's own voice.

:func:`clips` gives ``(name, int16 samples at 16 kHz)`` for every item; :func:`count_onsets`
runs a detector over a clip offline (the tests and the quick look use it; the bench counts
``barge_in`` events at a real client).
"""

from __future__ import annotations

import functools
import io
import math
import shutil
import subprocess
import wave
from collections.abc import Callable, Iterable

import numpy as np

RATE = 16000

#: (name, kind, level dBFS).  Several levels per noise; coughs and clicks as a caller makes them.
ITEMS: tuple[tuple[str, str, float], ...] = (
    ("pink -50 dBFS", "pink", -50.0),
    ("pink -40 dBFS", "pink", -40.0),
    ("pink -30 dBFS", "pink", -30.0),
    ("babble -55 dBFS", "babble", -55.0),
    ("babble -45 dBFS", "babble", -45.0),
    ("babble -38 dBFS", "babble", -38.0),
    ("coughs -25 dBFS", "cough", -25.0),
    ("clicks -20 dBFS", "click", -20.0),
    ("echo -20 dB", "echo", -20.0),
)

#: Voices for babble (espeak-ng's own voices), each with its own sentence and speed.
BABBLE_VOICES: tuple[tuple[str, int, str], ...] = (
    ("en-us", 150, "I told him we would be there by eight, but the traffic was terrible again."),
    ("en-gb", 170, "Could you pass me the salt and the pepper, please, and the bread as well?"),
    ("en-us+f3", 140, "She said the meeting moved to Thursday afternoon after lunch."),
    ("de", 160, "Wir haben gestern lange über das neue Projekt gesprochen."),
    ("fr", 165, "Nous allons au marché demain matin pour acheter des légumes."),
    ("es", 155, "El tren de la tarde llega siempre con diez minutos de retraso."),
)


def dbfs(x: np.ndarray) -> float:
    """RMS level of int16-scaled samples in dBFS."""
    ms = float(np.mean(np.square(x.astype(np.float64)))) / 32768.0**2
    return 10.0 * math.log10(ms) if ms > 1e-12 else -120.0


def at_level(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    """``x`` (any float scale) scaled to ``level_dbfs`` RMS, as float64 in int16 units."""
    x = x.astype(np.float64)
    rms = math.sqrt(float(np.mean(np.square(x)))) or 1.0
    return x * (32768.0 * 10 ** (level_dbfs / 20.0) / rms)


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def pink(n: int, seed: int = 1) -> np.ndarray:
    """1/f noise (FFT-shaped white Gaussian noise), unit RMS."""
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / (np.std(x) or 1.0)


@functools.lru_cache(maxsize=64)
def espeak(text: str, voice: str = "en-us", wpm: int = 160, rate: int = RATE) -> np.ndarray:
    """espeak-ng speech at ``rate`` (int16), synthesized into memory (``--stdout``)."""
    import soxr

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (scripts/test.sh installs it)")
    wav = subprocess.run([exe, "-v", voice, "-s", str(wpm), "--stdout", text], check=True,
                         capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        src = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    out = soxr.resample(pcm, src, rate, quality="HQ")
    out = to_int16(out)
    out.flags.writeable = False
    return out


def babble(n: int, seed: int = 2) -> np.ndarray:
    """Six espeak-ng voices talking at once (each looped, starting at its own offset), unit RMS."""
    rng = np.random.default_rng(seed)
    mix = np.zeros(n, dtype=np.float64)
    for voice, wpm, text in BABBLE_VOICES:
        s = espeak(text, voice, wpm).astype(np.float64)
        s = s / (math.sqrt(float(np.mean(np.square(s)))) or 1.0)
        reps = np.tile(s, n // len(s) + 2)
        off = int(rng.integers(0, len(s)))
        mix += reps[off:off + n]
    return mix / (np.std(mix) or 1.0)


def _lowpass(x: np.ndarray, cutoff_hz: float, rate: int = RATE) -> np.ndarray:
    a = math.exp(-2.0 * math.pi * cutoff_hz / rate)
    y = np.empty_like(x)
    acc = 0.0
    for i, v in enumerate(x):  # a one-pole filter over short bursts: cheap enough
        acc = (1.0 - a) * v + a * acc
        y[i] = acc
    return y


def cough(n: int, seed: int = 3, every_s: float = 1.1) -> np.ndarray:
    """
    Synthetic coughs: a 30 ms explosive burst of band-limited noise, then a 200 ms voiceless tail
    decaying exponentially, with a slight chest resonance; one every ``every_s``.  Unit-RMS scale
    over the coughs (the silence between them is exact zero).
    """
    rng = np.random.default_rng(seed)
    x = np.zeros(n, dtype=np.float64)
    length = int(0.23 * RATE)
    t = np.arange(length) / RATE
    start = int(0.15 * RATE)
    while start + length < n:
        noise = rng.standard_normal(length)
        # Band-limit (a difference of low passes: ~250 Hz-3 kHz) and add a 400 Hz chest resonance.
        band = _lowpass(noise, 3000.0) - _lowpass(noise, 250.0)
        band += 0.3 * np.sin(2 * np.pi * (380.0 + 40.0 * rng.random()) * t) * rng.standard_normal(length) * 0.5
        env = np.where(t < 0.03, 1.0, np.exp(-(t - 0.03) / 0.06))
        env *= np.minimum(1.0, t / 0.004)  # 4 ms attack
        x[start:start + length] += band * env
        start += int(every_s * RATE * (0.8 + 0.4 * rng.random()))
    active = x[np.abs(x) > 0]
    return x / (np.std(active) if active.size else 1.0)


def clicks(n: int, seed: int = 4, per_s: float = 6.0) -> np.ndarray:
    """Clicks (a mouse, a pen, a keyboard): 3 ms decaying impulses at random times, ``per_s`` a second."""
    rng = np.random.default_rng(seed)
    x = np.zeros(n, dtype=np.float64)
    length = int(0.003 * RATE)
    decay = np.exp(-np.arange(length) / (0.0006 * RATE))
    for _ in range(int(per_s * n / RATE)):
        at = int(rng.integers(0, n - length))
        x[at:at + length] += rng.choice((-1.0, 1.0)) * decay * rng.standard_normal(length).clip(-3, 3)
    active = x[np.abs(x) > 0]
    return x / (np.std(active) if active.size else 1.0)


def make(kind: str, level: float, n: int) -> np.ndarray:
    """One corpus clip of ``n`` samples (int16); ``echo`` is digital silence here (added by the runner)."""
    if kind == "pink":
        return to_int16(at_level(pink(n), level))
    if kind == "babble":
        return to_int16(at_level(babble(n), level))
    if kind == "cough":
        return to_int16(cough(n) * 32768.0 * 10 ** (level / 20.0))
    if kind == "click":
        return to_int16(clicks(n) * 32768.0 * 10 ** (level / 20.0))
    if kind == "echo":
        return np.zeros(n, dtype=np.int16)
    raise ValueError(f"unknown corpus kind {kind!r}")


def clips(seconds: float = 3.0, items: Iterable[tuple[str, str, float]] = ITEMS) -> list[tuple[str, str, float, np.ndarray]]:
    """``(name, kind, level, samples)`` of every corpus item, ``seconds`` long at 16 kHz."""
    n = int(seconds * RATE)
    return [(name, kind, level, make(kind, level, n)) for name, kind, level in items]


def echo_of(reply: np.ndarray, n: int, gain_db: float = -20.0, delay_ms: float = 40.0) -> np.ndarray:
    """The reply as the microphone hears it back: ``gain_db`` down, ``delay_ms`` late, ``n`` samples (float)."""
    out = np.zeros(n, dtype=np.float64)
    d = int(delay_ms * RATE / 1000)
    k = max(0, min(len(reply), n - d))
    out[d:d + k] = reply[:k].astype(np.float64) * 10 ** (gain_db / 20.0)
    return out


def count_onsets(detect: Callable[[np.ndarray], bool], clip: np.ndarray, frame: int = 320,
                 rearm: Callable[[], None] | None = None) -> int:
    """
    Frames of ``clip`` at which ``detect`` fired (offline).  After each firing ``rearm`` (if any)
    resets the detector, as a barge-in ends the reply and the next reply starts a new watch.
    """
    fired = 0
    for i in range(0, len(clip) - frame + 1, frame):
        if detect(clip[i:i + frame]):
            fired += 1
            if rearm is not None:
                rearm()
    return fired
