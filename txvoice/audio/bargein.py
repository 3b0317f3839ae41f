"""
Barge-in rules: when speech over a playing reply interrupts it.

* ``frames3`` (the default until issue 27): the turn VAD's own speech start -- at least 60 ms of the last 120 ms
  voiced in 20 ms frames (:class:`txvoice.audio.vad.VoiceActivityDetector`), i.e. three voiced
  frames: ~41 ms after the first voiced frame arrives (``bench/turns.py``).
* ``fast`` (the default): :class:`FastOnset`, a second classifier on 10 ms frames (webrtcvad and the
  :class:`~txvoice.audio.vad.SpectralGate`, both at 10 ms) that fires on ``need`` (2)
  consecutive voiced 10 ms frames -- 20 ms of speech, often inside the first voiced packet -- when
  the 20 ms VAD is not already in speech, and then waits for ``rearm_ms`` without a voiced 10 ms
  frame (and for that VAD's speech end) before it may fire again.  Its gate asks 3 dB more over
  the noise floor than the 20 ms one and lets the floor snap to noise within 3 dB (10 ms levels
  vary more).

The fast rule is only needed while a reply is playing or queued (the channel decides barge-in only
then): the channel tells the stream's worker through its queue (:meth:`StreamIngest.replying`),
and while idle :meth:`FastOnset.push` only keeps the gate's 10 ms level and noise floor current
(no webrtcvad, no spectrum), so that the floor is right the moment a reply starts (issue 26).

Either rule only decides barge-in; turns are still cut by the 20 ms VAD.  See doc/configuration.md
(``--barge-in-rule``) for what each measured on the false-barge-in corpus.
"""

from __future__ import annotations

import math

import numpy as np

from txvoice.audio.frames import frame_samples
from txvoice.audio.vad import GateParams, SpectralGate, SpeechStarted, WebRtcClassifier

__all__ = ["RULES", "DEFAULT_RULE", "FastOnset"]

#: Barge-in rule names (``--barge-in-rule``, stream option ``barge_in_rule``).
RULES: tuple[str, ...] = ("frames3", "fast")
DEFAULT_RULE = "fast"
#: The fast rule's margin over the noise floor beyond the 20 ms gate's, and its stationarity band.
EXTRA_SNR_DB = 3.0
STATIONARY_DB = 3.0


class FastOnset:
    """
    Speech onset on 10 ms frames for barge-in (one per stream, on its worker; see the module doc).

    :meth:`push` takes the stream's frames (any whole number of 10 ms) and returns a
    :class:`SpeechStarted` dated to the first of the consecutive voiced 10 ms frames, or ``None``.
    """

    SUB_MS = 10

    def __init__(self, sample_rate: int = 16000, threshold: float = 0.5, *, need: int = 2,
                 rearm_ms: float = 300.0, extra_snr_db: float = EXTRA_SNR_DB,
                 stationary_db: float = STATIONARY_DB) -> None:
        self.sample_rate = sample_rate
        self.classifier = c = WebRtcClassifier(sample_rate, self.SUB_MS, threshold)
        p = c.params
        # A 10 ms frame's level varies more than a 20 ms frame's (pink noise: ~2.6 dB standard
        # deviation against ~1.8): a wider stationarity band lets the floor snap to steady noise,
        # and a higher margin over it keeps the noise's own fluctuations from passing.
        c.gate = SpectralGate(sample_rate, c.frame_size,
                              GateParams(p.aggressiveness, p.snr_db + extra_snr_db, p.max_flatness, p.min_level_db),
                              stationary_db=stationary_db)
        self.sub = frame_samples(sample_rate, self.SUB_MS)
        self.need = max(1, need)
        self._rearm = max(1, math.ceil(rearm_ms / self.SUB_MS))
        #: Whether a reply is playing or queued (barge-in possible): only then is the onset classified.
        self.active = True
        self.reset()

    def reset(self) -> None:
        self.classifier.reset()
        self.frames = 0  # 10 ms frames seen
        self.run = 0  # consecutive voiced 10 ms frames up to the last
        self.quiet = self._rearm  # 10 ms frames since the last voiced one
        self.armed = True

    def set_active(self, active: bool) -> None:
        """
        A reply started (``True``) or the last one ended (``False``).  While inactive :meth:`push`
        only tracks the gate's level and floor; on activation the onset starts afresh (no run,
        armed unless the 20 ms VAD is in speech, which :meth:`push` still checks).
        """
        if active and not self.active:
            self.run = 0
            self.quiet = self._rearm
            self.armed = True
        self.active = active

    def push(self, frame: np.ndarray, speaking: bool = False) -> SpeechStarted | None:
        """
        ``speaking``: the stream's 20 ms VAD was already in speech before this frame -- speech that
        is going on (babble the VAD never hears end, a user already talking) starts nothing, as in
        the ``frames3`` rule; the onset only counts where that VAD had found the speech over.
        """
        sub = self.sub
        if len(frame) % sub:
            raise ValueError(f"frame has {len(frame)} samples, not a multiple of {sub}")
        if not self.active:
            # Nothing can be barged into: keep the noise floor current, skip the classifier.
            track = self.classifier.gate.track
            for i in range(0, len(frame), sub):
                track(frame[i:i + sub])
            self.frames += len(frame) // sub
            return None
        fired: SpeechStarted | None = None
        classify = self.classifier.classify
        for i in range(0, len(frame), sub):
            voiced = classify(frame[i:i + sub])
            self.frames += 1
            if voiced:
                self.run += 1
                self.quiet = 0
            else:
                self.run = 0
                self.quiet += 1
                if self.quiet >= self._rearm and not speaking:
                    self.armed = True
            if speaking:
                self.armed = False
            elif self.armed and self.run >= self.need and fired is None:
                self.armed = False
                fired = SpeechStarted((self.frames - self.run) * self.SUB_MS)
        return fired
