"""
The state one txvoice server shares between its dialects, services and HTTP routes: the session
table (registry, conversations, resume store, event bus), admission, and its telemetry
(:mod:`txvoice.server.telemetry`).

It is deliberately not a service: services (listening, heartbeat, reaper, audio workers) hold a
reference to it and manage lifecycles; the protocols read it through their factory.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.internet.interfaces import IReactorTime

from txvoice import __version__
from txvoice.audio.workers import AudioWorkers
from txvoice.config import VoiceConfig
from txvoice.events.bus import IEventBus, LocalEventBus
from txvoice.pipeline.interfaces import IVoicePipeline
from txvoice.security.interfaces import Principal
from txvoice.server.admission import AdmissionPolicy
from txvoice.server.response import Pacer
from txvoice.server.telemetry import Telemetry
from txvoice.session.registry import ISessionRegistry, LocalSessionRegistry
from txvoice.session.resume import IReliableLog, IResumeStore, LocalResumeStore


@dataclass
class Conversation:
    """A conversation: turns that share context, possibly across sessions."""

    id: str
    started_at: float = field(default_factory=time.time)
    turns: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"conversation_id": self.id, "started_at": self.started_at, "turns": self.turns, "metadata": self.metadata}


class VoiceServer:
    """Configuration, registries, pipeline and audio workers of one server."""

    def __init__(
        self,
        config: VoiceConfig,
        pipeline: IVoicePipeline,
        workers: AudioWorkers,
        clock: IReactorTime,
        registry: ISessionRegistry | None = None,
        bus: IEventBus | None = None,
        resume_store: IResumeStore | None = None,
        reliable_log: IReliableLog | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.workers = workers
        self.clock = clock
        self.registry = registry if registry is not None else LocalSessionRegistry()
        self.bus = bus if bus is not None else LocalEventBus(self.registry)
        self.resume_store = resume_store if resume_store is not None else LocalResumeStore(clock.seconds)
        #: The reliable-message log shared by the nodes (--redis); None: each session's own AckedIds.
        self.reliable_log = reliable_log
        self.conversations: dict[str, Conversation] = {}
        #: Checks /health runs: each returns None when fine, else a reason that makes it degraded
        #: (the Redis connection adds one: ``redis_down`` while Redis cannot be reached).
        self.health_checks: list[Callable[[], str | None]] = []
        #: This node's name in a cluster (set with --redis; None alone).
        self.node_id: str | None = None
        #: What --redis added (txvoice.scaleout.install.ScaleOut), for routes that list the cluster.
        self.scaleout: Any = None
        #: Where conversations are shared between nodes (txvoice.scaleout.conversations); None: here only.
        self.conversation_store: Any = None
        #: The offline message queue the realtime dialect uses (--redis: txvoice.scaleout.offline); None: its own.
        self.offline_store: Any = None
        #: Where the realtime dialect's calls are known cluster-wide (--redis: txvoice.scaleout.calls); None: this node only.
        self.call_store: Any = None
        self.started_at = time.time()
        self.version = __version__
        self.shutting_down = False
        #: Which of the server processes sharing the port this is (0: the parent; see --processes).
        self.process_index = 0
        self.process_count = 1
        self.pacer = Pacer(clock)
        telemetry = self.telemetry = Telemetry(config, clock, self.registry, workers)
        # What reports here reaches the telemetry directly (these are its own bound methods).
        self.stats, self.metrics, self.lag, self.history = telemetry.stats, telemetry.metrics, telemetry.lag, telemetry.history
        self.barge_in_delays_ms = telemetry.barge_in_delays_ms
        self.record_refused = telemetry.record_refused
        self.record_error = telemetry.record_error
        self.record_latency = telemetry.record_latency
        self.record_barge_in = telemetry.record_barge_in
        self.connection_opened = telemetry.connection_opened
        self.connection_closed = telemetry.connection_closed
        self.session_totals = telemetry.session_totals
        self.traffic = telemetry.traffic
        self.connection_details = telemetry.connection_details
        self.admission = AdmissionPolicy(config, clock, on_refused=self.record_refused)

    def conversation(self, conversation_id: str | None) -> Conversation:
        """The conversation with this id, created when new (a fresh id when None)."""
        cid = conversation_id or "conv_" + uuid.uuid4().hex
        conv = self.conversations.get(cid)
        if conv is None:
            conv = self.conversations[cid] = Conversation(cid)
        return conv

    def load_conversation(self, conversation_id: str | None) -> "Deferred[Conversation]":
        """
        The conversation, with the state other nodes left in the shared store (--redis): its start,
        turns and metadata.  Without a store, or while it cannot be read, this node's own.
        """
        conv = self.conversation(conversation_id)
        store = self.conversation_store
        if store is None:
            return succeed(conv)

        def merged(doc: dict[str, Any] | None) -> Conversation:
            if doc is not None:
                conv.started_at, conv.turns = doc["started_at"], doc["turns"]
                conv.metadata = dict(doc["metadata"])
            return conv

        def unavailable(failure: Failure) -> Conversation:
            return conv

        d: Deferred[Conversation] = store.load(conv.id).addCallbacks(merged, unavailable)
        return d

    def save_conversation(self, conv: Conversation) -> None:
        """Share the conversation's metadata (and when it started) with the other nodes."""
        if self.conversation_store is not None:
            self.conversation_store.save(conv.id, conv.started_at, conv.metadata).addErrback(lambda f: None)

    def count_turn(self, conversation_id: str) -> None:
        """A turn of the conversation finished here."""
        conv = self.conversation(conversation_id)
        conv.turns += 1
        if self.conversation_store is not None:
            d = self.conversation_store.count_turn(conversation_id)

            def counted(turns: int) -> None:
                conv.turns = turns

            d.addCallbacks(counted, lambda f: None)

    def authenticate(self, token: str, user_id: str | None) -> Deferred[Principal]:
        """
        Check an in-protocol ``auth`` token; fire with a Principal.  Without an authenticator
        configured every token is accepted (development default).
        """
        return self.admission.authenticate(token, user_id)

    def health(self) -> dict[str, Any]:
        """``/health``: healthy, degraded (a threshold crossed) or unhealthy, with the figures."""
        config = self.config
        realtime = self.history.get_real_time_metrics()
        lag = self.lag.stats()
        lag_p99_ms = lag.get("p99", 0.0) * 1000.0
        depth = self.workers.queue_depth
        avg_latency = realtime.get("avg_latency_ms") or 0.0
        error_rate = realtime.get("error_rate") or 0.0
        self.metrics.set_pool_queue_depth("audio", depth)
        reasons: list[str] = []
        unhealthy: list[str] = []
        if self.shutting_down:
            unhealthy.append("shutting_down")
        if lag_p99_ms > 10 * config.health_max_reactor_lag_ms:
            unhealthy.append("reactor_lag")
        elif lag_p99_ms > config.health_max_reactor_lag_ms:
            reasons.append("reactor_lag")
        if depth > 10 * config.health_max_queue_depth:
            unhealthy.append("audio_queue_depth")
        elif depth > config.health_max_queue_depth:
            reasons.append("audio_queue_depth")
        if avg_latency > config.health_max_latency_ms:
            reasons.append("latency")
        if error_rate > config.health_max_error_rate:
            reasons.append("error_rate")
        for check in self.health_checks:
            reason = check()
            if reason is not None:
                reasons.append(reason)
        status = "unhealthy" if unhealthy else "degraded" if reasons else "healthy"
        return {
            "status": status,
            "reasons": unhealthy + reasons,
            "version": self.version,
            "active_sessions": len(self.registry),
            "node_id": self.node_id,
            # Every figure here is this process's: with --processes N, whichever accepted the request.
            "process": {"pid": os.getpid(), "index": self.process_index, "count": self.process_count},
            "avg_latency_ms": round(avg_latency, 3),
            "error_rate": round(error_rate, 6),
            "reactor_lag_ms": {"p50": round(lag.get("p50", 0.0) * 1000.0, 3), "p99": round(lag_p99_ms, 3)},
            "audio_queue_depth": depth,
            "thresholds": {
                "max_latency_ms": config.health_max_latency_ms,
                "max_error_rate": config.health_max_error_rate,
                "max_reactor_lag_ms": config.health_max_reactor_lag_ms,
                "max_queue_depth": config.health_max_queue_depth,
            },
            "uptime_s": round(time.time() - self.started_at, 3),
            "timestamp": time.time(),
        }
