"""
Sending a turn's response: encoded on the worker pool, paced at real time on the reactor.

A :class:`ResponseStream` is the :class:`IResponseSink` a pipeline turn writes to.  Audio goes to
the worker pool to be resampled and encoded in the client's format, ``ENCODE_SLICE_MS`` at a
time so that the first packet need not wait for the rest, then kept ``ENCODE_AHEAD_MS`` ahead
of what the pacer may send; the packets come back to a queue that the :class:`Pacer` drains at real time plus a small lead, so a slow client is never
flooded and a barge-in can stop the response within one pacer tick.  A channel plays one
response at a time; later ones wait their turn.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.audio.output import ResponseEncoder, output_format, packet_duration_ms
from txvoice.pipeline.interfaces import IResponseSink

if TYPE_CHECKING:
    from txvoice.audio.ingest import StreamSettings

#: The audio workers' ``submit``: ``(key, work, argument, deliver, fail)``, in order per key.
Submit = Callable[..., None]

_keys = itertools.count(1 << 40)
log = Logger(namespace="txvoice.audio.output")

#: Source audio per encoding job.  A response's audio is encoded a slice at a time, in order, so
#: its first packet goes out once the first slice is encoded, not the whole chunk (an echoed turn
#: or a synthesized sentence: ~20 ms of Opus encoding per second of audio here), and a barge-in
#: stops the encoding of what will not be played.
ENCODE_SLICE_MS = 100

#: Encoded audio kept ready beyond the pacer's lead once the first slice is back: slices are
#: handed to the workers while what is encoded and not yet sent plus what is at a worker is under
#: ``response_lead_ms + ENCODE_AHEAD_MS``.  One slice at a time (one worker round trip per 100 ms
#: of audio) ran the pacer dry whenever a round trip took longer than the slice's margin: with
#: 100 calls on one core, bench/bench_twilio.py saw 300-500 ms gaps in the replies.
ENCODE_AHEAD_MS = 300


class Pacer(Service):
    """One timer for every response being sent: each tick releases what has come due."""

    name = "pacer"  # type: ignore[assignment]  # Twisted declares Service.name as None

    def __init__(self, clock, tick: float = 0.01) -> None:
        self.clock = clock
        self.tick = tick
        self.streams: set[ResponseStream] = set()
        self._loop: LoopingCall | None = None

    def add(self, stream: "ResponseStream") -> None:
        self.streams.add(stream)
        if self._loop is None and self.running:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self.clock
            self._loop.start(self.tick, now=False)

    def discard(self, stream: "ResponseStream") -> None:
        self.streams.discard(stream)
        if not self.streams and self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None

    def _tick(self) -> None:
        now = self.clock.seconds()
        for stream in list(self.streams):
            stream.pump(now)

    def startService(self) -> None:
        super().startService()
        if self.streams:
            self.add(next(iter(self.streams)))

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None


@implementer(IResponseSink)
class ResponseStream:
    """
    One turn's response: queued, encoded, paced.  Reactor thread only.

    Its collaborators are given, not looked up: ``sink`` (the dialect's, where the client's
    messages go), the stream's ``settings`` (output format, lead), the ``pacer``, ``submit``
    (the audio workers' ordered job queue, for encoding), the ``clock``, and two callbacks to its
    owner: ``ready(response)`` once it is announced (queue it for playing) and ``done(response)``
    when it is finished or cancelled.
    """

    def __init__(
        self,
        input_format: AudioFormat,
        turn_number: int,
        *,
        sink: IResponseSink,
        settings: "StreamSettings",
        pacer: Pacer,
        submit: Submit,
        clock: IReactorTime,
        ready: Callable[["ResponseStream"], None],
        done: Callable[["ResponseStream"], None],
        congested: Callable[[], bool] | None = None,
        dropped: Callable[[str, int], None] | None = None,
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.pacer = pacer
        self.submit = submit
        self.clock = clock
        self._ready = ready
        self._done = done
        #: The client's output bound (``txvoice.server.backpressure``): over its soft mark response
        #: audio is dropped, not queued, and counted through ``dropped(kind, count)``.
        self._congestedNow = congested
        self._dropped = dropped
        self.input_format = input_format
        self.turn_number = turn_number
        self.turn: Any = None
        self.key = next(_keys)
        self.queue: deque[tuple[bytes, float]] = deque()
        #: Bytes held for the client: encoded packets queued plus source PCM not yet encoded.
        self.pending_bytes = 0
        self.announce: tuple | None = None
        self.format: AudioFormat | None = None
        self.encoder: ResponseEncoder | None = None
        self._to_encode: deque[np.ndarray] = deque()  # source PCM slices not yet handed to a worker
        self._slice_samples = 0
        self._samples_per_ms = 16.0
        #: The source milliseconds of each job at a worker (a slice, or 0.0 for the flush), in order.
        self._in_flight: deque[float] = deque()
        self._in_flight_ms = 0.0
        self._queued_ms = 0.0  # encoded audio in ``queue``, not yet sent
        self._primed = False  # the first slice is back: from now on, encode ahead
        self._flush_pending = False  # endResponse seen: flush once the slices are encoded
        self._submitting = False
        self.passthrough = False
        #: Sent as fast as it is encoded, not at real time (nobody is listening live: see hurry()).
        self.unpaced = False
        self.active = False
        self.finished = False  # endResponse seen and the encoder flushed
        self.done = False  # final chunk sent (or cancelled)
        self.started_at: float | None = None
        self.sent_ms = 0.0
        self.packets = 0
        self.summary: dict = {}
        self.client_position_ms: float | None = None
        self.response_id: str | None = None
        self.whenDone: Deferred = Deferred()

    # IResponseSink, for the pipeline

    def event(self, event_type: str, data: dict) -> None:
        if not self.done:
            self.sink.event(event_type, data)

    def startResponse(self, text_content: str | None, audio_format: AudioFormat | None, metadata: dict) -> None:
        if self.done:
            return
        settings = self.settings
        if audio_format is not None:
            wanted = output_format(self.input_format, settings.output_codec, settings.output_sample_rate)
            if audio_format == self.input_format and settings.wants_input_format(self.input_format):
                self.passthrough, self.format = True, audio_format
            else:
                self.format = wanted
                self.encoder = ResponseEncoder(audio_format.sample_rate, wanted)
                self._slice_samples = max(1, audio_format.sample_rate * ENCODE_SLICE_MS // 1000) * audio_format.channels
                self._samples_per_ms = audio_format.sample_rate * audio_format.channels / 1000.0
        self.announce = (text_content, self.format, metadata)
        self._ready(self)

    def audio(self, chunk: bytes | np.ndarray) -> None:
        if self.done or self.format is None:
            return
        if self.passthrough:
            self._queued(self._sliced(chunk))
            return
        pcm = np.frombuffer(chunk, dtype=np.int16) if isinstance(chunk, (bytes, bytearray)) else chunk
        if self._congested():
            self._drop(1)
            return
        self.pending_bytes += pcm.nbytes
        step = self._slice_samples
        self._to_encode.extend(pcm[i:i + step] for i in range(0, len(pcm), step))
        self._encodeNext()

    def endResponse(self, summary: dict) -> None:
        if self.done:
            return
        self.summary = dict(summary)
        if self.encoder is not None:
            self._flush_pending = True
            self._encodeNext()
        else:
            self._flushed([])

    # internals

    def _sliced(self, chunk: bytes | np.ndarray) -> list[tuple[bytes, float]]:
        """Passthrough audio as packets of one frame each (PCM-like codecs), so pacing stays fine-grained."""
        fmt = self.format
        assert fmt is not None
        data = chunk.tobytes() if isinstance(chunk, np.ndarray) else bytes(chunk)
        width = {"pcm_s16le": 2, "mulaw": 1, "alaw": 1}.get(fmt.codec)
        if width is None:
            return [(data, packet_duration_ms(fmt, data))]
        step = max(width * fmt.channels * fmt.samples_per_frame, width * fmt.channels)
        return [(data[i:i + step], packet_duration_ms(fmt, data[i:i + step])) for i in range(0, len(data), step)]

    def _encodeNext(self) -> None:
        """
        Hand slices (and, after the last, the flush) to the workers: the first alone, so that it
        comes back soon; then as many as keep the encoded audio ``ENCODE_AHEAD_MS`` beyond the
        pacer's lead.  The workers run one stream's jobs in order, so several may be out at once.
        """
        if self._submitting:
            return  # a job delivered inline (no audio threads): the loop below goes on
        self._submitting = True
        try:
            submit = self.submit
            in_flight = self._in_flight
            ahead = self.settings.response_lead_ms + ENCODE_AHEAD_MS
            while not self.done and (self._to_encode or self._flush_pending):
                assert self.encoder is not None
                if self._to_encode:
                    if self._primed:
                        if self._in_flight_ms + self._queued_ms >= ahead:
                            return  # enough is ready or coming: asked again as it comes or is sent
                    elif in_flight:
                        return  # the first slice alone
                    piece = self._nextSlice()
                    ms = len(piece) / self._samples_per_ms
                    in_flight.append(ms)
                    self._in_flight_ms += ms
                    submit(self.key, self.encoder.encode, piece, self._encoded, self._failed)
                else:
                    self._flush_pending = False
                    in_flight.append(0.0)
                    submit(self.key, self.encoder.flush, None, self._flushed, self._failed)
        finally:
            self._submitting = False

    def _delivered(self) -> None:
        """A job came back (in order): it is no longer at a worker."""
        if self._in_flight:
            self._in_flight_ms -= self._in_flight.popleft()
            if not self._in_flight:
                self._in_flight_ms = 0.0  # no drift from float sums

    def _nextSlice(self) -> np.ndarray:
        """At least one slice's worth of what is waiting (small chunks from a pipeline go together)."""
        pending = self._to_encode
        parts = [pending.popleft()]
        size = len(parts[0])
        while pending and size < self._slice_samples:
            parts.append(pending.popleft())
            size += len(parts[-1])
        self.pending_bytes -= sum(p.nbytes for p in parts)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _encoded(self, packets: list[tuple[bytes, float]]) -> None:
        self._delivered()
        self._primed = True
        self._queued(packets)
        self._encodeNext()

    def _failed(self, failure) -> None:
        log.failure("encoding a response failed", failure)
        self.cancel("encoding_failed")

    def _congested(self) -> bool:
        """The client's output is over its soft mark: response audio is dropped, not queued."""
        return self._congestedNow is not None and self._congestedNow()

    def _drop(self, count: int) -> None:
        if self._dropped is not None:
            self._dropped("audio", count)

    def _queued(self, packets: list[tuple[bytes, float]]) -> None:
        if self.done:
            return
        if packets and self._congested():
            self._drop(len(packets))
            packets = []
        self.pending_bytes += sum(len(p) for p, _ in packets)
        self._queued_ms += sum(ms for _, ms in packets)
        self.queue.extend(packets)
        if self.active:
            self.pump(self.clock.seconds())

    def _flushed(self, packets: list[tuple[bytes, float]]) -> None:
        self._delivered()
        self.finished = True
        self._queued(packets)
        if self.active and not self.queue:
            self.pump(self.clock.seconds())

    def activate(self) -> None:
        """Our turn to play: announce, then let the pacer send."""
        self.active = True
        text, fmt, metadata = self.announce or (None, None, {})
        self.sink.startResponse(text, fmt, metadata)
        self.response_id = getattr(self.sink, "response_id", None)
        self.pacer.add(self)
        self.pump(self.clock.seconds())

    def pump(self, now: float) -> None:
        """Send what has come due: audio up to ``lead_ms`` ahead of real time."""
        if self.done or not self.active:
            return
        if self.queue and self.started_at is None:
            self.started_at = now
        if self.started_at is not None:
            allowed = math.inf if self.unpaced else (now - self.started_at) * 1000.0 + self.settings.response_lead_ms
            sink = self.sink
            queue = self.queue
            while queue and self.sent_ms < allowed:
                packet, ms = queue.popleft()
                self.pending_bytes -= len(packet)
                self._queued_ms -= ms
                sink.audio(packet)
                self.sent_ms += ms
                self.packets += 1
            if not queue:
                self._queued_ms = 0.0
        if self.finished and not self.queue:
            self._complete(cancelled=False)
        elif self._to_encode and self._primed:
            self._encodeNext()  # what was sent opened the window

    def hurry(self) -> None:
        """
        Send the rest as fast as it is encoded: no client plays it in real time (a call whose
        output is being queued for another node, which waits for it to finish).
        """
        if not self.unpaced and not self.done:
            self.unpaced = True
            if self.active:
                self.pump(self.clock.seconds())

    def played_ms(self, now: float) -> tuple[float, str]:
        """How much the client has played: its own report when it sent one, else the pacing's."""
        if self.client_position_ms is not None:
            return self.client_position_ms, "client"
        if self.started_at is None:
            return 0.0, "server"
        return min(self.sent_ms, (now - self.started_at) * 1000.0), "server"

    def cancel(self, reason: str) -> dict:
        """Stop now (barge-in, disconnect): drop what is queued and close the response."""
        if self.done:
            return {}
        now = self.clock.seconds()
        played, source = self.played_ms(now)
        self.queue.clear()
        self._to_encode.clear()  # not encoded at all: it will not be played
        self.pending_bytes = 0
        self._queued_ms = 0.0
        if self.turn is not None:
            self.turn.cancel()
        info = {"played_ms": round(played, 1), "played_source": source, "sent_ms": round(self.sent_ms, 1)}
        self._complete(cancelled=True, reason=reason, **info)
        return info

    def _complete(self, cancelled: bool, reason: str | None = None, **extra: Any) -> None:
        if self.done:
            return
        self.done = True
        self.pacer.discard(self)
        if self.active:
            summary = {**self.summary, "cancelled": cancelled, "duration_ms": round(self.sent_ms, 1),
                       "packets": self.packets, **extra}
            if reason is not None:
                summary["reason"] = reason
            self.sink.endResponse(summary)
        self._done(self)
        self.whenDone.callback(cancelled)
