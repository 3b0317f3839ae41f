"""
Turn detection: which stretches of a stream's audio make up the user's turns.

One :class:`TurnDetector` per stream is fed fixed frames on the audio worker thread and returns
small event objects that the session forwards to the client:

* ``push_to_talk`` -- a turn is everything between :meth:`TurnDetector.start_turn` and
  :meth:`TurnDetector.end_turn`; the VAD only reports ``speech_start`` / ``speech_end``.
* ``continuous`` -- back-to-back segments of ``segment_ms``.
* ``voice_activity`` -- a turn opens when the VAD confirms speech (with ``prefix_padding_ms``
  of the audio before it) and closes ``silence_ms`` after the last speech frame.

In every mode a turn is cut at ``max_turn_ms`` (S4 ``MAX_AUDIO_DURATION``) and the next one
follows on.  All times are stream time in ms, counted in samples from the start of the stream.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np

from txvoice.audio.frames import frame_samples
from txvoice.audio.vad import ISpeechClassifier, SpeechStarted, SpeechStopped, VoiceActivityDetector
from txvoice.errors import ProtocolError, StateError

__all__ = [
    "TurnMode",
    "TurnSettings",
    "TurnStarted",
    "TurnEnded",
    "TurnEvent",
    "TurnDetector",
    "NO_AUDIO",
    "SpeechStarted",
    "SpeechStopped",
]


class TurnMode(str, enum.Enum):
    """How a stream is cut into turns."""

    PUSH_TO_TALK = "push_to_talk"
    CONTINUOUS = "continuous"
    VOICE_ACTIVITY = "voice_activity"

    @classmethod
    def parse(cls, value: "str | TurnMode") -> "TurnMode":
        """The mode named ``value``, or :class:`ProtocolError` for an unknown name."""
        try:
            return cls(value)
        except ValueError:
            raise ProtocolError(
                f"unknown turn mode {value!r}; expected one of {', '.join(m.value for m in cls)}",
                field="mode",
            ) from None


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """
    Client-settable turn parameters; invalid values raise :class:`ProtocolError` naming the field.

    ``segment_ms`` only matters in ``continuous`` mode (a segment longer than ``max_turn_ms`` is
    cut there, reason ``max_duration``), ``prefix_padding_ms`` only in ``voice_activity`` mode.
    """

    prefix_padding_ms: int = 300
    silence_ms: int = 500
    max_turn_ms: int = 180_000
    segment_ms: int = 5000
    vad_threshold: float = 0.5

    MIN_SILENCE_MS: ClassVar[int] = 200
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "prefix_padding_ms": (0, 5000),
        "silence_ms": (200, 10_000),
        "max_turn_ms": (1000, 3_600_000),
        "segment_ms": (100, 3_600_000),
        "vad_threshold": (0.0, 1.0),
    }

    def __post_init__(self) -> None:
        for name, (low, high) in self.LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ProtocolError(
                    f"{name} must be a number within {low}..{high}, not {value!r}", field=name
                )


@dataclass(frozen=True, slots=True, eq=False)
class TurnStarted:
    """
    Turn number ``turn`` began at stream time ``t_ms``.

    ``audio`` (int16, a copy) is the turn's audio so far, from ``t_ms`` up to and including the
    frame whose push returned this event (prefix padding included).
    """

    turn: int
    t_ms: float
    audio: np.ndarray
    kind: ClassVar[str] = "turn_start"


@dataclass(frozen=True, slots=True, eq=False)
class TurnEnded:
    """
    Turn number ``turn`` ended at stream time ``t_ms``; ``audio`` (int16, a copy) is all of it,
    from ``start_ms`` to ``t_ms``, or empty when the detector does not keep turn audio
    (``keep_audio=False``).  ``reason`` is one of :attr:`REASONS`.
    """

    turn: int
    t_ms: float
    start_ms: float
    reason: str
    audio: np.ndarray
    kind: ClassVar[str] = "turn_end"
    REASONS: ClassVar[frozenset[str]] = frozenset(
        {"silence", "max_duration", "segment", "explicit", "end_of_stream"}
    )


TurnEvent = Union[SpeechStarted, SpeechStopped, TurnStarted, TurnEnded]

_NO_EVENTS: tuple = ()

#: ``TurnEnded.audio`` of a detector that keeps no turn audio (read-only, shared).
NO_AUDIO = np.zeros(0, dtype=np.int16)
NO_AUDIO.flags.writeable = False


class _Ring:
    """The last ``capacity`` samples of a stream, for prefix padding."""

    def __init__(self, capacity: int) -> None:
        self.buf = np.zeros(max(capacity, 1), dtype=np.int16)
        self.total = 0

    def write(self, frame: np.ndarray) -> None:
        buf, n, cap = self.buf, len(frame), len(self.buf)
        if n > cap:
            self.total += n - cap  # only the last ``cap`` samples can be kept
            frame, n = frame[n - cap :], cap
        # Sample i of the stream lives at buf[i % cap].
        pos = self.total % cap
        end = pos + n
        if end <= cap:  # the common case: one copy, no empty slice assignment
            buf[pos:end] = frame
        else:
            first = cap - pos
            buf[pos:] = frame[:first]
            buf[: n - first] = frame[first:]
        self.total += n

    def read_into(self, out: np.ndarray, count: int) -> None:
        """Copy the last ``count`` samples (``count <= capacity``) into ``out[:count]``."""
        buf, cap = self.buf, len(self.buf)
        start = (self.total - count) % cap
        first = min(count, cap - start)
        out[:first] = buf[start : start + first]
        out[first:count] = buf[: count - first]


class TurnDetector:
    """
    Per-stream turn detection (see the module doc); not thread-safe, one worker at a time.

    :meth:`push` takes one frame of exactly ``frame_size`` int16 samples at ``sample_rate`` (from
    :class:`txvoice.audio.frames.FrameAssembler`) and returns the events it caused, in order;
    usually none.  Turns start and end on frame boundaries.  A consumer that streams a turn's
    audio sends ``TurnStarted.audio`` (which ends with the frame of that push), then each later
    frame up to and including the one whose push returned the ``TurnEnded``; ``TurnEnded.audio``
    holds the whole turn for consumers that do not stream.

    ``classifier`` replaces the default webrtcvad + gate frame classifier (see
    :class:`txvoice.audio.vad.ISpeechClassifier`); the VAD's hangover is ``silence_ms``.

    ``keep_audio=False`` is for consumers that stream each frame (the server does): the detector
    then keeps no copy of the open turn, so ``TurnEnded.audio`` is empty and a session costs no
    turn buffer (up to ``max_turn_ms`` of samples: 5.8 MB at the default 180 s) and no copy per
    frame.  ``TurnStarted.audio`` (the pre-roll) is there either way, unless ``pre_roll=False``
    too: for a consumer that uses no turn audio at all (turns only reported, not answered) the
    detector then keeps no history ring either (~14 KB a stream at the defaults: prefix padding and
    the VAD's confirmation window), so ``TurnStarted.audio`` is empty; every event's times are
    the same, as the ring's capacity still bounds how far back a turn can start.
    """

    def __init__(
        self,
        mode: str | TurnMode = TurnMode.VOICE_ACTIVITY,
        settings: TurnSettings | None = None,
        *,
        sample_rate: int = 16000,
        frame_ms: int = 20,
        classifier: ISpeechClassifier | None = None,
        keep_audio: bool = True,
        pre_roll: bool = True,
    ) -> None:
        if keep_audio and not pre_roll:
            raise ValueError("pre_roll=False needs keep_audio=False: a kept turn starts with its pre-roll")
        self.mode = TurnMode.parse(mode)
        self.keep_audio = keep_audio
        self.pre_roll = pre_roll
        self.settings = settings = settings or TurnSettings()
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.frame_size = frame_samples(sample_rate, frame_ms)
        # In voice_activity mode the VAD's speech_end is the turn end.
        self.vad = vad = VoiceActivityDetector(
            sample_rate,
            frame_ms,
            settings.vad_threshold,
            hangover_ms=settings.silence_ms,
            classifier=classifier,
        )
        ms = sample_rate / 1000
        self._prefix = round(settings.prefix_padding_ms * ms)
        self._max = max(2 * self.frame_size, math.floor(settings.max_turn_ms * ms))
        self._segment = math.ceil(settings.segment_ms * ms)
        if self.mode is TurnMode.VOICE_ACTIVITY:
            # The prefix before speech started, plus the frames the VAD needs to confirm it.
            history = self._prefix + round(vad.max_start_delay_ms * ms) + self.frame_size
        else:
            history = self.frame_size  # just the frame being pushed
        #: How far back (samples) a turn can start: the history's capacity, kept or not.
        self._history_len = max(history, 1)
        self._history: _Ring | None = _Ring(history) if pre_roll else None
        # The open turn's audio; allocated by the first turn (a silent stream never needs one).
        self._audio = NO_AUDIO
        self._len = 0  # samples in the open turn (kept in ``_audio`` when ``keep_audio``)
        self._samples = 0  # stream position, in samples
        self._turns = 0
        self._start = 0  # first sample of the open turn
        self._last_end = 0  # first sample after the last closed turn
        self.in_turn = False
        self._reopen = False  # push_to_talk: a max-duration cut keeps the button "held"

    # -- stream time -------------------------------------------------------------------------

    def _ms(self, samples: int) -> float:
        return samples * 1000 / self.sample_rate

    @property
    def time_ms(self) -> float:
        """Stream time at the end of the last frame pushed."""
        return self._ms(self._samples)

    # -- turn bookkeeping --------------------------------------------------------------------

    def _append(self, frame: np.ndarray) -> None:
        end = self._len + len(frame)
        if not self.keep_audio:
            self._len = end
            return
        if end > len(self._audio):
            grown = np.zeros(min(max(end, 2 * len(self._audio)), self._max), dtype=np.int16)
            grown[: self._len] = self._audio[: self._len]
            self._audio = grown
        self._audio[self._len : end] = frame
        self._len = end

    def _open(self, start: int) -> TurnStarted:
        """Open a turn whose audio runs from sample ``start`` up to now (taken from the history)."""
        # Never further back than the history holds, nor so far that the turn is already full.
        start = max(start, self._samples - self._history_len, self._samples - self._max + self.frame_size)
        self.in_turn = True
        self._reopen = False
        self._turns += 1
        self._start = start
        count = self._samples - start
        self._len = count
        history = self._history
        if history is None:
            return TurnStarted(self._turns, self._ms(start), NO_AUDIO)
        if not self.keep_audio:
            audio = np.empty(count, dtype=np.int16)
            history.read_into(audio, count)
            return TurnStarted(self._turns, self._ms(start), audio)
        if count > len(self._audio) or self._audio is NO_AUDIO:
            # Room for a second of speech at least, so a short turn does not grow by copies.
            size = max(count, 2 * len(self._audio), self.sample_rate)
            self._audio = np.zeros(min(size, self._max), dtype=np.int16)
        history.read_into(self._audio, count)
        return TurnStarted(self._turns, self._ms(start), self._audio[:count].copy())

    def _close(self, reason: str) -> TurnEnded:
        self.in_turn = False
        self._last_end = self._samples
        audio = self._audio[: self._len].copy() if self.keep_audio else NO_AUDIO
        return TurnEnded(self._turns, self._ms(self._samples), self._ms(self._start), reason, audio)

    # -- the API -----------------------------------------------------------------------------

    def push(self, frame: np.ndarray) -> Sequence[TurnEvent]:
        """Process one frame; return the events it caused (an empty tuple when none)."""
        if len(frame) != self.frame_size:
            raise ValueError(f"frame has {len(frame)} samples, expected {self.frame_size}")
        vad_event = self.vad.process(frame)
        frame_start = self._samples
        self._samples += self.frame_size
        if self._history is not None:
            self._history.write(frame)
        events: list[TurnEvent] | None = [vad_event] if vad_event is not None else None

        if self.in_turn:
            self._append(frame)
        else:
            start = self._start_of_new_turn(vad_event, frame_start)
            if start is not None:
                events = events or []
                events.append(self._open(start))

        if self.in_turn:
            reason = None
            if self.mode is TurnMode.VOICE_ACTIVITY and isinstance(vad_event, SpeechStopped):
                reason = "silence"
            elif self.mode is TurnMode.CONTINUOUS and self._len >= self._segment:
                reason = "segment"
            elif self._len + self.frame_size > self._max:
                reason = "max_duration"
                self._reopen = self.mode is TurnMode.PUSH_TO_TALK
            if reason is not None:
                events = events or []
                events.append(self._close(reason))
        return events or _NO_EVENTS

    def _start_of_new_turn(self, vad_event: object, frame_start: int) -> int | None:
        """The first sample of a turn that opens with the frame just pushed, or ``None``."""
        mode = self.mode
        if mode is TurnMode.CONTINUOUS or (mode is TurnMode.PUSH_TO_TALK and self._reopen):
            return frame_start
        if mode is TurnMode.VOICE_ACTIVITY and self.vad.speaking:
            if isinstance(vad_event, SpeechStarted):
                speech_start = round(vad_event.t_ms * self.sample_rate / 1000)
                return max(0, speech_start - self._prefix, self._last_end)
            if self.vad.is_speech:
                # Speech went on after a max_duration or explicit cut: resume with this frame.
                return max(frame_start - self._prefix, self._last_end)
        return None

    def start_turn(self) -> Sequence[TurnEvent]:
        """``push_to_talk``: open a turn now.  :class:`StateError` in other modes or when one is open."""
        if self.mode is not TurnMode.PUSH_TO_TALK:
            raise StateError(f"turns are started explicitly only in push_to_talk mode, not {self.mode.value}")
        if self.in_turn or self._reopen:
            raise StateError("a turn is already open")
        return (self._open(self._samples),)

    def end_turn(self) -> Sequence[TurnEvent]:
        """
        Close the open turn now (reason ``explicit``), in any mode; an empty tuple when no turn
        is open, e.g. because the VAD closed it a moment before.
        """
        self._reopen = False
        if not self.in_turn:
            return _NO_EVENTS
        return (self._close("explicit"),)

    def finish(self) -> Sequence[TurnEvent]:
        """End of stream: report speech still in progress and close the open turn (``end_of_stream``)."""
        events: list[TurnEvent] = []
        stopped = self.vad.finish()
        if stopped is not None:
            events.append(stopped)
        self._reopen = False
        if self.in_turn:
            events.append(self._close("end_of_stream"))
        return events
