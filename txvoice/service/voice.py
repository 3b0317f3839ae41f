"""
The top of a txvoice daemon's service hierarchy.

Children: the audio worker pool, the heartbeat, the session reaper and the listener (with
``--processes N``, also the worker processes, or in a worker the parent watch: see
``txvoice.service.processes``).  Stopping is ordered: stop accepting (and SIGTERM the workers),
tell every session (close 1001) and wait for them (bounded), stop the timers, drain and stop the
audio threads, then wait for the workers (bounded).  The whole stop is bounded too: a stop still
waiting ``STOP_LIMIT_EXTRA`` seconds after ``shutdown_timeout`` logs where it was and ends anyway.
"""

from __future__ import annotations

import sys

import txaio
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.python.usage import UsageError

from txvoice.audio.ingest import batch_preparer, inline_capable
from txvoice.audio.workers import AudioWorkers, inline_limit
from txvoice.config import VoiceConfig
from txvoice.dialects.registry import DialectPathClash, dialect_services, mount_dialects
from txvoice.logging import NamespaceLogger
from txvoice.engines.registry import EngineNotFound
from txvoice.pipeline.interfaces import IServicePipeline, IVoicePipeline, PipelineHost
from txvoice.pipeline.registry import PipelineNotFound, create_pipeline
from txvoice.server.context import VoiceServer
from txvoice.scaleout.install import scale_out
from txvoice.server.web import build_site
from txvoice.service.gcpauses import GCPauses
from txvoice.service.heap import apply_gc_thresholds, freeze_startup_heap, parse_gc_thresholds
from txvoice.service.heartbeat import HeartbeatService
from txvoice.service.listener import ListenerService
from txvoice.service.monitoring import MonitoringService
from txvoice.service.poll import after_dispatch, install_lean_poll
from txvoice.service.processes import (
    STOP_GRACE,
    ParentWatchService,
    ReusePortListeners,
    SharedListenerService,
    WorkerListenerService,
    WorkerProcesses,
    parse_tcp_listen,
    process_count,
)
from txvoice.service.reaper import ReaperService


#: How much longer than ``shutdown_timeout`` a stop may take before it gives up waiting: the
#: worker processes' own bound (``shutdown_timeout`` + SIGKILL after ``STOP_GRACE`` + its wait) and some.
STOP_LIMIT_EXTRA = 3 * STOP_GRACE

#: The order a daemon stops in.  Each phase starts when the one before has finished (the worker
#: processes are told at once and waited for last).  "closing sessions" is the service's own step.
STOP_PHASES = (
    "closing the listener",
    "closing sessions",
    "stopping the timers",
    "stopping the other services",
    "stopping the pipeline",
    "stopping the audio threads",
    "waiting for the worker processes",
)


class VoiceService(MultiService):
    """A txvoice server as a Twisted service."""

    log = NamespaceLogger(namespace="txvoice.service")

    def __init__(
        self,
        server: VoiceServer,
        listener: ListenerService,
        processes: WorkerProcesses | None = None,
        parent_watch: ParentWatchService | None = None,
    ) -> None:
        super().__init__()
        self.server = server
        self.workers = server.workers
        self.heartbeat = HeartbeatService(server)
        self.reaper = ReaperService(server)
        self.monitoring = MonitoringService(server)
        self.listener = listener
        self.pacer = server.pacer
        #: With --processes N: in the parent, the N-1 worker processes; in a worker, the parent watch.
        self.processes = processes
        self.parent_watch = parent_watch
        #: While stopping: the step the stop is in (named in the error if it has to give up).
        self.stopping: str | None = None
        #: With --gc-pause-log-ms: the collections' timings (service/gcpauses.py).
        self.gcPauses: GCPauses | None = None
        #: Which stop phase each child belongs to (see ``STOP_PHASES``); children added without
        #: one (``setServiceParent``) stop in "stopping the other services".
        self.phaseOf: dict[int, str] = {}
        self.addChild(self.workers, "stopping the audio threads")
        for timer in (self.pacer, self.monitoring, self.heartbeat, self.reaper):
            self.addChild(timer, "stopping the timers")
        if processes is not None:
            self.addChild(processes, "waiting for the worker processes")
        if parent_watch is not None:
            self.addChild(parent_watch, "closing the listener")
        self.addChild(self.listener, "closing the listener")

    def addChild(self, service: IService, phase: str) -> None:
        """Add a child service that stops in ``phase`` (one of ``STOP_PHASES``)."""
        if phase not in STOP_PHASES:
            raise ValueError(f"unknown stop phase {phase!r}; phases: {', '.join(STOP_PHASES)}")
        self.phaseOf[id(service)] = phase
        service.setServiceParent(self)

    def _inPhase(self, phase: str) -> list[IService]:
        """The children that stop in ``phase``, last added first (as MultiService stops them)."""
        other = phase == "stopping the other services"
        return [s for s in reversed(list(self))
                if self.phaseOf.get(id(s)) == phase or (other and id(s) not in self.phaseOf)]

    def _stopPhase(self, phase: str) -> Deferred:
        return DeferredList([maybeDeferred(s.stopService) for s in self._inPhase(phase)])

    def startService(self) -> None:
        interval = self.server.config.gil_switch_interval_ms
        if interval > 0:
            # The reactor and the audio threads share one GIL: a CPU-bound audio thread keeps the
            # reactor waiting up to the switch interval each time (5 ms by default).
            sys.setswitchinterval(interval / 1000.0)
        if self.server.config.lean_poll:
            if install_lean_poll(self.server.clock):
                self.log.info("lean epoll dispatch installed (no per-event legacy log context)")
            self.server.workers.flushAfterDispatch(after_dispatch(self.server.clock))
        # Which audio path Opus streams take (txvoice.audio.native; TXVOICE_NATIVE_INGEST=0 turns it off).
        native = self.server.workers.prepare is not None
        self.log.info("audio ingest: {path}", path="native batch (txvoice/audio/_native.c)" if native else "pure Python",
                      native_ingest=native)
        if self.server.config.gc_pause_log_ms > 0:
            self.gcPauses = GCPauses(self.log, self.server.config.gc_pause_log_ms)
            self.gcPauses.install()
        thresholds = parse_gc_thresholds(self.server.config.gc_thresholds)
        if thresholds is not None:
            apply_gc_thresholds(thresholds, self.log)
        if self.server.config.gc_freeze:
            # Before the children start: the listener is not accepting yet, so no one waits on it.
            freeze_startup_heap(self.log)
        super().startService()

    def stopService(self) -> Deferred:
        """Stop the children phase by phase, in ``STOP_PHASES`` order, each phase once the last is done."""
        Service.stopService(self)
        self.server.shutting_down = True
        if self.gcPauses is not None:
            self.gcPauses.remove()
        self.stopping = "closing the listener"
        # Worker processes stop (SIGTERM, then their own graceful stop) while this one does.
        workers_stopped = self._stopPhase("waiting for the worker processes")
        d = self._stopPhase("closing the listener")
        self._then(d, "closing sessions", self.closeSessions)
        d.addErrback(lambda f: self.log.failure("closing sessions failed", f))
        for phase in STOP_PHASES[2:-1]:
            self._then(d, phase, lambda phase=phase: self._stopPhase(phase))
        self._then(d, "waiting for the worker processes", lambda: workers_stopped)
        d.addErrback(lambda f: self.log.failure("stopping the worker processes failed", f))
        return self._bounded(d)

    def _then(self, d: Deferred, stage: str, step) -> None:
        """Run ``step`` once ``d`` has fired, whatever it fired with, noting the stage we are in."""

        def run(_: object) -> object:
            self.stopping = stage
            return step()

        d.addBoth(run)

    def _bounded(self, stopping: Deferred) -> Deferred:
        """
        Fire when ``stopping`` does, or give up after ``shutdown_timeout`` + ``STOP_LIMIT_EXTRA``
        with an error naming the stage that did not finish: every step is bounded on its own,
        so this only catches a bug, and SIGTERM must end the daemon even then.
        """
        limit = self.server.config.shutdown_timeout + STOP_LIMIT_EXTRA
        done: Deferred[None] = Deferred()

        def give_up() -> None:
            self.log.error("still {stage} {limit:g} s after the stop began: stopping without it",
                           stage=self.stopping, limit=limit)
            done.callback(None)

        timer = self.server.clock.callLater(limit, give_up)

        def finished(_: object) -> None:
            if not done.called:
                timer.cancel()
                self.log.info("txvoice stopped")
                done.callback(None)

        stopping.addBoth(finished)
        return done

    def closeSessions(self) -> Deferred:
        """Close every session with 1001; drop those still open after ``shutdown_timeout``."""
        server = self.server
        protocols = [s.connection for s in server.registry if s.connection is not None]
        if not protocols:
            return succeed(None)
        self.log.info("closing {count} sessions", count=len(protocols))
        waits = []
        for protocol in protocols:
            waits.append(protocol.whenClosed())
            protocol.goingAway()
        done = DeferredList(waits)

        def drop_remaining() -> None:
            for protocol in protocols:
                if protocol.session is not None and protocol.session in list(server.registry):
                    protocol.dropConnection(abort=True)

        timer = server.clock.callLater(server.config.shutdown_timeout, drop_remaining)

        def finished(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return done.addBoth(finished)


def makeVoiceService(
    config: VoiceConfig,
    reactor=None,
    pipeline: IVoicePipeline | None = None,
    worker: int | None = None,
) -> VoiceService:
    """
    Assemble a server from its configuration.  ``worker``: this process is worker *i* of a
    ``--processes`` parent (it adopts the socket the parent passed instead of listening).
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    # Checked before anything is loaded: a bad --processes or listen description is a usage error.
    count = process_count(config.processes)
    try:
        parse_gc_thresholds(config.gc_thresholds)
        inline_max = inline_limit(config.audio_inline_max)
    except ValueError as e:
        raise UsageError(str(e)) from None
    shared = parse_tcp_listen(config.listen) if count > 1 and worker is None else None
    # Autobahn logs every connection at debug level through txaio; keep that off the hot path.
    txaio.set_global_log_level("info")  # type: ignore[attr-defined]  # set by txaio.use_twisted()
    prepare = batch_preparer()
    workers = AudioWorkers(reactor, threads=config.audio_threads, batch_delay=config.audio_batch_ms / 1000.0,
                           prepare=prepare, inline_max=inline_max,
                           cheap=inline_capable if prepare is not None else None, nice=config.worker_nice)
    pipeline = pipeline or make_pipeline(config.pipeline, config)
    try:
        # --redis: the stores several nodes share; with --processes, process i is node <node-id>.<i>.
        redis = scale_out(config, reactor, worker if worker is not None else 0 if shared is not None else None)
    except ValueError as e:
        raise UsageError(str(e)) from None
    server = VoiceServer(config, pipeline, workers, reactor, **(redis.server_stores() if redis else {}))
    if redis is not None:
        redis.attach(server)
    try:
        endpoints = mount_dialects(server)
    except DialectPathClash as e:
        raise UsageError(e.message) from None
    site = build_site(server, endpoints)
    processes: WorkerProcesses | None = None
    parent_watch: ParentWatchService | None = None
    server.process_count = count
    if worker is not None:
        server.process_index = worker
        listener: ListenerService = WorkerListenerService(reactor, site)
        parent_watch = ParentWatchService(reactor)
    elif shared is not None:
        listeners = ReusePortListeners(shared, count)
        listener = SharedListenerService(reactor, listeners, site)
        processes = WorkerProcesses(reactor, config.updated(processes=count), listeners, site,
                                    session_tokens=server.admission.authenticator is not None and redis is None)
    else:
        listener = ListenerService(reactor, config.listen, site)
    service = VoiceService(server, listener, processes, parent_watch)
    for extra in dialect_services(server):  # a dialect's own listener (Asterisk AudioSocket over TCP)
        service.addChild(extra, "closing the listener")
    if redis is not None:
        for child in redis.services():  # after the sessions wrote their state
            service.addChild(child, "stopping the other services")
    if IServicePipeline.providedBy(pipeline):
        # Latency metrics, error counts, the audio worker pool and the reactor are the server's.
        pipeline_service = pipeline.makeService(PipelineHost(
            reactor=reactor, workers=workers, record_latency=server.record_latency, record_error=server.record_error,
        ))
        service.addChild(pipeline_service, "stopping the pipeline")
    return service


def make_pipeline(name: str, config: VoiceConfig | None = None) -> IVoicePipeline:
    """
    The pipeline called ``name``, with the engines ``config`` names; an unknown pipeline or engine
    is a usage error that lists the names there are.
    """
    try:
        return create_pipeline(name, config or VoiceConfig())
    except (EngineNotFound, PipelineNotFound) as e:
        raise UsageError(e.message) from None
    except ValueError as e:
        raise UsageError(str(e)) from None
