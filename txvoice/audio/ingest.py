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
from typing import Any, Callable

import numpy as np

from txvoice.audio import native as _native
from txvoice.audio.codecs import decoder_at
from txvoice.audio.codecs._libopus import OPUS_INVALID_PACKET
from txvoice.audio.codecs.opus import OpusDecoder, invalid_packet
from txvoice.audio.enhance import AutomaticGainControl, Denoiser
from txvoice.audio.format import AudioFormat
from txvoice.audio.frames import FrameAssembler
from txvoice.audio.resample import Resampler
from txvoice.audio.bargein import FastOnset
from txvoice.audio.streamsettings import MODE_ALIASES as MODE_ALIASES, StreamSettings as StreamSettings  # re-exported: they lived here
from txvoice.audio.turns import TurnDetector, TurnEnded, TurnMode, TurnStarted
from txvoice.audio.vad import SpeechStarted, SpeechStopped, WebRtcClassifier
from txvoice.errors import AudioError

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
        native: bool | None = None,
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
        #: The stream's C state when its chunks go through the native batch ingest
        #: (txvoice.audio.native; ``native=None``: whenever it is built and the stream's path is
        #: one it covers: Opus, mono, no resampling, no denoise or AGC).
        self.native: _native.NativeStream | None = None
        #: Chunks the batch already decoded and classified (prepare_batch), in order.
        self.ready: deque[_native.Prepared] = deque()
        if native is None:
            native = _native.available() and self.native_capable
        if native:
            self._go_native()

    @property
    def native_capable(self) -> bool:
        """Whether the native batch ingest covers this stream's path."""
        onset = self.onset
        return (type(self.decoder) is OpusDecoder and self.decoder.output_channels == 1 and self._resample is None
                and self.denoiser is None and self.agc is None
                and type(self.turns.vad.classifier) is WebRtcClassifier
                and (onset is None or type(onset.classifier) is WebRtcClassifier))

    def _go_native(self) -> None:
        """Hand the decoder, webrtcvads and gates to C; the detectors get its decisions instead."""
        if not self.native_capable:
            raise ValueError("the native ingest does not cover this stream")
        vad = self.turns.vad
        classifier = vad.classifier
        assert isinstance(classifier, WebRtcClassifier)
        onset = self.onset
        self.native = _native.NativeStream(
            self.decoder, classifier._vad, classifier.gate,
            onset.classifier._vad if onset is not None else None, onset.classifier.gate if onset is not None else None,
        )
        self._preset = vad.classifier = _native.PresetDecisions(classifier.sample_rate, classifier.frame_size)
        # C assembles the frames: the Python assembler only sees end()'s tail (none for Opus), so a small one.
        self.assembler = FrameAssembler(self.assembler.sample_rate, self.assembler.frame_ms, capacity_ms=0)
        self._onset_preset = None
        if onset is not None:
            self._onset_preset = _native.PresetDecisions(onset.sample_rate, onset.sub)
            onset.classifier = self._onset_preset  # type: ignore[assignment]  # it has the classifier's gate.track

    def process(self, item: tuple[bytes, int | None, float]) -> "list[IngestEvent] | None":
        """One chunk as the client sent it (and when it arrived) -> the events it caused (worker thread)."""
        if self.native is not None:
            return self._process_native(item)
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

    def _process_native(self, item: tuple[bytes, int | None, float]) -> "list[IngestEvent] | None":
        """:meth:`process` on the native path: the chunk's decoding and decisions came from the batch."""
        raw, sequence, arrival = item
        if not isinstance(raw, bytes):
            raw = bytes(raw)
        ready = self.ready
        if ready:
            row, pcm, voiced, onset = ready.popleft()
        else:  # not prepared with its batch (no prepare_batch on these workers): a batch of one
            assert self.native is not None
            row, pcm, voiced, onset = _native.run_batch(
                [self.native], [raw], [sequence], [self.onset is not None and self.onset.active])[0]
        self.chunks += 1
        kind = row[0]
        if kind:
            if kind == _native.EMPTY_PACKET:
                raise AudioError("empty Opus packet", code="truncated_frame")
            if kind == _native.INVALID_PACKET:
                raise invalid_packet(row[1], len(raw))
            raise invalid_packet(OPUS_INVALID_PACKET, len(raw))  # ZERO_DURATION, as OpusDecoder says it
        events: list[IngestEvent] | None = None
        if self.feed_raw and self.feeds.current is not None:
            events = self.feeds.current.push(raw, None, None)
        samples = row[2]
        if not samples:
            return events
        self._samples_in += samples
        self._arrivals.append((self._samples_in * 1000.0 / self._rate_in, arrival))
        preset = self._preset
        preset.decisions = voiced
        preset.pos = row[5]
        if self._onset_preset is not None:
            self._onset_preset.decisions = onset
            self._onset_preset.pos = row[6]
        size, offset, count = preset.frame_size, row[3], row[4]
        return self._frames(pcm[offset:offset + count * size].reshape(count, size), events)

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
        if onset is not None and self.native is not None and not onset.active:
            # Idle, the onset only tracks its gate's floor, which the native batch did: count the frames.
            onset.frames += len(frames) * (turns.frame_size // onset.sub)
            onset = None
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


_PROCESS = StreamIngest.process


def prepare_batch(items: list[Any], start: int) -> int:
    """
    Decode and classify, in one native call, the run of chunks on the native path that begins at
    ``items[start]`` (a worker batch's ``(work, arg, deliver, fail)`` items; the run ends at the
    first other item, so whatever that item changes -- a reply starting -- is seen by the chunks
    after it); each ingest takes its results in order (:meth:`StreamIngest.process`).  Returns
    the index after the run (after ``start`` when it was not a native chunk).
    """
    owners: list[StreamIngest] = []
    packets: list[bytes] = []
    sequences: list[int | None] = []
    active: list[bool] = []
    index, end = start, len(items)
    while index < end:
        work, arg = items[index][0], items[index][1]
        owner = getattr(work, "__self__", None)
        if getattr(work, "__func__", None) is not _PROCESS or owner is None or owner.native is None:
            break
        raw = arg[0] if isinstance(arg[0], bytes) else bytes(arg[0])
        owners.append(owner)
        packets.append(raw)
        sequences.append(arg[1])
        active.append(owner.onset is not None and owner.onset.active)
        index += 1
    if owners:
        streams = [owner.native for owner in owners]
        for owner, prepared in zip(owners, _native.run_batch(streams, packets, sequences, active)):  # type: ignore[arg-type]
            owner.ready.append(prepared)
    return max(index, start + 1)


def inline_capable(item: Any) -> bool:
    """
    Whether a worker item is a chunk on the native path whose stream feeds no turn: its work is
    the batch's C call and the turn bookkeeping, small and bounded (a turn's ``feed`` may run a
    recognizer, so a stream with a current turn always hops).  Read on the reactor while the
    stream's shard is idle: nothing runs on that stream's state meanwhile.
    """
    work = item[0]
    owner = getattr(work, "__self__", None)
    return (getattr(work, "__func__", None) is _PROCESS and owner is not None and owner.native is not None
            and owner.feeds.current is None)


def batch_preparer() -> "Callable[[list[Any], int], int] | None":
    """What :class:`~txvoice.audio.workers.AudioWorkers` should get as ``prepare``: the native batch, when built."""
    return prepare_batch if _native.available() else None
