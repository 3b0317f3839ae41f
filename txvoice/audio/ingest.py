"""
Per-stream ingest, on the audio worker pool: decode -> resample -> exact frames -> (denoise,
AGC) -> turn detection (VAD inside) -> the pipeline's turn.

One :class:`StreamIngest` serves one voice stream and only ever runs on the worker shard of that
stream, so it keeps its state without locks.  It returns events (speech start/end, turn
start/end) for the reactor, or None when a chunk caused none (the common case).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from txvoice.audio.codecs import decoder_at
from txvoice.audio.enhance import AutomaticGainControl, Denoiser
from txvoice.audio.format import AudioFormat
from txvoice.audio.frames import FrameAssembler
from txvoice.audio._libsoxr import QUALITIES
from txvoice.audio.resample import Resampler
from txvoice.audio.bargein import DEFAULT_RULE, RULES, FastOnset
from txvoice.audio.turns import TurnDetector, TurnEnded, TurnMode, TurnSettings, TurnStarted
from txvoice.audio.vad import SpeechStarted, SpeechStopped
from txvoice.errors import ProtocolError

MODE_ALIASES = {
    "push_to_talk": "push_to_talk",
    "ptt": "push_to_talk",
    "continuous": "continuous",
    "voice_activity": "voice_activity",
    "vad": "voice_activity",
    "adaptive": "voice_activity",
}

# Option names clients use (S1 snake_case, S4 camelCase) -> StreamSettings fields.
_OPTION_NAMES = {
    "enable_vad": "vad", "enableVAD": "vad", "vad": "vad",
    "vad_threshold": "vad_threshold", "vadThreshold": "vad_threshold",
    "prefix_padding_ms": "prefix_padding_ms",
    "silence_ms": "silence_ms", "end_of_turn_silence_ms": "silence_ms", "silence_duration_ms": "silence_ms",
    "max_turn_ms": "max_turn_ms", "max_audio_duration": "max_turn_ms", "maxAudioDuration": "max_turn_ms",
    "segment_ms": "segment_ms",
    "enable_denoising": "denoise", "enableDenoising": "denoise", "denoise": "denoise",
    "enable_agc": "agc", "enableAGC": "agc", "agc": "agc",
    "frame_ms": "frame_ms",
    "output_codec": "output_codec", "output_sample_rate": "output_sample_rate",
    "response_lead_ms": "response_lead_ms",
    "resample_quality": "resample_quality",
    "barge_in_rule": "barge_in_rule", "bargeInRule": "barge_in_rule",
}


@dataclass(frozen=True)
class StreamSettings:
    """What a client may set per stream in ``voice_start`` (``mode`` and ``options``)."""

    mode: str = "push_to_talk"
    vad: bool = True
    vad_threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_ms: int = 500
    max_turn_ms: int = 180_000
    segment_ms: int = 5000
    denoise: bool = False
    agc: bool = False
    frame_ms: int = 20
    output_codec: str | None = None
    output_sample_rate: int | None = None
    response_lead_ms: int = 100
    #: soxr quality of the input's resampling to the pipeline rate.  "HQ" holds audio back in
    #: blocks (at 48 kHz: ~490 samples every other 20 ms chunk, up to 37 ms); "LL" (the default) is
    #: HQ's filter at minimum phase in small blocks: output on every chunk, at most ~9 ms behind
    #: (issue #21); "QQ" adds none (cubic interpolation): the telephony bridges use it.
    resample_quality: str = "LL"
    #: When speech over a playing reply interrupts it (txvoice.audio.bargein): "fast" (two 10 ms
    #: frames, the default) or "frames3" (the turn VAD's speech start, three 20 ms frames).
    barge_in_rule: str = DEFAULT_RULE

    @classmethod
    def parse(cls, mode: str | None, options: Mapping[str, Any]) -> "StreamSettings":
        """Read ``voice_start``'s mode and options; unknown or ill-typed ones are ``invalid_field``."""
        values: dict[str, Any] = {}
        if mode is not None:
            canonical = MODE_ALIASES.get(str(mode).lower())
            if canonical is None:
                raise ProtocolError(
                    f"mode must be one of push_to_talk, continuous, voice_activity, not {mode!r}",
                    code="invalid_field", field="mode",
                )
            values["mode"] = canonical
        defaults = cls()
        for key, value in options.items():
            name = _OPTION_NAMES.get(key)
            if name is None:
                continue  # pipeline options pass through untouched
            expected = type(getattr(defaults, name)) if getattr(defaults, name) is not None else None
            if name in ("output_codec", "resample_quality", "barge_in_rule"):
                ok = isinstance(value, str)
            elif name == "output_sample_rate":
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif expected is bool:
                ok = isinstance(value, bool)
            elif expected is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, int) and not isinstance(value, bool)
            if not ok:
                raise ProtocolError(f"options.{key} has the wrong type", code="invalid_field", field=key)
            values[name] = value
        settings = cls(**values)
        if settings.frame_ms not in (10, 20, 30):
            raise ProtocolError("options.frame_ms must be 10, 20 or 30", code="invalid_field", field="frame_ms")
        if not 0 <= settings.response_lead_ms <= 2000:
            raise ProtocolError("options.response_lead_ms must be within 0..2000", code="invalid_field",
                                field="response_lead_ms")
        if settings.resample_quality not in QUALITIES:
            raise ProtocolError(f"options.resample_quality must be one of {', '.join(QUALITIES)}",
                                code="invalid_field", field="resample_quality")
        if settings.barge_in_rule not in RULES:
            raise ProtocolError(f"options.barge_in_rule must be one of {', '.join(RULES)}",
                                code="invalid_field", field="barge_in_rule")
        settings.turn_settings()  # validates the ranges
        return settings

    def turn_settings(self) -> TurnSettings:
        try:
            return TurnSettings(
                prefix_padding_ms=self.prefix_padding_ms,
                silence_ms=self.silence_ms,
                max_turn_ms=self.max_turn_ms,
                segment_ms=self.segment_ms,
                vad_threshold=float(self.vad_threshold),
            )
        except ProtocolError as e:
            raise ProtocolError(e.message, code="invalid_field", field=e.details.get("field")) from None

    def wants_input_format(self, fmt: AudioFormat) -> bool:
        """True when responses may go out in the input's own format (no output_* override to another)."""
        return self.output_codec in (None, fmt.codec) and self.output_sample_rate in (None, fmt.sample_rate)

    @property
    def decodes(self) -> bool:
        """Whether the stream needs decoding at all (VAD, turns by VAD/segments, enhancement)."""
        return self.vad or self.mode != "push_to_talk" or self.denoise or self.agc


#: What a turn's ``feed`` may return: something for the reactor thread to call (a partial
#: transcript to send ...), carried back in the chunk's results.
Deliver = Callable[[], None]
Feed = Callable[[bytes | None, Any], "Deliver | None"]

#: Frames held for a turn the reactor has not attached yet (10 s at 20 ms): past it the oldest go.
MAX_PENDING_FRAMES = 500


@dataclass(frozen=True, slots=True)
class Voiced:
    """The VAD confirmed speech (``start``); ``arrival`` is when its first voiced chunk came in."""

    start: SpeechStarted
    arrival: float | None


@dataclass(frozen=True, slots=True)
class BargeOnset:
    """The fast barge-in rule heard speech start (``start``); ``arrival`` as for :class:`Voiced`."""

    start: SpeechStarted
    arrival: float | None


@dataclass(frozen=True, slots=True)
class TurnOutput:
    """What turn ``turn``'s ``feed`` returned, to be called on the reactor thread."""

    turn: int
    deliver: Deliver


#: Everything a chunk's processing reports to the reactor, in order.
IngestEvent = Voiced | BargeOnset | SpeechStopped | TurnStarted | TurnEnded | TurnOutput


class _TurnSlot:
    """
    One turn's audio on the worker: held from the turn's start until the reactor attaches the
    pipeline turn (``attach``), then fed to it frame by frame.
    """

    __slots__ = ("number", "feed", "pending", "ended", "dropped")

    def __init__(self, number: int) -> None:
        self.number = number
        self.feed: Feed | None = None
        self.pending: deque[tuple[bytes | None, Any]] = deque(maxlen=MAX_PENDING_FRAMES)
        self.ended = False
        self.dropped = False  # the reactor attached nothing (no pipeline turn): discard its audio

    def push(self, raw: bytes | None, pcm: Any, events: "list[IngestEvent] | None") -> "list[IngestEvent] | None":
        feed = self.feed
        if feed is not None:
            deliver = feed(raw, pcm)
            if deliver is not None:
                if events is None:
                    events = []
                events.append(TurnOutput(self.number, deliver))
        elif not self.dropped:
            # Frames are views into the assembler's buffer: keep a copy until the turn is attached.
            self.pending.append((raw, None if pcm is None else pcm.copy()))
        return events


class TurnFeeds:
    """
    The turns of one stream as the worker sees them: which one audio goes to, and the frames held
    for turns whose pipeline turn the reactor has not attached yet.  Worker thread only.
    """

    def __init__(self) -> None:
        self.current: _TurnSlot | None = None
        self._slots: dict[int, _TurnSlot] = {}

    def open(self, number: int) -> _TurnSlot:
        slot = self.current = self._slots[number] = _TurnSlot(number)
        return slot

    def close(self, number: int) -> None:
        slot = self._slots.get(number)
        if slot is not None:
            slot.ended = True
            if slot.feed is not None or slot.dropped:
                del self._slots[number]
        if self.current is not None and self.current.number == number:
            self.current = None

    def attach(self, item: "tuple[int, Feed | None]") -> "list[IngestEvent]":
        """The reactor made turn ``number``'s pipeline turn (``feed``, or None for none): feed it what was held."""
        number, feed = item
        slot = self._slots.get(number)
        if slot is None:
            return []
        events: list[IngestEvent] | None = None
        pending, slot.pending = slot.pending, deque()
        if feed is None:
            slot.dropped = True
        else:
            for raw, pcm in pending:
                deliver = feed(raw, pcm)
                if deliver is not None:
                    if events is None:
                        events = []
                    events.append(TurnOutput(number, deliver))
            slot.feed = feed
        if slot.ended:
            del self._slots[number]
        return events or []


class StreamIngest:
    """Everything done to one stream's audio on its worker."""

    def __init__(
        self,
        fmt: AudioFormat,
        settings: StreamSettings,
        pipeline_rate: int = 16000,
        feed_raw: bool = False,
        answers: bool = True,
    ) -> None:
        self.format = fmt
        self.settings = settings
        self.feed_raw = feed_raw
        #: Whether turns get audio (a pipeline answers them); when not, turns are only reported.
        self.answers = answers
        # Opus (and WebM/Opus) decode straight to the pipeline rate; the resampler then passes through.
        self.decoder = decoder_at(fmt, pipeline_rate)
        self.resampler = Resampler(self.decoder.output_rate, pipeline_rate, channels=self.decoder.output_channels,
                                   quality=settings.resample_quality)
        # Mono at the pipeline rate (Opus always, PCM at 16 kHz) passes through the resampler
        # unchanged; skip the call.
        mono_passthrough = self.resampler.passthrough and self.resampler.channels == 1
        self._resample = None if mono_passthrough else self.resampler.process
        self.assembler = FrameAssembler(pipeline_rate, settings.frame_ms)
        self.denoiser = Denoiser(pipeline_rate) if settings.denoise else None
        self.agc = AutomaticGainControl(pipeline_rate) if settings.agc else None
        # Each frame is fed to the pipeline's turn as it comes: the detector need not keep the turn too.
        self.turns = TurnDetector(
            TurnMode.parse(settings.mode),
            settings.turn_settings(),
            sample_rate=pipeline_rate,
            frame_ms=settings.frame_ms,
            keep_audio=False,
        )
        #: The fast barge-in rule's own onset detector (None with the default rule).
        self.onset = (FastOnset(pipeline_rate, float(settings.vad_threshold))
                      if settings.barge_in_rule == "fast" and settings.vad and settings.frame_ms % 10 == 0 else None)
        if self.onset is not None:
            self.onset.set_active(False)  # until the channel says a reply is playing (replying)
        self.feeds = TurnFeeds()
        self.attach = self.feeds.attach
        self.chunks = 0
        # (stream time at the end of a chunk, its arrival time): which chunk held the first voiced
        # frame, so a barge-in can report its delay from that chunk's arrival.
        self._arrivals: deque[tuple[float, float]] = deque(maxlen=64)
        self._samples_in = 0
        self._rate_in = self.decoder.output_rate * self.decoder.output_channels
        #: Events from before the first chunk (push-to-talk's turn opens with the stream), for the
        #: channel to take at once.
        self.initial: list[IngestEvent] = []
        if settings.mode == "push_to_talk":
            self.initial = self._handle(self.turns.start_turn(), None) or []

    def process(self, item: tuple[bytes, int | None, float]) -> "list[IngestEvent] | None":
        """One chunk as the client sent it (and when it arrived) -> the events it caused (worker thread)."""
        raw, sequence, arrival = item
        self.chunks += 1
        pcm = self.decoder.decode(raw, sequence)
        events: list[IngestEvent] | None = None
        if self.feed_raw and self.feeds.current is not None:
            events = self.feeds.current.push(raw, None, None)
        if not pcm.size:
            return events
        self._samples_in += pcm.size
        self._arrivals.append((self._samples_in * 1000.0 / self._rate_in, arrival))
        resample = self._resample
        return self._frames(self.assembler.push(pcm if resample is None else resample(pcm)), events)

    def replying(self, active: bool) -> None:
        """
        A reply is playing or queued (``True``) or none is (``False``): the fast onset is only
        classified then.  Submitted on the stream's worker queue, so ordered with its chunks.
        """
        if self.onset is not None:
            self.onset.set_active(active)

    def _arrival_of(self, t_ms: float) -> float | None:
        for end_ms, arrival in self._arrivals:
            if end_ms > t_ms:
                return arrival
        return None

    def _frames(self, frames: np.ndarray, events: "list[IngestEvent] | None" = None) -> "list[IngestEvent] | None":
        denoiser, agc, turns, feeds, onset = self.denoiser, self.agc, self.turns, self.feeds, self.onset
        fed = not self.feed_raw
        # Indexed, not iterated: iterating a numpy array ends in a formatted IndexError.
        for i in range(len(frames)):
            frame = frames[i]
            if denoiser is not None:
                frame = denoiser.process(frame)
            if agc is not None:
                frame = agc.process(frame)
            if onset is not None:
                started = onset.push(frame, turns.vad.speaking)
                if started is not None:
                    events = events if events is not None else []
                    events.append(BargeOnset(started, self._arrival_of(started.t_ms)))
            produced = turns.push(frame)
            if produced:
                # A TurnStarted's audio already ends with this frame.
                slot = feeds.current
                if slot is not None and fed and not any(isinstance(e, TurnStarted) for e in produced):
                    events = slot.push(None, frame, events)
                events = self._handle(produced, events)
            elif fed:
                slot = feeds.current
                if slot is not None:
                    events = slot.push(None, frame, events)
        return events

    def _handle(self, produced, events: "list[IngestEvent] | None") -> "list[IngestEvent]":
        if events is None:
            events = []
        for event in produced:
            if isinstance(event, TurnStarted):
                events.append(event)
                if self.answers:
                    slot = self.feeds.open(event.turn)
                    if not self.feed_raw and len(event.audio):
                        slot.push(None, event.audio, None)
            elif isinstance(event, TurnEnded):
                # The turn's last frame was pushed above, before its end: it is complete.
                self.feeds.close(event.turn)
                events.append(event)
            elif isinstance(event, SpeechStarted):
                events.append(Voiced(event, self._arrival_of(event.t_ms)))
            elif isinstance(event, SpeechStopped):
                events.append(event)
        return events

    def end(self, _: object = None) -> "list[IngestEvent]":
        """The client ended the stream: flush and close what is open (worker thread)."""
        events: list[IngestEvent] | None = None
        try:
            tail = self.decoder.flush()
        except Exception:
            tail = np.zeros(0, dtype=np.int16)
        frames = []
        if tail.size:
            frames.append(self.resampler.process(tail))
        rest = self.resampler.flush()
        if rest.size:
            frames.append(rest)
        for pcm in frames:
            events = self._frames(self.assembler.push(pcm), events)
        # voice_end is the button released in push-to-talk; in the other modes the stream just ends.
        closing = list(self.turns.end_turn() if self.settings.mode == "push_to_talk" else self.turns.finish())
        return self._handle(closing, events) if closing else (events or [])
