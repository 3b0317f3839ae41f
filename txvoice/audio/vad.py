"""
Voice activity detection: a per-frame speech classifier and a per-stream detector with
hysteresis that reports ``speech_start`` / ``speech_end`` in stream time.

The classifier is webrtcvad *and* a :class:`SpectralGate`.  webrtcvad alone calls loud noise
speech in every mode (white noise at -10 dBFS: 100 % of frames) and holds "speech" for 70-150 ms
after the last word (its internal hangover), which would make end-of-turn timing drift.  The
gate rejects a frame unless

* its level is above an absolute minimum and ``snr_db`` above an adaptive noise floor, and
* its spectrum is not flat: the spectral flatness (geometric / arithmetic mean of the power
  spectrum, 0..8 kHz) of white noise is about 0.56 (1st percentile 0.47 for 20 ms frames), of
  speech frames 0.001 median and 0.27 at the 99th percentile.

The noise floor follows the frame level down at once, creeps up slowly (1 dB/s), and snaps to
the mean level whenever the last 500 ms were stationary (standard deviation of the frame level
below 2 dB -- measured: white noise 0.4-0.7 dB, pink noise up to 1.8 dB, running speech 3 dB or
more), so any steady noise stops counting as speech half a second after it starts.

The spectrum is only computed when the level leaves the answer open.  Below the floor (or the
absolute minimum) the level decides "no" alone, and so does webrtcvad saying "no".  Far above
the floor the level cannot decide "yes" alone: fricatives and noise bursts are rejected by their
flatness 39-81 dB above a silent floor (on the benchmark's espeak-ng corpus 30 of the 779 frames
that reach the spectrum), and white noise from silence would start speech.  So a frame skips the
spectrum only when it continues a clearly tonal frame: at least ``CLEAR_DB`` above the floor,
within ``CONTINUE_DB`` of the level of the last frame whose spectrum was measured and tonal
(flatness at most ``TONAL_FLATNESS``), with every frame between them accepted, and at most
``MAX_SKIPS`` in a row.  On the benchmark corpus that skips 1 FFT in 3 and changes no decision;
``tests/audio/test_vad.py`` compares the decisions with and without the skip on the same audio.

One ``threshold`` in 0..1 (S1 ``vad_threshold``, S4 ``vadThreshold``; higher is stricter) sets
both the webrtcvad aggressiveness and the gate, see :func:`gate_params`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import _webrtcvad  # the C module: webrtcvad.Vad.is_speech takes len(buf) as bytes, wrong for int16 arrays
import numpy as np
import webrtcvad
from zope.interface import Attribute, Interface, implementer

from txvoice.audio._fft import planned_rfft
from txvoice.audio.frames import FRAME_MS, frame_samples

__all__ = [
    "VAD_RATES",
    "ISpeechClassifier",
    "GateParams",
    "gate_params",
    "SpectralGate",
    "WebRtcClassifier",
    "SpeechStarted",
    "SpeechStopped",
    "VoiceActivityDetector",
]

#: Sample rates webrtcvad accepts.
VAD_RATES: frozenset[int] = frozenset({8000, 16000, 32000, 48000})

_SILENCE_DB = -100.0  # level reported for digital silence; the floor never goes below it
_FULL_SCALE_SQUARED_INV = 2.0**-30  # int16 full scale 32768 = 2**15, squared
#: A frame this far above the floor (dB) may continue a tonal frame without its own spectrum ...
CLEAR_DB = 20.0
#: ... when its level is within this of that frame's (dB) ...
CONTINUE_DB = 3.0
#: ... whose flatness was at most this (speech's median is 0.001, the limit 0.25-0.45) ...
TONAL_FLATNESS = 0.05
#: ... and at most this many frames in a row (the spectrum is measured at least every 4th frame).
MAX_SKIPS = 3


class ISpeechClassifier(Interface):
    """Says whether one fixed-size frame is speech; one instance per stream (it keeps state)."""

    sample_rate = Attribute("Sample rate (Hz) of the frames.")
    frame_size = Attribute("Samples per frame.")

    def classify(frame) -> bool:
        """Return whether the 1-D int16 ``frame`` (exactly ``frame_size`` samples) is speech."""

    def reset() -> None:
        """Forget all adaptation, as for a new stream."""


@dataclass(frozen=True, slots=True)
class GateParams:
    """What one ``threshold`` means for webrtcvad and for the :class:`SpectralGate`."""

    aggressiveness: int
    snr_db: float
    max_flatness: float
    min_level_db: float


def gate_params(threshold: float) -> GateParams:
    """
    Map ``threshold`` (0 = most sensitive, 1 = strictest; 0.5 is the default) onto webrtcvad's
    aggressiveness 0-3 (quarters of the range) and the gate: level above the noise floor
    2..8 dB (5 dB at 0.5 measured the best recall without false alarms in pink noise at 5 dB
    SNR), maximum spectral flatness 0.45..0.25, absolute minimum level -70..-50 dBFS.
    """
    if not 0.0 <= threshold <= 1.0 or math.isnan(threshold):
        raise ValueError(f"threshold must be within 0..1, not {threshold}")
    return GateParams(
        aggressiveness=min(3, int(threshold * 4)),
        snr_db=2.0 + 6.0 * threshold,
        max_flatness=0.45 - 0.2 * threshold,
        min_level_db=-70.0 + 20.0 * threshold,
    )


class SpectralGate:
    """
    Energy-over-adaptive-floor and spectral-flatness test for one stream (see the module doc).

    All scratch arrays are allocated here; :meth:`accept` allocates none.  After each call the
    frame's features are left in ``level_db``, ``flatness`` and ``floor_db`` for inspection
    (``flatness`` is NaN when the spectrum was not computed).  ``skips=False`` computes the
    spectrum whenever the level does not decide "no" (the decisions are the same; tests compare
    them); ``skipped`` counts the frames accepted without it.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        frame_size: int = 320,
        params: GateParams | None = None,
        *,
        stationary_ms: float = 500.0,
        stationary_db: float = 2.0,
        rise_db_per_s: float = 1.0,
        band_hz: float = 8000.0,
        skips: bool = True,
    ) -> None:
        self.skips = skips
        self.skipped = 0
        self.sample_rate = sample_rate
        self.frame_size = frame_size
        self.params = params or gate_params(0.5)
        frame_s = frame_size / sample_rate
        self._rise = rise_db_per_s * frame_s
        self._stationary_var = stationary_db**2
        # The level history is a list of floats: scalar reads and writes on a numpy array cost
        # more than the arithmetic they feed.
        self._ring = [0.0] * max(2, round(stationary_ms / 1000 / frame_s))
        self._x = np.empty(frame_size, dtype=np.float32)
        # Samples are not scaled to +-1 before the level (scaling by 2**-15 is exact, so it is done
        # on the sum) and the window carries that factor for the spectrum: same values, one call less.
        self._window = np.hanning(frame_size).astype(np.float32) * np.float32(1.0 / 32768.0)
        self._spec = np.empty(frame_size // 2 + 1, dtype=np.complex64)
        self._rfft = planned_rfft(frame_size)
        top = min(frame_size // 2, int(band_hz * frame_size / sample_rate))
        # The band (DC skipped) as interleaved (re, im) float32 pairs, squared into ``_squares``
        # whose even and odd views add up to the power: three ufunc calls and no per-frame views.
        self._band_floats = self._spec.view(np.float32)[2 : 2 * (top + 1)]
        self._squares = np.empty(2 * top, dtype=np.float32)
        self._squares_re = self._squares[0::2]
        self._squares_im = self._squares[1::2]
        self._power = np.empty(top, dtype=np.float32)
        self._tmp = np.empty(top, dtype=np.float32)
        self._ones = np.ones(top, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        self._ring[:] = [0.0] * len(self._ring)
        self._count = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self.floor_db = _SILENCE_DB
        self.level_db = _SILENCE_DB
        self.flatness = 1.0
        self._tonal_level: float | None = None  # level of the last measured tonal frame, if continued
        self._run = 0  # frames accepted in a row without their spectrum

    def _track_floor(self, level: float) -> None:
        ring = self._ring
        i = self._count % len(ring)
        old = ring[i]
        ring[i] = level
        self._count += 1
        if self._count % len(ring) == 0:
            # Recompute the running sums once per revolution so rounding cannot accumulate.
            self._sum = math.fsum(ring)
            self._sumsq = math.fsum([v * v for v in ring])
        else:
            self._sum += level - old
            self._sumsq += level * level - old * old
        if self._count >= len(ring):
            mean = self._sum / len(ring)
            if self._sumsq / len(ring) - mean * mean < self._stationary_var:
                self.floor_db = mean
                return
        if level < self.floor_db:
            self.floor_db = level
        else:
            self.floor_db += self._rise

    def track(self, frame: np.ndarray) -> None:
        """Only update the level and noise floor with ``frame`` (as :meth:`accept` does), deciding nothing."""
        x = self._x
        np.copyto(x, frame)
        mean_square = float(np.vdot(x, x)) * _FULL_SCALE_SQUARED_INV / len(x)
        level = 10.0 * math.log10(mean_square) if mean_square > 1e-10 else _SILENCE_DB
        self.level_db = level
        self._track_floor(level)
        self._tonal_level = None

    def accept(self, frame: np.ndarray, spectral: bool = True) -> bool:
        """
        Update the noise floor with ``frame`` and return whether it may be speech.  With
        ``spectral`` false only the level is tested (the FFT is most of the cost; a caller that
        already knows the answer is "no" skips it).
        """
        x = self._x
        np.copyto(x, frame)  # copy-cast: a mixed-type ufunc allocates a cast buffer
        mean_square = float(np.vdot(x, x)) * _FULL_SCALE_SQUARED_INV / len(x)
        level = 10.0 * math.log10(mean_square) if mean_square > 1e-10 else _SILENCE_DB
        self.level_db = level
        self._track_floor(level)
        p = self.params
        margin = level - self.floor_db
        if level < p.min_level_db or margin < p.snr_db:
            self.flatness = float("nan")  # not computed: the level already decides
            self._tonal_level = None
            return False
        if not spectral:
            self.flatness = float("nan")
            self._tonal_level = None
            return True
        tonal = self._tonal_level
        if (
            tonal is not None
            and self._run < MAX_SKIPS
            and margin >= CLEAR_DB
            and -CONTINUE_DB < level - tonal < CONTINUE_DB
            and self.skips
        ):
            # Continues a clearly tonal frame at about its level, far above the floor: accepted.
            self._run += 1
            self.skipped += 1
            self.flatness = float("nan")
            return True
        np.multiply(x, self._window, out=x)
        self._rfft(x, self._spec)
        power, tmp = self._power, self._tmp
        np.square(self._band_floats, out=self._squares)
        np.add(self._squares_re, self._squares_im, out=power)
        power += 1e-12
        # Sums as dot products with ones: .mean() costs ~5 µs of Python, ufunc.reduce a temporary.
        # np.vdot, not np.dot: np.dot lets go of the GIL around BLAS (see tests/audio/test_gil_discipline.py).
        ones = self._ones
        arithmetic = float(np.vdot(power, ones))
        np.log(power, out=tmp)
        flatness = self.flatness = math.exp(float(np.vdot(tmp, ones)) / len(tmp)) * len(power) / arithmetic
        self._run = 0
        self._tonal_level = level if flatness <= TONAL_FLATNESS else None
        return flatness <= p.max_flatness


@implementer(ISpeechClassifier)
class WebRtcClassifier:
    """webrtcvad and the :class:`SpectralGate` together: a frame is speech when both say so."""

    def __init__(self, sample_rate: int = 16000, frame_ms: int = 20, threshold: float = 0.5) -> None:
        if sample_rate not in VAD_RATES:
            raise ValueError(f"VAD sample rate must be one of {sorted(VAD_RATES)}, not {sample_rate}")
        if frame_ms not in FRAME_MS:
            raise ValueError(f"VAD frame_ms must be one of {sorted(FRAME_MS)}, not {frame_ms}")
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_size = frame_samples(sample_rate, frame_ms)
        self.params = gate_params(threshold)
        self.threshold = threshold
        self.gate = SpectralGate(sample_rate, self.frame_size, self.params)
        self._vad = webrtcvad.Vad(self.params.aggressiveness)
        self.webrtc = False  # webrtcvad's own decision on the last frame

    def classify(self, frame: np.ndarray) -> bool:
        if len(frame) != self.frame_size:
            raise ValueError(f"frame has {len(frame)} samples, expected {self.frame_size}")
        # Both always run, as each adapts to the stream frame by frame; the gate's spectrum is
        # only needed when webrtcvad says speech.
        webrtc = bool(_webrtcvad.process(self._vad._vad, self.sample_rate, frame, self.frame_size))
        self.webrtc = webrtc
        return self.gate.accept(frame, spectral=webrtc) and webrtc

    def reset(self) -> None:
        self._vad = webrtcvad.Vad(self.params.aggressiveness)
        self.gate.reset()
        self.webrtc = False


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began at stream time ``t_ms`` (reported a little later, once confirmed)."""

    t_ms: float
    kind: ClassVar[str] = "speech_start"


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Speech ended at stream time ``t_ms`` (reported ``hangover_ms`` later)."""

    t_ms: float
    kind: ClassVar[str] = "speech_end"


class VoiceActivityDetector:
    """
    Per-stream hysteresis over a classifier's frame decisions.

    Speech starts when at least ``min_speech_ms`` of the last ``2 * min_speech_ms`` were speech
    frames; :class:`SpeechStarted` carries the start of the first of them.  It ends after
    ``hangover_ms`` without a speech frame; :class:`SpeechStopped` carries the end of the last
    speech frame and is emitted exactly ``hangover_ms`` later (rounded up to a frame).  Times
    count samples from the start of the stream, never the wall clock.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        frame_ms: int = 20,
        threshold: float = 0.5,
        *,
        min_speech_ms: float = 60.0,
        hangover_ms: float = 300.0,
        classifier: ISpeechClassifier | None = None,
    ) -> None:
        self.classifier = classifier or WebRtcClassifier(sample_rate, frame_ms, threshold)
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_size = frame_samples(sample_rate, frame_ms)
        if (self.classifier.sample_rate, self.classifier.frame_size) != (sample_rate, self.frame_size):
            raise ValueError("the classifier must run at the detector's sample rate and frame size")
        self.hangover_ms = hangover_ms
        self._need = max(1, math.ceil(min_speech_ms / frame_ms - 1e-9))
        self._window = [False] * (2 * self._need)  # the last frames' decisions, a ring
        self.reset()

    def reset(self) -> None:
        self.classifier.reset()
        self._window[:] = [False] * len(self._window)
        self._voiced_in_window = 0
        self.frames = 0
        self.speaking = False
        self.is_speech = False  # the classifier's decision on the last frame
        self.speech_start_ms: float | None = None
        self.last_voice_end_ms: float | None = None

    @property
    def time_ms(self) -> float:
        """Stream time at the end of the last frame."""
        return self.frames * self.frame_ms

    @property
    def max_start_delay_ms(self) -> float:
        """How far back a :class:`SpeechStarted` can be dated from the frame that emits it."""
        return len(self._window) * self.frame_ms

    def process(self, frame: np.ndarray) -> SpeechStarted | SpeechStopped | None:
        """Classify one frame; return the event it triggers, if any."""
        voiced = bool(self.classifier.classify(frame))
        self.is_speech = voiced
        window = self._window
        slot = self.frames % len(window)
        self._voiced_in_window += voiced - window[slot]
        window[slot] = voiced
        self.frames += 1
        end_ms = self.frames * self.frame_ms
        if voiced:
            self.last_voice_end_ms = end_ms
        if not self.speaking:
            if self._voiced_in_window >= self._need:
                self.speaking = True
                # Back-date to the first speech frame still in the window.
                n = len(window)
                for age in range(n - 1, -1, -1):
                    if window[(self.frames - 1 - age) % n]:
                        break
                self.speech_start_ms = end_ms - (age + 1) * self.frame_ms
                return SpeechStarted(self.speech_start_ms)
        elif self.last_voice_end_ms is not None and end_ms - self.last_voice_end_ms >= self.hangover_ms:
            self.speaking = False
            return SpeechStopped(self.last_voice_end_ms)
        return None

    def finish(self) -> SpeechStopped | None:
        """End of stream: report the end of speech still in progress."""
        if not self.speaking or self.last_voice_end_ms is None:
            return None
        self.speaking = False
        return SpeechStopped(self.last_voice_end_ms)
