"""
One speech turn (:class:`SpeechTurn`): the STT stream fed on the audio worker while the user
speaks, then, once the turn ends, the final transcript, the agent's reply and the synthesis, with
a deadline and cancellation at every stage.  See :mod:`txvoice.pipeline.speech` for the whole.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.audio.output import output_format
from txvoice.engines import AgentContext, AgentEvent, Transcript, pumpSynthesis
from txvoice.errors import VoiceError
from txvoice.pipeline.interfaces import IResponseSink, ITurn, TurnContext
from txvoice.pipeline.limits import ServerBusy, TurnLimiter
from txvoice.pipeline.options import InvalidOption, StageFailed, TurnOptions, error_code

log = Logger(namespace="txvoice.pipeline.speech")


class TurnHost(Protocol):
    """What a :class:`SpeechTurn` uses of its pipeline (:class:`~txvoice.pipeline.speech.SpeechPipeline`)."""

    stt: Any
    agent: Any
    tts: Any
    stt_mode: str
    timeout: float
    limiter: TurnLimiter
    pipeline_rate: int
    turns: int
    completed: int
    failed: dict[str, int]
    timer: Callable[[], float]
    record_latency: Callable[[str, float], None]
    record_error: Callable[[str], None]

    def openStream(self, options: TurnOptions, stream_options: Any) -> Any: ...

    def inThread(self, f: Callable[[], Any]) -> Deferred[Any]: ...

    def finishThread(self, f: Callable[[], Any]) -> Deferred[Any]: ...

    def synthesisPool(self) -> Any: ...

    def _reactor(self) -> Any: ...


@implementer(ITurn)
class SpeechTurn:
    """One turn: STT fed on the worker while the user speaks; the rest once the turn ends."""

    def __init__(self, pipeline: TurnHost, context: TurnContext, sink: IResponseSink) -> None:
        self.pipeline = pipeline
        self.context = context
        self.sink = sink
        self.option_error: InvalidOption | None = None
        try:
            self.options = TurnOptions.parse(context.options, pipeline.stt_mode)
        except InvalidOption as e:
            self.options, self.option_error = TurnOptions(pipeline.stt_mode), e
        self.stream: Any = None
        self.stt_error: Failure | None = None
        self.cancelled = False
        self.closed = False  # the turn said its last word (completed, failed or dropped)
        self.began = False
        self.stage = "listening"
        self.timed_out = False
        self.responding = False  # startResponse sent, endResponse not yet
        self.last_audio_at: float | None = None
        self.ended_at = 0.0
        self.queue_s = 0.0
        self.first_audio_at: float | None = None
        self._speaking_at = 0.0
        self.samples_out = 0
        self.tts_rate = 16000
        self.latency: dict[str, float] = {}
        self._work: Deferred[None] | None = None
        self._deadline: Any = None

    # -- worker thread -----------------------------------------------------------------------------

    def feed(self, raw: bytes | None, pcm: Any) -> "Callable[[], None] | None":
        """
        Feed the STT stream (opened at the first frame); what the reactor should hear of it (the
        turn began, a partial transcript) is returned, and the ingest carries it back with the
        chunk's results: no lane of its own to the reactor.
        """
        if self.cancelled or pcm is None or not len(pcm):
            return None
        pipeline = self.pipeline
        stream = self.stream
        began: Callable[[], None] | None = None
        if stream is None:
            if self.began or self.stt_error is not None:
                return None  # the stream could not be opened: the failure is reported when the turn ends
            self.began = True
            began = self._started
            if self.option_error is not None:
                return began
            try:
                stream = self.stream = pipeline.openStream(self.options, self.context.options)
            except Exception:
                self.stt_error = Failure()
                return began
            if self.cancelled:  # cancelled on the reactor while the stream was being opened
                stream.cancel()
                return began
        self.last_audio_at = pipeline.timer()
        try:
            transcript = stream.feed(pcm.copy())  # pcm is a view into the ingest's buffer
        except Exception:
            self.stt_error = Failure()
            self.stream = None
            stream.cancel()
            return began
        if transcript is None:
            return began
        if began is None:
            return partial(self._partial, transcript)
        return partial(self._startedWith, transcript)

    # -- reactor thread ----------------------------------------------------------------------------

    def _started(self) -> None:
        if not self.cancelled and not self.closed:
            self.pipeline.turns += 1
            self.sink.event("processing_started", {
                "stream_id": self.context.stream_id, "stage": "stt", "stt": self.pipeline.stt.name,
                "stt_mode": self.options.stt_mode if self.options.phrases is None else "phrase_list",
            })

    def _startedWith(self, transcript: Transcript) -> None:
        self._started()
        self._partial(transcript)

    def _partial(self, transcript: Transcript) -> None:
        if not self.cancelled and not self.closed and self.stage == "listening":
            self.sink.event("transcript", transcript.as_dict())

    def _progress(self, stage: str, progress: float, **extra: Any) -> None:
        self.stage = stage
        self.sink.event("processing_progress", {"stage": stage, "progress": progress, **extra})

    def finish(self) -> Deferred[None]:
        if self.cancelled:
            return succeed(None)
        pipeline = self.pipeline
        self.ended_at = pipeline.timer()
        if not self.began:  # a turn without audio
            self.began = True
            self._started()
        try:
            slot = pipeline.limiter.acquire()
        except ServerBusy as e:
            self._dropBusy(e)
            return succeed(None)
        self._deadline = pipeline._reactor().callLater(pipeline.timeout, self._timedOut)
        self.stage = "queued"
        self._work = Deferred.fromCoroutine(self._process(slot))
        self._work.addErrback(self._failed)
        self._work.addBoth(self._ended)
        return self._work

    async def _process(self, slot: Deferred[Any]) -> None:
        pipeline, sink = self.pipeline, self.sink
        if not slot.called:
            self._progress("queued", 0.0, queued=pipeline.limiter.queued)
        await slot  # cancelled while queued: nothing to release
        try:
            self.queue_s = pipeline.timer() - self.ended_at
            self._progress("stt", 0.25)
            transcript: Transcript = await self._stage("stt", self._transcribe())
            now = pipeline.timer()
            self.latency["stt"] = now - (self.last_audio_at or self.ended_at) - self.queue_s
            sink.event("transcript", transcript.as_dict())

            self._progress("agent", 0.5, transcript=transcript.text)
            context = AgentContext(
                conversation_id=self.context.conversation_id, session_id=self.context.session_id,
                user_id=self.context.user_id, options=dict(self.context.options), listener=self._agentEvent,
            )
            asked = pipeline.timer()
            reply = await self._stage("agent", maybeDeferred(pipeline.agent.respond, transcript.text, context))
            text = getattr(reply, "text", None)
            if not isinstance(text, str):
                raise StageFailed("agent", Failure(TypeError(f"the agent replied {reply!r}, not an AgentReply")))
            self.latency["agent"] = pipeline.timer() - asked
            events = [e.as_dict() for e in getattr(reply, "events", ())]
            sink.event("ai_response", {
                "text": text, "transcript": transcript.text, "agent": pipeline.agent.name, "events": events,
                "tool_calls": [{"name": e.get("name"), "arguments": e.get("arguments", {})}
                               for e in events if e.get("type") == "tool_call"],
                "metadata": dict(getattr(reply, "metadata", {}) or {}),
            })

            self._progress("tts", 0.75)
            samples = await self._speak(text, transcript, reply)
        finally:
            pipeline.limiter.release()
        self.latency["total"] = pipeline.timer() - self.ended_at
        latency_ms = {stage: round(seconds * 1000, 2) for stage, seconds in self.latency.items()}
        latency_ms["queue"] = round(self.queue_s * 1000, 2)
        audio_ms = round(samples * 1000 / self.tts_rate, 1)
        self.closed = True
        self.responding = False
        pipeline.completed += 1
        # The event first: once the response is closed (at once when nothing is left to send), the
        # sink takes no more events.
        sink.event("processing_completed", {"transcript": transcript.text, "text": text, "audio_ms": audio_ms,
                                            "latency_ms": latency_ms})
        sink.endResponse({"samples": samples, "audio_ms": audio_ms})
        for stage, seconds in self.latency.items():
            pipeline.record_latency(stage, seconds)
        log.debug("turn of {session_id} answered: {latency_ms}", session_id=self.context.session_id,
                  latency_ms=latency_ms)

    async def _stage(self, stage: str, work: Deferred[Any]) -> Any:
        """Await one engine stage; its failures become :class:`StageFailed` (cancellation passes)."""
        try:
            return await work
        except (CancelledError, StageFailed):
            raise
        except Exception:
            raise StageFailed(stage, Failure()) from None

    def _transcribe(self) -> Deferred[Transcript]:
        if self.option_error is not None:
            return fail(self.option_error)
        if self.stt_error is not None:
            return fail(self.stt_error)
        stream = self.stream
        if stream is None:
            return succeed(Transcript(text="", final=True, audio_ms=0))
        return self.pipeline.finishThread(stream.finish)

    def _agentEvent(self, event: AgentEvent) -> None:
        if not self.cancelled and not self.closed:
            self.sink.event(event.type, dict(event.data))

    async def _speak(self, text: str, transcript: Transcript, reply: Any) -> int:
        """Announce the response and stream its synthesis to the sink; the number of samples."""
        pipeline, options = self.pipeline, self.options
        self.tts_rate = rate = self._outputRate()
        metadata = {"pipeline": "speech", "transcript": transcript.text, "stt": pipeline.stt.name,
                    "agent": pipeline.agent.name, "tts": pipeline.tts.name}
        if not text.strip():
            self.sink.startResponse(text, None, metadata)
            self.responding = True
            self.latency["tts"] = 0.0
            return 0
        self.sink.startResponse(text, AudioFormat("pcm_s16le", rate, 1, 20), metadata)
        self.responding = True
        tts = pipeline.tts
        self._speaking_at = pipeline.timer()

        def synthesis() -> Any:  # on the worker: starting the engine may spawn a process
            return tts.synthesize(text, voice=options.tts_voice, rate=options.tts_rate, sample_rate=rate)

        samples: int = await self._stage("tts", pumpSynthesis(
            synthesis, self._audio, threadpool=pipeline.synthesisPool(), reactor=pipeline._reactor(),
        ))
        return samples

    def _outputRate(self) -> int:
        """Synthesize at the rate the client gets, so the audio is resampled once (by the engine)."""
        options = self.context.options
        try:
            return output_format(self.context.input_format, options.get("output_codec"),
                                 options.get("output_sample_rate")).sample_rate
        except Exception:
            return self.pipeline.pipeline_rate

    def _audio(self, chunk: Any) -> None:
        if self.cancelled or self.closed:
            return
        if self.first_audio_at is None:
            self.first_audio_at = now = self.pipeline.timer()
            self.latency["tts"] = now - self._speaking_at
            self.latency["first_audio"] = now - self.ended_at
        self.samples_out += len(chunk)
        if self._deadline is not None and self._deadline.active():
            self._deadline.reset(self.pipeline.timeout)  # audio flows: the deadline is for a stall now
        self.sink.audio(chunk)

    def _timedOut(self) -> None:
        self._deadline = None
        if self._work is not None and not self._work.called:
            self.timed_out = True
            self._work.cancel()

    def _failed(self, failure: Failure) -> None:
        """The turn did not complete: say why (unless it was cancelled), close what is open."""
        if self.cancelled:
            return None
        if self.timed_out:
            timeout_ms = round(self.pipeline.timeout * 1000)
            waited = "for its first audio" if self.first_audio_at is None else "between two audio chunks"
            self._fail("processing_timeout", f"the turn waited more than {timeout_ms} ms {waited} (stage {self.stage})",
                       timeout_ms=timeout_ms)
        elif failure.check(StageFailed):
            error = failure.value
            assert isinstance(error, StageFailed)
            inner = error.failure
            engineCode = error_code(inner)
            if isinstance(inner.value, VoiceError) and error.stage != "agent":
                log.info("{stage} refused a turn: {error}", stage=error.stage, error=inner.getErrorMessage())
            else:
                log.failure("{stage} engine failed", inner, stage=error.stage)
            details: dict[str, Any] = {}
            if engineCode is not None:
                details["error_code"] = engineCode
            if isinstance(inner.value, VoiceError) and inner.value.details:
                details["details"] = inner.value.details
            code = "invalid_field" if isinstance(inner.value, InvalidOption) else f"{error.stage}_failed"
            self._fail(code, inner.getErrorMessage(), **details)
        else:
            log.failure("speech turn failed", failure)
            self._fail("pipeline_failed", failure.getErrorMessage())
        return None

    def _fail(self, code: str, message: str, **details: Any) -> None:
        pipeline = self.pipeline
        stage = "options" if code == "invalid_field" else self.stage
        self.closed = True
        pipeline.failed[code] = pipeline.failed.get(code, 0) + 1
        pipeline.record_error(code)
        self.sink.event("processing_failed", {"code": code, "message": message, "stage": stage, **details})
        if self.responding:  # close the response: what was synthesized plays, nothing more comes
            self.responding = False
            self.sink.endResponse({"reason": code, "truncated": True,
                                   "audio_ms": round(self.samples_out * 1000 / self.tts_rate, 1)})

    def _dropBusy(self, error: ServerBusy) -> None:
        """No slot and no room to wait: tell the client now and drop the turn."""
        self.closed = True
        if self.stream is not None:
            self.stream.cancel()
        self.pipeline.record_error(error.code)
        self.pipeline.failed[error.code] = self.pipeline.failed.get(error.code, 0) + 1
        self.sink.event("busy", {"code": error.code, "message": error.message, **error.details})
        self.sink.event("processing_failed", {"code": error.code, "message": error.message, "stage": "queued"})

    def _ended(self, result: object) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.closed = True
        if self.stream is not None:
            self.stream.cancel()  # a no-op once finished; frees the decoder of a turn that never got there
        return None

    def cancel(self) -> None:
        """Stop now (barge-in, disconnect): STT stream, agent, synthesis; nothing more is sent."""
        if self.cancelled:
            return
        self.cancelled = True
        stream = self.stream
        if stream is not None:
            stream.cancel()
        if self._work is not None and not self._work.called:
            self._work.cancel()
        elif self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
