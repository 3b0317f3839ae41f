"""
What one server counts and measures: process-wide counters (``ServerStats``), the Prometheus
metrics, the reactor-lag probe and the monitoring history, and the calls that feed them.

Every method runs on the reactor thread.  ``VoiceServer`` holds one and hands its record calls to
whoever reports (dialects, services, the pipeline's host).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime

from txvoice.audio.workers import AudioWorkers
from txvoice.config import VoiceConfig
from txvoice.monitoring.history import MetricsHistory
from txvoice.monitoring.metrics import Traffic, VoiceMetrics
from txvoice.monitoring.reactorlag import ReactorLagProbe, runqueue_wait, runqueue_wait_available
from txvoice.session.registry import ISessionRegistry
from txvoice.session.session import Session, SessionCounters


@dataclass
class ServerStats:
    """Process-wide counters (Prometheus export reads these)."""

    connections_total: int = 0
    connections_refused: dict[str, int] = field(default_factory=dict)
    heartbeat_drops: int = 0
    resumes: int = 0
    rate_limit_closes: dict[str, int] = field(default_factory=dict)
    closed_sessions: SessionCounters = field(default_factory=SessionCounters)
    reaped: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


class Telemetry:
    """Counters, metrics, reactor lag and history of one server process."""

    def __init__(self, config: VoiceConfig, clock: IReactorTime, registry: ISessionRegistry,
                 workers: AudioWorkers) -> None:
        self.registry = registry
        self.workers = workers
        self.stats = ServerStats()
        self.barge_in_delays_ms: list[float] = []
        self.metrics = VoiceMetrics(traffic=self.traffic)
        self.metrics.watch_pool_batches("audio", lambda: (self.workers.batches, self.workers.items, self.workers.inline_batches))
        self.lag = ReactorLagProbe(clock, interval=config.reactor_lag_interval, on_sample=self.metrics.observe_reactor_lag,
                                   cpu_wait=runqueue_wait if runqueue_wait_available() else None,
                                   on_own_sample=self.metrics.observe_reactor_lag_own)
        self.history = MetricsHistory(
            clock,
            minutes=config.history_minutes,
            reactor_lag=self.lag.stats,
            connection_details=self.connection_details,
            traffic=self.traffic_totals,
        )

    # accounting (reactor thread)

    def record_refused(self, reason: str) -> None:
        self.stats.count(self.stats.connections_refused, reason)
        self.metrics.connection_refused(reason)

    def record_error(self, code: str) -> None:
        self.stats.count(self.stats.errors, code)
        self.metrics.error(code)
        self.history.error(code)

    def record_latency(self, stage: str, seconds: float) -> None:
        self.metrics.observe_latency(stage, seconds)
        self.history.latency(stage, seconds)

    def record_barge_in(self, delay_ms: float | None) -> None:
        if delay_ms is not None:
            self.barge_in_delays_ms.append(delay_ms)
            del self.barge_in_delays_ms[:-1000]
            self.metrics.observe_latency("barge_in", delay_ms / 1000.0)

    def connection_opened(self, session: Session) -> None:
        self.stats.connections_total += 1
        self.metrics.connection_opened()
        self.history.connection_opened()

    def connection_closed(self, session: Session) -> None:
        self.stats.closed_sessions.add(session.counters)
        self.metrics.connection_closed()
        self.history.connection_closed()

    def session_totals(self) -> SessionCounters:
        """Counters of every session, live and closed, added up (read at scrape time only)."""
        total = SessionCounters()
        total.add(self.stats.closed_sessions)
        for session in self.registry:
            total.add(session.counters)
        return total

    def traffic(self) -> Traffic:
        t = self.session_totals()
        return Traffic(
            messages={("in", "text"): t.text_in, ("in", "binary"): t.binary_in,
                      ("out", "text"): t.text_out, ("out", "binary"): t.binary_out},
            message_bytes={("in", "text"): t.text_bytes_in, ("in", "binary"): t.binary_bytes_in,
                           ("out", "text"): t.text_bytes_out, ("out", "binary"): t.binary_bytes_out},
            audio_frames={"in": t.audio_frames_in, "out": t.audio_frames_out},
        )

    def traffic_totals(self) -> tuple[int, int, int, int]:
        t = self.session_totals()
        return (t.messages_in, t.bytes_in, t.messages_out, t.bytes_out)

    def connection_details(self, session_id: str) -> dict[str, Any] | None:
        session = self.registry.get(session_id)
        return session.as_dict() if session is not None else None
