"""
The voice channel of a session: the part of a conversation that does not depend on the dialect.

A dialect turns its wire messages into ``start`` / ``audio`` / ``end`` calls.  The channel hands
audio to the worker pool (in order, batched), where the stream's ingest decodes it, finds speech
and turns, and feeds the turns' STT; typed events come back here, on the reactor, the one lane
back: here turns and their responses are made (the worker is then told to attach them) and
finished, responses are paced out one at a time (:mod:`txvoice.server.response`), and a user who
starts speaking over a response interrupts it (barge-in).
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

from twisted.python.failure import Failure

from txvoice.audio.format import AudioFormat
from txvoice.audio.ingest import BargeOnset, StreamIngest, StreamSettings, TurnFeeds, TurnOutput, Voiced
from txvoice.audio.turns import TurnEnded, TurnStarted
from txvoice.audio.vad import SpeechStarted, SpeechStopped
from txvoice.errors import StateError
from txvoice.logging import NamespaceLogger
from txvoice.pipeline.interfaces import IResponseSink, TurnContext
from txvoice.server.observer import IChannelObserver, LoggingObserver
from txvoice.server.response import ResponseStream
from txvoice.session.session import Session, SessionState

if TYPE_CHECKING:
    from txvoice.server.context import VoiceServer

_stream_keys = itertools.count()


class TurnHandle:
    """
    A pipeline turn and the response it writes to, owned by the reactor.  The turn is finished
    once it has ended (``TurnEnded``) and the worker has fed it everything held for it (attached).
    """

    __slots__ = ("number", "turn", "response", "attached", "ended")

    def __init__(self, number: int, turn: Any, response: ResponseStream) -> None:
        self.number = number
        self.turn = turn
        self.response = response
        self.attached = False
        self.ended = False

    def cancel(self) -> None:
        self.turn.cancel()


@dataclass(frozen=True, slots=True)
class TurnClosed:
    """Push-to-talk without analysis: the stream's one turn ended with the stream (no detector event)."""

    turn: int


class RawIngest:
    """Push-to-talk without analysis: chunks go to the turn untouched (no decoding at all)."""

    def __init__(self, answers: bool) -> None:
        self.feeds = TurnFeeds()
        self.attach = self.feeds.attach
        self.chunks = 0
        self.initial: list[Any] = []
        if answers:
            self.feeds.open(1)

    def process(self, item: tuple[Any, ...]) -> list[Any] | None:
        self.chunks += 1
        slot = self.feeds.current
        return slot.push(item[0], None, None) if slot is not None else None

    def end(self, _: object = None) -> list[Any]:
        slot = self.feeds.current
        if slot is None:
            return []
        self.feeds.close(slot.number)
        return [TurnClosed(slot.number)]


class VoiceStream:
    """One open voice stream (``voice_start`` ... ``voice_end``)."""

    __slots__ = ("id", "format", "key", "frames", "bytes", "options", "settings", "ingest", "turns", "handles",
                 "respond", "cancelled", "chunk_done")

    def __init__(self, stream_id: str, fmt: AudioFormat, settings: StreamSettings, options: dict[str, Any]) -> None:
        self.id = stream_id
        self.format = fmt
        self.key = next(_stream_keys)
        self.frames = 0
        self.bytes = 0
        self.options = options
        self.settings = settings
        self.ingest: Any = None
        self.turns = 0
        #: Pipeline turns by the ingest's turn number, from their start until they are finished.
        self.handles: dict[int, TurnHandle] = {}
        self.respond = True  # turns are answered (False: only detected and reported)
        self.cancelled = False  # dropped (disconnect): open no more turns for it
        self.chunk_done: Callable[[Any], None] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"stream_id": self.id, "format": self.format.as_dict(), "mode": self.settings.mode,
                "frames": self.frames, "bytes": self.bytes}


class VoiceChannel:
    """Streams, turns and responses of one session."""

    log = NamespaceLogger(namespace="txvoice.session")

    def __init__(self, server: "VoiceServer", session: Session, sink: IResponseSink,
                 observer: IChannelObserver | None = None) -> None:
        self.server = server
        self.session = session
        self.sink = sink
        #: Told of each chunk's fate (the dialect: acks, errors to the client).
        self.observer: IChannelObserver = observer if observer is not None else LoggingObserver()
        self.pacer = server.pacer
        self.stream: VoiceStream | None = None
        self.settings = StreamSettings()
        # Ready, in play order: rarely more than one or two, and a list is 56 bytes where an empty
        # deque is 0.7 KB (every session has one, most never play a reply).
        self.responses: list[ResponseStream] = []
        self.playing: ResponseStream | None = None
        self.open_turns: list[ResponseStream] = []  # turns whose pipeline has not finished
        self.barge_ins: list[dict[str, Any]] = []
        #: What the active stream's worker was last told (StreamIngest.replying): a reply is playing or queued.
        self._told_replying = False
        #: The connection's output bound (txvoice.server.backpressure), when the dialect has one.
        self.budget: Any = None
        self.drop_output: Callable[[str], None] | None = None

    # output

    def queued_bytes(self) -> int:
        """Response audio held for the client: paced, and waiting for its turn to play."""
        total = 0
        playing = self.playing
        if playing is not None:
            total += playing.pending_bytes
        for response in self.responses:
            total += response.pending_bytes
        for response in self.open_turns:
            if response is not playing and response not in self.responses:
                total += response.pending_bytes
        return total

    def outputCongested(self) -> bool:
        """Whether the client's output is over its soft mark (response audio is then dropped)."""
        budget = self.budget
        return budget is not None and budget.check() != "normal"

    def dropOutput(self, kind: str, count: int = 1) -> None:
        """Response output not queued for a congested client (counted)."""
        if self.drop_output is not None:
            for _ in range(count):
                self.drop_output(kind)

    # streams

    def start(
        self,
        fmt: AudioFormat,
        stream_id: str | None = None,
        options: dict[str, Any] | None = None,
        mode: str | None = None,
        respond: bool = True,
    ) -> VoiceStream:
        """
        Open a voice stream; raise ``stream_already_active`` when one is open.  With
        ``respond=False`` turns are detected and reported but not answered (no pipeline turns).
        """
        if self.stream is not None:
            raise StateError(
                f"voice stream {self.stream.id} is already active; send voice_end first",
                code="stream_already_active",
            )
        options = dict(options or {})
        rule = getattr(self.server.config, "barge_in_rule", None)
        if rule is not None and "barge_in_rule" not in options and "bargeInRule" not in options:
            options["barge_in_rule"] = rule  # the server's default (--barge-in-rule)
        settings = StreamSettings.parse(mode if mode is not None else options.get("mode"), options)
        pipeline = self.server.pipeline
        stream = VoiceStream(stream_id or "strm_" + uuid.uuid4().hex[:16], fmt, settings, options)
        self.settings = settings
        if settings.decodes or pipeline.decodes or not settings.wants_input_format(fmt):
            stream.ingest = StreamIngest(
                fmt, settings, pipeline.pipeline_rate,
                # The echo of raw chunks only when the reply goes out in the input's own format.
                feed_raw=not pipeline.decodes and settings.mode == "push_to_talk" and settings.wants_input_format(fmt),
                answers=respond,
            )
        else:
            stream.ingest = RawIngest(answers=respond)
        stream.respond = respond
        # Nothing is at a worker yet: tell the new ingest at once whether a reply is playing.
        self._told_replying = self.playing is not None or bool(self.responses)
        if isinstance(stream.ingest, StreamIngest):
            stream.ingest.replying(self._told_replying)
        stream.chunk_done = partial(self._chunkDone, stream)
        if isinstance(stream.ingest, RawIngest) and respond:
            self._openTurn(stream, 1, attach_now=True)
        # Push-to-talk's turn opens with the stream (and is not announced: the stream's ack says it):
        # nothing is at a worker yet, so it is attached here.
        for event in stream.ingest.initial:
            if isinstance(event, TurnStarted) and respond:
                self._openTurn(stream, event.turn, attach_now=True)
        self.stream = stream
        self.session.transition(SessionState.STREAMING)
        return stream

    def _openTurn(self, stream: VoiceStream, number: int, attach_now: bool = False) -> None:
        """A turn began: make its response and pipeline turn here, then let the worker feed it."""
        session = self.session
        stream.turns += 1
        server = self.server
        response = ResponseStream(
            stream.format, stream.turns, sink=self.sink, settings=stream.settings, pacer=self.pacer,
            submit=server.workers.submit, clock=server.clock, ready=self.responseReady, done=self.responseDone,
            congested=self.outputCongested, dropped=self.dropOutput,
        )
        context = TurnContext(
            session_id=session.id,
            stream_id=stream.id,
            input_format=stream.format,
            user_id=session.user_id,
            conversation_id=session.conversation_id,
            options=stream.options,
        )
        turn = server.pipeline.startTurn(context, response)
        response.turn = turn
        handle = stream.handles[number] = TurnHandle(number, turn, response)
        if attach_now:
            self._attached(stream, handle, stream.ingest.attach((number, turn.feed)))
        else:
            server.workers.submit(
                stream.key, stream.ingest.attach, (number, turn.feed),
                lambda events: self._attached(stream, handle, events), self._chunkFailed,
            )

    def _attached(self, stream: VoiceStream, handle: TurnHandle, events: list[Any] | None) -> None:
        handle.attached = True
        if events:
            self._dispatch(stream, events)
        if handle.ended:
            self._finishTurn(stream, handle)

    def audio(self, raw: bytes, sequence: int | None = None) -> None:
        """A chunk of audio for the active stream (hot path: no hop here, just queue it)."""
        stream = self.stream
        if stream is None:
            raise StateError("audio received but no voice stream is active; send voice_start first", code="no_active_stream")
        stream.frames += 1
        stream.bytes += len(raw)
        self.session.counters.audio_frames_in += 1
        self.server.workers.submit(
            stream.key, stream.ingest.process, (raw, sequence, self.server.clock.seconds()),
            stream.chunk_done, self._chunkFailed,
        )

    def _chunkDone(self, stream: VoiceStream, events: list[Any] | None) -> None:
        if events:
            self._dispatch(stream, events)
        self.observer.chunkProcessed(events)

    def _chunkFailed(self, failure: Failure) -> None:
        self.observer.chunkFailed(failure)

    def active(self, stream_id: str | None = None) -> VoiceStream:
        stream = self.stream
        if stream is None:
            raise StateError("no voice stream is active", code="no_active_stream")
        if stream_id is not None and stream_id != stream.id:
            raise StateError(f"stream {stream_id!r} is not the active stream {stream.id!r}", code="unknown_stream")
        return stream

    def end(self, stream_id: str | None = None) -> VoiceStream:
        """Close the active stream; its last turn ends once all its audio has been processed."""
        stream = self.active(stream_id)
        self.stream = None
        self.session.transition(SessionState.AUTHENTICATED)
        self.server.workers.submit(stream.key, stream.ingest.end, None, partial(self._dispatch, stream),
                                   self._chunkFailed)
        return stream

    # events from the ingest (reactor thread): the one lane from the workers back here

    def _dispatch(self, stream: VoiceStream, events: list[Any]) -> None:
        """What a chunk's processing reported (typed events, in order), handled on the reactor."""
        sink = self.sink
        for event in events:
            if isinstance(event, TurnOutput):
                event.deliver()
            elif isinstance(event, Voiced):
                start = event.start
                sink.event("vad", {"event": start.kind, "stream_time_ms": round(start.t_ms, 1)})
                if (self.playing is not None or self.responses) and stream.settings.barge_in_rule != "fast":
                    self.bargeIn(start, event.arrival)
            elif isinstance(event, BargeOnset):
                if self.playing is not None or self.responses:
                    self.bargeIn(event.start, event.arrival)
            elif isinstance(event, SpeechStopped):
                sink.event("vad", {"event": event.kind, "stream_time_ms": round(event.t_ms, 1)})
            elif isinstance(event, TurnStarted):
                sink.event("turn_start", {"turn": event.turn, "stream_time_ms": round(event.t_ms, 1)})
                if stream.respond and not stream.cancelled:
                    self._openTurn(stream, event.turn)
            elif isinstance(event, TurnEnded):
                sink.event(
                    "turn_end",
                    {"turn": event.turn, "reason": event.reason, "start_ms": round(event.start_ms, 1),
                     "end_ms": round(event.t_ms, 1), "duration_ms": round(event.t_ms - event.start_ms, 1)},
                )
                self._turnEnded(stream, event.turn)
            elif isinstance(event, TurnClosed):
                self._turnEnded(stream, event.turn)

    def _turnEnded(self, stream: VoiceStream, number: int) -> None:
        handle = stream.handles.get(number)
        if handle is None:
            return
        handle.ended = True
        if handle.attached:
            self._finishTurn(stream, handle)

    def _finishTurn(self, stream: VoiceStream, handle: TurnHandle) -> None:
        stream.handles.pop(handle.number, None)
        self.session.counters.turns += 1
        if self.session.conversation_id is not None:
            self.server.count_turn(self.session.conversation_id)
        response = handle.response
        if response.done:
            return  # cancelled (barge-in, disconnect) before it ended
        self.open_turns.append(response)
        d = handle.turn.finish()

        def finished(result: object) -> object:
            if response in self.open_turns:
                self.open_turns.remove(response)
            return result

        def failed(failure: Failure) -> None:
            self.log.failure("a turn failed", failure)
            self.sink.event("processing_failed", {"code": "pipeline_failed", "message": str(failure.value)})
            response.cancel("pipeline_failed")

        d.addBoth(finished).addErrback(failed)

    # responses (one at a time)

    def responseReady(self, response: ResponseStream) -> None:
        if response in self.open_turns:
            self.open_turns.remove(response)
        self.responses.append(response)
        self._playNext()

    def responseDone(self, response: ResponseStream) -> None:
        if self.playing is response:
            self.playing = None
        if response in self.responses:
            self.responses.remove(response)
        self._playNext()

    def _playNext(self) -> None:
        if self.playing is None and self.responses:
            self.playing = self.responses.pop(0)
            self.playing.activate()
        self._tellReplying()

    def _tellReplying(self) -> None:
        """Tell the active stream's worker, in order with its chunks, when barge-in became possible or not."""
        replying = self.playing is not None or bool(self.responses)
        stream = self.stream
        if replying == self._told_replying or stream is None:
            return
        self._told_replying = replying
        if isinstance(stream.ingest, StreamIngest):
            self.server.workers.submit(stream.key, stream.ingest.replying, replying, None, self._chunkFailed)

    def playbackPosition(self, response_id: str | None, position_ms: float) -> None:
        """The client reported how much of a response it has played."""
        playing = self.playing
        if playing is not None and (response_id is None or response_id == playing.response_id):
            playing.client_position_ms = position_ms

    def bargeIn(self, event: SpeechStarted, voiced_arrival: float | None) -> None:
        """The user spoke over the response: stop it, cancel its turn, tell the client what was played."""
        now = self.server.clock.seconds()
        playing = self.playing
        info: dict[str, Any] = {"stream_time_ms": round(event.t_ms, 1)}
        if playing is not None:
            played, source = playing.played_ms(now)
            info.update(response_id=playing.response_id, played_ms=round(played, 1), played_source=source,
                        sent_ms=round(playing.sent_ms, 1))
        if voiced_arrival is not None:
            info["detection_delay_ms"] = round((now - voiced_arrival) * 1000.0, 2)
        self.barge_ins.append(info)
        self.server.record_barge_in(info.get("detection_delay_ms"))
        # The client hears why first, then the response's close (final chunk, cancelled).
        self.sink.event("barge_in", info)
        for response in [playing, *self.responses, *self.open_turns]:
            if response is not None:
                response.cancel("barge_in")

    def cancel(self) -> None:
        """Drop the active stream and stop every response (disconnect)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.cancelled = True
            for handle in list(stream.handles.values()):
                handle.cancel()
                handle.response.cancel("disconnected")
            stream.handles.clear()
        for response in [self.playing, *self.responses, *self.open_turns]:
            if response is not None:
                response.cancel("disconnected")
