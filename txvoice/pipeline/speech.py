"""
The speech pipeline: what the user says is transcribed, answered by an agent and spoken back.

A :class:`SpeechTurn` runs on two threads, as the engines' contract wants:

* while the user speaks (audio worker, in order): the STT stream, opened at the first frame, is fed
  every frame; its partial transcripts hop to the reactor as ``transcript`` events;
* when the turn ends (reactor): it takes a processing slot (:mod:`txvoice.pipeline.limits`), gets
  the final transcript (worker), the agent's reply (reactor), and speaks it (a synthesis iterated
  on the audio worker pool, each chunk handed to the sink as soon as it exists, so the reply starts
  playing long before a long text is synthesized).

``cancel()`` (barge-in, disconnect) and the per-turn deadline stop whichever stage runs: the STT
stream, the agent's Deferred (and its tool calls), the synthesis (its process is killed); nothing
reaches the sink after that.  The deadline (``processing_timeout_ms``) runs from the turn's end to
its first audio, then restarts at every chunk: a reply that keeps streaming is never cut, however
long, while an engine that hangs at any point is.  An engine that raises fails the turn, not the
session.

Events, as ``status`` messages (``doc/protocol.md``, "The speech pipeline"): ``processing_started``,
``transcript`` (partial and final), ``processing_progress``, the agent's own events (``tool_call``
...), ``ai_response``, then ``processing_completed`` or ``processing_failed``; ``busy`` when the
server is full.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from txvoice.audio.format import AudioFormat
from txvoice.audio.output import output_format
from txvoice.engines import AgentContext, AgentEvent, Transcript, create_engine, pumpSynthesis
from txvoice.errors import VoiceError
from txvoice.pipeline.interfaces import IResponseSink, ITurn, IVoicePipeline, TurnContext
from txvoice.pipeline.limits import ServerBusy, TurnLimiter

if TYPE_CHECKING:
    from txvoice.audio.workers import AudioWorkers
    from txvoice.config import VoiceConfig
    from txvoice.server.context import VoiceServer

log = Logger(namespace="txvoice.pipeline.speech")

GRAMMAR = "grammar"
GENERAL = "general"
STT_MODES = (GRAMMAR, GENERAL)

#: Latency stages reported per turn (``server.record_latency`` knows these).
STAGES = ("stt", "agent", "tts", "first_audio", "total")


class InvalidOption(VoiceError):
    """A speech option in ``voice_start`` has the wrong type or value."""

    code = "invalid_field"


class StageFailed(Exception):
    """An engine raised while serving a turn; ``stage`` is ``stt``, ``agent`` or ``tts``."""

    def __init__(self, stage: str, failure: Failure) -> None:
        super().__init__(f"{stage}: {failure.getErrorMessage()}")
        self.stage = stage
        self.failure = failure


def parse_engine_options(text: str) -> dict[str, str]:
    """``"key=value,key=value"`` (from ``--stt-options`` ...) as a dict; values stay strings."""
    options: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"engine option {item.strip()!r} is not key=value")
        options[key.strip()] = value.strip()
    return options


def audio_threadpool(workers: "AudioWorkers") -> "AudioWorkers | None":
    """
    The audio workers as a thread pool (they take ``deferToThreadPool``'s calls), for short work
    that needs no shard ordering (final transcripts); ``None`` before the service starts or when
    the workers run inline.
    """
    return workers if workers.started else None


@dataclass(frozen=True, slots=True)
class TurnOptions:
    """What a client may choose per stream in ``voice_start`` ``options``."""

    stt_mode: str = GRAMMAR
    phrases: tuple[str, ...] | None = None
    tts_voice: str | None = None
    tts_rate: int | None = None

    @classmethod
    def parse(cls, options: Mapping[str, Any], default_mode: str) -> "TurnOptions":
        """
        Read ``stt_mode``, ``phrase_list`` (like vosk-server), ``tts_voice``, ``tts_rate`` (words per
        minute); ``stt_options`` (an object) goes to the STT engine's stream as it is.
        """
        mode = options.get("stt_mode", default_mode)
        if mode not in STT_MODES:
            raise InvalidOption(f"options.stt_mode must be grammar or general, not {mode!r}", field="stt_mode")
        phrases = options.get("phrase_list")
        if phrases is not None:
            if (not isinstance(phrases, list) or not phrases or len(phrases) > 10000
                    or not all(isinstance(p, str) and p.strip() for p in phrases)):
                raise InvalidOption("options.phrase_list must be a non-empty list of phrases (strings)",
                                    field="phrase_list")
            phrases = tuple(phrases)
            mode = GRAMMAR
        voice = options.get("tts_voice")
        if voice is not None and not (isinstance(voice, str) and voice):
            raise InvalidOption("options.tts_voice must be a voice name", field="tts_voice")
        rate = options.get("tts_rate")
        if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool)):
            raise InvalidOption("options.tts_rate must be an integer (words per minute)", field="tts_rate")
        if not isinstance(options.get("stt_options", {}), dict):
            raise InvalidOption("options.stt_options must be an object (passed to the STT engine)", field="stt_options")
        return cls(mode, phrases, voice, rate)


def _error_code(failure: Failure) -> str | None:
    value = failure.value
    return value.code if isinstance(value, VoiceError) else None


@implementer(IVoicePipeline)
class SpeechPipeline:
    """
    Speech in, speech out, through three engines.  ``bind`` connects it to a server (latency
    metrics, error counts, the audio worker pool, the reactor); unbound it uses the global reactor.
    """

    name = "speech"
    decodes = True
    pipeline_rate = 16000

    def __init__(
        self,
        stt: Any,
        agent: Any,
        tts: Any,
        *,
        stt_mode: str = GRAMMAR,
        processing_timeout_ms: int = 5000,
        max_concurrent_processing: int = 10,
        max_queued_turns: int = 50,
        reactor: Any = None,
        threadpool: Callable[[], "ThreadPool | AudioWorkers | None"] | None = None,
        synthesis_pool: Callable[[], "ThreadPool | AudioWorkers | None"] | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if stt_mode not in STT_MODES:
            raise ValueError(f"stt mode must be grammar or general, not {stt_mode!r}")
        if processing_timeout_ms <= 0:
            raise ValueError("processing_timeout_ms must be positive")
        self.stt = stt
        self.agent = agent
        self.tts = tts
        self.stt_mode = stt_mode
        self.timeout = processing_timeout_ms / 1000.0
        self.limiter = TurnLimiter(max_concurrent_processing, max_queued_turns)
        self.reactor = reactor
        self._threadpool = threadpool
        self._synthesis_pool = synthesis_pool
        self.timer = timer
        # Read once, here (the agent is a reactor-thread object; turns read this on the worker).
        self.phrases: tuple[str, ...] | None = tuple(agent.phrases() or ()) or None
        self.record_latency: Callable[[str, float], None] = lambda stage, seconds: None
        self.record_error: Callable[[str], None] = lambda code: None
        self.turns = 0
        self.completed = 0
        self.failed: dict[str, int] = {}

    @classmethod
    def fromConfig(cls, config: "VoiceConfig", package: Any = None) -> "SpeechPipeline":
        """Make the engines the configuration names (``EngineNotFound`` lists the names there are)."""
        engines = {}
        for kind in ("stt", "agent", "tts"):
            options = parse_engine_options(getattr(config, f"{kind}_options"))
            engines[kind] = create_engine(kind, getattr(config, kind), options, package=package)
        return cls(
            engines["stt"], engines["agent"], engines["tts"], stt_mode=config.stt_mode,
            processing_timeout_ms=config.processing_timeout_ms,
            max_concurrent_processing=config.max_concurrent_processing,
            max_queued_turns=config.max_queued_turns,
        )

    def bind(self, server: "VoiceServer", reactor: Any) -> None:
        """Report to ``server`` and run on its reactor and audio worker pool."""
        self.reactor = reactor
        self.record_latency = server.record_latency
        self.record_error = server.record_error
        workers = server.workers
        self._threadpool = lambda: audio_threadpool(workers)

    # -- threads -----------------------------------------------------------------------------------

    def _reactor(self) -> Any:
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        return self.reactor

    def threadpool(self) -> "ThreadPool | AudioWorkers":
        """Where short blocking engine calls run: the audio worker pool, else the reactor's pool."""
        pool = self._threadpool() if self._threadpool is not None else None
        return pool if pool is not None else self._reactor().getThreadPool()

    def synthesisPool(self) -> "ThreadPool | AudioWorkers":
        """
        Where syntheses are iterated: a pool of their own (:class:`SpeechService`), else
        :meth:`threadpool`.  A synthesis holds its thread until the text is spoken (mostly waiting on
        the engine's pipe), so on the two audio threads a burst of replies would hold back every
        session's audio; measured with 20 sessions, it halved the median time to first audio.
        """
        pool = self._synthesis_pool() if self._synthesis_pool is not None else None
        return pool if pool is not None else self.threadpool()

    def inThread(self, f: Callable[[], Any]) -> Deferred:
        """``f()`` on the worker pool; a Deferred of its result on the reactor."""
        reactor = self._reactor()
        return deferToThreadPool(reactor, self.threadpool(), f)

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self._reactor().callFromThread(f, *args)

    # -- engines -----------------------------------------------------------------------------------

    def streamArguments(self, options: TurnOptions, stream_options: Mapping[str, Any]) -> dict[str, Any]:
        """What :meth:`ISpeechToText.startStream` gets for a turn with these options."""
        phrases = options.phrases
        if phrases is None and options.stt_mode == GRAMMAR:
            phrases = self.phrases  # None for an open-vocabulary agent: the general model
        mode = GRAMMAR if phrases is not None else GENERAL
        engine_options = stream_options.get("stt_options")
        engine_options = dict(engine_options) if isinstance(engine_options, Mapping) else {}
        return {"phrases": list(phrases) if phrases is not None else None, "options": {**engine_options, "mode": mode}}

    def openStream(self, options: TurnOptions, stream_options: Mapping[str, Any]) -> Any:
        """A recognition stream constrained as ``options`` say (worker thread; may load a decoder)."""
        return self.stt.startStream(**self.streamArguments(options, stream_options))

    def warmUp(self) -> None:
        """
        Load what turns of the default kind need (blocking: call it off the reactor): PocketSphinx
        holds the GIL while it loads a decoder, so loads belong here, not in the first turns.
        """
        started = self.timer()
        self.stt.warmUp(**self.streamArguments(TurnOptions(self.stt_mode), {}))
        log.info("speech engines ready in {elapsed_ms:.0f} ms: stt {stt} ({mode}), agent {agent}, tts {tts}",
                 elapsed_ms=(self.timer() - started) * 1000, stt=self.stt.name, mode=self.stt_mode,
                 agent=self.agent.name, tts=self.tts.name)

    # -- IVoicePipeline ----------------------------------------------------------------------------

    def startTurn(self, context: TurnContext, sink: IResponseSink) -> ITurn:
        return SpeechTurn(self, context, sink)

    def stats(self) -> dict[str, Any]:
        return {"turns": self.turns, "completed": self.completed, "failed": dict(self.failed),
                **self.limiter.stats()}


@implementer(ITurn)
class SpeechTurn:
    """One turn: STT fed on the worker while the user speaks; the rest once the turn ends."""

    def __init__(self, pipeline: SpeechPipeline, context: TurnContext, sink: IResponseSink) -> None:
        # Built on the audio worker thread: no reactor calls here.
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
        self._work: Deferred | None = None
        self._deadline: Any = None

    # -- worker thread -----------------------------------------------------------------------------

    def feed(self, raw: bytes | None, pcm: Any) -> None:
        if self.cancelled or pcm is None or not len(pcm):
            return
        pipeline = self.pipeline
        stream = self.stream
        if stream is None:
            if self.began or self.stt_error is not None:
                return  # the stream could not be opened: the failure is reported when the turn ends
            self.began = True
            pipeline.callFromThread(self._started)
            if self.option_error is not None:
                return
            try:
                stream = self.stream = pipeline.openStream(self.options, self.context.options)
            except Exception:
                self.stt_error = Failure()
                return
            if self.cancelled:  # cancelled on the reactor while the stream was being opened
                stream.cancel()
                return
        self.last_audio_at = pipeline.timer()
        try:
            partial = stream.feed(pcm.copy())  # pcm is a view into the ingest's buffer
        except Exception:
            self.stt_error = Failure()
            self.stream = None
            stream.cancel()
            return
        if partial is not None:
            pipeline.callFromThread(self._partial, partial)

    # -- reactor thread ----------------------------------------------------------------------------

    def _started(self) -> None:
        if not self.cancelled and not self.closed:
            self.pipeline.turns += 1
            self.sink.event("processing_started", {
                "stream_id": self.context.stream_id, "stage": "stt", "stt": self.pipeline.stt.name,
                "stt_mode": self.options.stt_mode if self.options.phrases is None else "phrase_list",
            })

    def _partial(self, transcript: Transcript) -> None:
        if not self.cancelled and not self.closed and self.stage == "listening":
            self.sink.event("transcript", transcript.as_dict())

    def _progress(self, stage: str, progress: float, **extra: Any) -> None:
        self.stage = stage
        self.sink.event("processing_progress", {"stage": stage, "progress": progress, **extra})

    def finish(self) -> Deferred:
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

    async def _process(self, slot: Deferred) -> None:
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

    async def _stage(self, stage: str, work: Deferred) -> Any:
        """Await one engine stage; its failures become :class:`StageFailed` (cancellation passes)."""
        try:
            return await work
        except (CancelledError, StageFailed):
            raise
        except Exception:
            raise StageFailed(stage, Failure()) from None

    def _transcribe(self) -> Deferred:
        if self.option_error is not None:
            return fail(self.option_error)
        if self.stt_error is not None:
            return fail(self.stt_error)
        stream = self.stream
        if stream is None:
            return succeed(Transcript(text="", final=True, audio_ms=0))
        return self.pipeline.inThread(stream.finish)

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

        return await self._stage("tts", pumpSynthesis(
            synthesis, self._audio, threadpool=pipeline.synthesisPool(), reactor=pipeline._reactor(),
        ))

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
            error: StageFailed = failure.value
            inner = error.failure
            engineCode = _error_code(inner)
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


class SpeechService(Service):
    """
    The speech pipeline's share of the server's life: a thread pool for syntheses (as many threads
    as turns may be processed at once), and the engines loaded in a thread at start so the first
    turn does not wait.
    """

    name = "speech"

    def __init__(self, pipeline: SpeechPipeline, reactor: Any) -> None:
        self.pipeline = pipeline
        self.reactor = reactor
        self.pool: ThreadPool | None = None
        self.ready: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        if not IReactorThreads.providedBy(self.reactor):
            return  # a test's memory reactor: no threads, nothing to warm
        pool = self.pool = ThreadPool(0, self.pipeline.limiter.max_active, name="txvoice-tts")
        pool.start()
        self.pipeline._synthesis_pool = lambda: self.pool
        # The server's stopService does not stop its children one by one: stop with the reactor.
        self.reactor.addSystemEventTrigger("during", "shutdown", self._stopPool)
        self.ready = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.pipeline.warmUp)
        self.ready.addErrback(lambda f: log.failure("warming up the speech engines failed", f))

    def _stopPool(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.stop()

    def stopService(self) -> None:
        super().stopService()
        self._stopPool()


__all__ = ["InvalidOption", "SpeechPipeline", "SpeechService", "SpeechTurn", "StageFailed", "TurnOptions",
           "audio_threadpool", "parse_engine_options"]
