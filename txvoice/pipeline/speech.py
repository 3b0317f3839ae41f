"""
The speech pipeline: what the user says is transcribed, answered by an agent and spoken back.

A :class:`SpeechTurn` runs on two threads, as the engines' contract wants:

* while the user speaks (audio worker, in order): the STT stream, opened at the first frame, is fed
  every frame; its partial transcripts go back with the chunk's results (``feed`` returns them)
  and reach the client as ``transcript`` events;
* when the turn ends (reactor): it takes a processing slot (:mod:`txvoice.pipeline.limits`), gets
  the final transcript (the speech service's pool), the agent's reply (reactor), and speaks it (a synthesis iterated
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
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from txvoice.engines import create_engine
from txvoice.pipeline.interfaces import IResponseSink, IServicePipeline, ITurn, PipelineHost, TurnContext
from txvoice.pipeline.limits import TurnLimiter
from txvoice.pipeline.options import (
    GENERAL,
    GRAMMAR,
    STAGES,
    STT_MODES,
    InvalidOption,
    StageFailed,
    TurnOptions,
    audio_threadpool,
    parse_engine_options,
)
from txvoice.pipeline.turn import SpeechTurn
from txvoice.threadnice import niced_thread_factory

if TYPE_CHECKING:
    from txvoice.audio.workers import AudioWorkers
    from txvoice.config import VoiceConfig

log = Logger(namespace="txvoice.pipeline.speech")


@implementer(IServicePipeline)
class SpeechPipeline:
    """
    Speech in, speech out, through three engines.  ``makeService`` (or ``bind``) connects it to the
    daemon (latency metrics, error counts, the audio worker pool, the reactor); unbound it uses the
    global reactor.
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

    def bind(self, host: PipelineHost) -> None:
        """Report to ``host`` and run on its reactor and audio worker pool."""
        self.reactor = host.reactor
        self.record_latency = host.record_latency
        self.record_error = host.record_error
        workers = host.workers
        self._threadpool = lambda: audio_threadpool(workers)

    def makeService(self, host: PipelineHost) -> "SpeechService":
        """Bind to ``host``; the service owns the synthesis threads and loads the engines at start."""
        self.bind(host)
        return SpeechService(self, host.reactor, nice=getattr(host.workers, "nice", 0))

    def useSynthesisPool(self, pool: "Callable[[], ThreadPool | None] | None") -> None:
        """Iterate syntheses on ``pool()`` (the :class:`SpeechService`'s), or on :meth:`threadpool` when None."""
        self._synthesis_pool = pool

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
        # AudioWorkers takes a ThreadPool's callInThreadWithCallback, which is all this needs.
        return deferToThreadPool(reactor, self.threadpool(), f)  # type: ignore[arg-type]

    def finishThread(self, f: Callable[[], Any]) -> Deferred:
        """
        ``f()`` (a stream's final transcript) on :meth:`synthesisPool`, not behind the audio shards:
        every frame of the turn was fed before it ends, so the finish needs no shard order, and on
        the audio threads it waited behind every other session's frames and reply encoding (twenty
        turns ending together: stt p95 132 ms there, bench/bench_speech_lag.py).  A turn holds
        one of that pool's threads at a time (this, then its synthesis), so it is never short.
        """
        return deferToThreadPool(self._reactor(), self.synthesisPool(), f)  # type: ignore[arg-type]

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


class SpeechService(Service):
    """
    The speech pipeline's share of the server's life: a thread pool for syntheses (as many threads
    as turns may be processed at once), and the engines loaded in a thread at start so the first
    turn does not wait.  Its threads (and the espeak-ng processes they start) run ``nice`` below
    the reactor, as the audio workers do (:mod:`txvoice.threadnice`).
    """

    name = "speech"  # type: ignore[assignment]  # Twisted declares Service.name as None

    def __init__(self, pipeline: SpeechPipeline, reactor: Any, nice: int = 0) -> None:
        self.pipeline = pipeline
        self.reactor = reactor
        self.nice = nice
        self.pool: ThreadPool | None = None
        self.ready: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        reactor: Any = self.reactor
        if not IReactorThreads.providedBy(reactor):
            return  # a test's memory reactor: no threads, nothing to warm
        pool = self.pool = ThreadPool(0, self.pipeline.limiter.max_active, name="txvoice-tts")
        if self.nice > 0:
            pool.threadFactory = niced_thread_factory(self.nice)  # type: ignore[assignment]
        pool.start()
        self.pipeline.useSynthesisPool(lambda: self.pool)
        self.ready = deferToThreadPool(reactor, reactor.getThreadPool(), self.pipeline.warmUp)
        self.ready.addErrback(lambda f: log.failure("warming up the speech engines failed", f))

    def _stopPool(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.stop()

    def stopService(self) -> None:
        """Stopped by the daemon once every session is closed, so no synthesis is still wanted."""
        super().stopService()
        self.pipeline.useSynthesisPool(None)
        self._stopPool()


__all__ = ["GENERAL", "GRAMMAR", "STAGES", "InvalidOption", "SpeechPipeline", "SpeechService", "SpeechTurn",
           "StageFailed", "TurnOptions", "audio_threadpool", "parse_engine_options"]
