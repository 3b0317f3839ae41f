"""
Prometheus metrics of one server, on its own ``CollectorRegistry``.

A dedicated registry (not ``prometheus_client.REGISTRY``) lets tests and several servers in one
process each have their own metrics.  Label children used on the per-message path are bound
once here, so an increment is a locked float add with no label lookup.

``GET /metrics`` is served by :func:`MetricsResource`, prometheus_client's own twisted resource
(a WSGI app on the reactor's thread pool); it is imported lazily because importing
``prometheus_client.twisted`` installs the default reactor.
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

__all__ = [
    "STAGES",
    "REFUSAL_REASONS",
    "LATENCY_BUCKETS",
    "LAG_BUCKETS",
    "VoiceMetrics",
    "MetricsResource",
]

#: Pipeline stages with a latency histogram.
STAGES = ("stt", "agent", "tts", "first_audio", "total", "barge_in")

#: Refusal reasons bound up front (others are bound on first use).
REFUSAL_REASONS = (
    "too_many_connections_per_ip",
    "server_full",
    "origin_not_allowed",
    "auth_failed",
    "rate_limited",
)

LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: At most this many distinct error codes get their own series; the rest count as "other".
_MAX_ERROR_CODES = 64


@dataclass
class Traffic:
    """Per-message totals the server keeps itself (see ``VoiceMetrics(traffic=...)``)."""

    messages: dict[tuple[str, str], int]
    message_bytes: dict[tuple[str, str], int]
    audio_frames: dict[str, int]


class _TrafficCollector:
    """Exposes :class:`Traffic` totals as the ``messages``/``message_bytes``/``audio_frames`` counters."""

    def __init__(self, traffic: "Callable[[], Traffic]", namespace: str) -> None:
        self._traffic = traffic
        self._ns = namespace

    def describe(self) -> list:
        return []

    def collect(self):
        t = self._traffic()
        ns = self._ns
        messages = CounterMetricFamily(f"{ns}_messages", "WebSocket messages", labels=["direction", "kind"])
        for (direction, kind), n in t.messages.items():
            messages.add_metric([direction, kind], n)
        nbytes = CounterMetricFamily(f"{ns}_message_bytes", "WebSocket payload bytes", labels=["direction", "kind"])
        for (direction, kind), n in t.message_bytes.items():
            nbytes.add_metric([direction, kind], n)
        frames = CounterMetricFamily(f"{ns}_audio_frames", "Audio frames", labels=["direction"])
        for direction, n in t.audio_frames.items():
            frames.add_metric([direction], n)
        return [messages, nbytes, frames]


class _PoolCollector:
    """Batches handed to each worker pool and the items they carried, read from the pools at scrape time."""

    def __init__(self, namespace: str) -> None:
        self._ns = namespace
        self.pools: dict[str, Callable[[], tuple[int, int, int]]] = {}

    def describe(self) -> list:
        return []

    def collect(self):
        batches = CounterMetricFamily(f"{self._ns}_pool_batches", "Batches handed to a worker pool's threads",
                                      labels=["pool"])
        items = CounterMetricFamily(f"{self._ns}_pool_batch_items",
                                    "Items those batches carried (items / batches: frames per thread hop)",
                                    labels=["pool"])
        inline = CounterMetricFamily(f"{self._ns}_pool_inline_batches",
                                     "Of those batches, the ones run on the reactor instead of a hop (--audio-inline-max)",
                                     labels=["pool"])
        for pool, read in self.pools.items():
            handed, carried, on_reactor = read()
            batches.add_metric([pool], handed)
            items.add_metric([pool], carried)
            inline.add_metric([pool], on_reactor)
        return [batches, items, inline]


class VoiceMetrics:
    """All txvoice metrics plus cheap recording methods for the server's hot paths."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "txvoice",
        process_metrics: bool = False,
        traffic: "Callable[[], Traffic] | None" = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, ns = self.registry, namespace
        self.traffic = traffic
        if process_metrics:
            from prometheus_client import PlatformCollector, ProcessCollector

            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

        self.connections = Counter("connections", "WebSocket connections accepted",
                                   namespace=ns, registry=r)
        self.connections_active = Gauge("connections_active", "WebSocket connections open now",
                                        namespace=ns, registry=r)
        self.connections_refused = Counter("connections_refused", "Connections refused, by reason",
                                           ["reason"], namespace=ns, registry=r)
        if traffic is not None:
            # The server keeps per-message counts as plain integers; read them at scrape time.
            r.register(_TrafficCollector(traffic, ns))
            registry_for_traffic = None
        else:
            registry_for_traffic = r
        self.messages = Counter("messages", "WebSocket messages", ["direction", "kind"],
                                namespace=ns, registry=registry_for_traffic)
        self.message_bytes = Counter("message_bytes", "WebSocket payload bytes",
                                     ["direction", "kind"], namespace=ns, registry=registry_for_traffic)
        self.audio_frames = Counter("audio_frames", "Audio frames", ["direction"],
                                    namespace=ns, registry=registry_for_traffic)
        self.errors = Counter("errors", "Errors sent to clients, by code", ["code"],
                              namespace=ns, registry=r)
        self.reconnections = Counter("reconnections", "Sessions resumed after a reconnect",
                                     namespace=ns, registry=r)
        self.heartbeat_drops = Counter("heartbeat_drops",
                                       "Connections dropped for missed heartbeats",
                                       namespace=ns, registry=r)
        self.output_dropped = Counter("output_dropped",
                                      "Messages to congested clients dropped (over output_buffer_soft_limit), by kind",
                                      ["kind"], namespace=ns, registry=r)
        self.output_congested = Counter("output_congested",
                                        "Times a connection went over output_buffer_soft_limit",
                                        namespace=ns, registry=r)
        self.output_overflow_closes = Counter("output_overflow_closes",
                                              "Connections closed (4006) for going over max_output_buffer",
                                              namespace=ns, registry=r)
        self._dropped_audio = self.output_dropped.labels("audio")
        self._dropped_metrics = self.output_dropped.labels("metrics")
        self.stage_latency = Histogram("stage_latency_seconds", "Latency per pipeline stage",
                                       ["stage"], buckets=LATENCY_BUCKETS, namespace=ns,
                                       registry=r)
        self.reactor_lag = Histogram("reactor_lag_seconds",
                                     "Delay of timed calls behind schedule",
                                     buckets=LAG_BUCKETS, namespace=ns, registry=r)
        self.reactor_lag_own = Histogram("reactor_lag_own_seconds",
                                         "Reactor lag less the time its thread waited for a CPU (Linux): "
                                         "how long this process itself held the reactor",
                                         buckets=LAG_BUCKETS, namespace=ns, registry=r)
        self.pool_queue_depth = Gauge("pool_queue_depth", "Jobs waiting in a worker pool",
                                      ["pool"], namespace=ns, registry=r)
        self._pool_batches = _PoolCollector(ns)
        r.register(self._pool_batches)

        # Pre-bound children for the hot paths.
        self._in_text = self.messages.labels("in", "text")
        self._in_binary = self.messages.labels("in", "binary")
        self._out_text = self.messages.labels("out", "text")
        self._out_binary = self.messages.labels("out", "binary")
        self._in_text_bytes = self.message_bytes.labels("in", "text")
        self._in_binary_bytes = self.message_bytes.labels("in", "binary")
        self._out_text_bytes = self.message_bytes.labels("out", "text")
        self._out_binary_bytes = self.message_bytes.labels("out", "binary")
        self._frames_in = self.audio_frames.labels("in")
        self._frames_out = self.audio_frames.labels("out")
        self._stages = {stage: self.stage_latency.labels(stage) for stage in STAGES}
        self._refused = {reason: self.connections_refused.labels(reason) for reason in REFUSAL_REASONS}
        self._errors: dict[str, Any] = {}
        self._pools: dict[str, Any] = {}

    # Connection lifecycle -------------------------------------------------------------------

    def connection_opened(self) -> None:
        """A WebSocket handshake completed."""
        self.connections.inc()
        self.connections_active.inc()

    def connection_closed(self) -> None:
        """A connection counted by :meth:`connection_opened` ended."""
        self.connections_active.dec()

    def connection_refused(self, reason: str) -> None:
        """A connection was refused (handshake denied) for ``reason``."""
        child = self._refused.get(reason)
        if child is None:
            child = self._refused[reason] = self.connections_refused.labels(reason)
        child.inc()

    def reconnection(self) -> None:
        """A session was resumed on a new connection."""
        self.reconnections.inc()

    def heartbeat_drop(self) -> None:
        """A connection was closed for missing heartbeats."""
        self.heartbeat_drops.inc()

    def output_drop(self, kind: str) -> None:
        """A droppable message (``audio`` or ``metrics``) was not sent to a congested client."""
        (self._dropped_audio if kind == "audio" else self._dropped_metrics if kind == "metrics"
         else self.output_dropped.labels(kind)).inc()

    # Per message ----------------------------------------------------------------------------

    def message_in(self, nbytes: int, binary: bool) -> None:
        """One inbound WebSocket message of ``nbytes`` payload bytes."""
        if binary:
            self._in_binary.inc()
            self._in_binary_bytes.inc(nbytes)
        else:
            self._in_text.inc()
            self._in_text_bytes.inc(nbytes)

    def message_out(self, nbytes: int, binary: bool) -> None:
        """One outbound WebSocket message of ``nbytes`` payload bytes."""
        if binary:
            self._out_binary.inc()
            self._out_binary_bytes.inc(nbytes)
        else:
            self._out_text.inc()
            self._out_text_bytes.inc(nbytes)

    def audio_frame_in(self, count: int = 1) -> None:
        """Audio frames decoded from a client."""
        self._frames_in.inc(count)

    def audio_frame_out(self, count: int = 1) -> None:
        """Audio frames encoded for a client."""
        self._frames_out.inc(count)

    def error(self, code: str) -> None:
        """An error with protocol ``code`` was reported to a client."""
        child = self._errors.get(code)
        if child is None:
            if len(self._errors) >= _MAX_ERROR_CODES:
                code = "other"
                child = self._errors.get(code)
            if child is None:
                child = self._errors[code] = self.errors.labels(code)
        child.inc()

    # Latency and load -----------------------------------------------------------------------

    def observe_latency(self, stage: str, seconds: float) -> None:
        """Record how long pipeline ``stage`` (one of :data:`STAGES`) took."""
        child = self._stages.get(stage)
        if child is None:
            raise ValueError(f"unknown pipeline stage {stage!r}")
        child.observe(seconds)

    def observe_reactor_lag(self, seconds: float) -> None:
        """Record one reactor lag sample (see :mod:`txvoice.monitoring.reactorlag`)."""
        self.reactor_lag.observe(seconds)

    def observe_reactor_lag_own(self, seconds: float) -> None:
        """Record one reactor lag sample less the run-queue wait (see :mod:`txvoice.monitoring.reactorlag`)."""
        self.reactor_lag_own.observe(seconds)

    def set_pool_queue_depth(self, pool: str, depth: int) -> None:
        """Set how many jobs wait in worker pool ``pool``."""
        child = self._pools.get(pool)
        if child is None:
            child = self._pools[pool] = self.pool_queue_depth.labels(pool)
        child.set(depth)

    def watch_pool_batches(self, pool: str, read: Callable[[], tuple[int, int, int]]) -> None:
        """Expose ``read()`` -> (batches, items, batches run inline so far) of worker pool ``pool`` as counters."""
        self._pool_batches.pools[pool] = read

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def MetricsResource(registry: CollectorRegistry) -> Any:
    """
    A twisted.web resource serving ``registry`` for ``GET /metrics``
    (``prometheus_client.twisted.MetricsResource``; it renders on the reactor's thread pool).
    """
    from prometheus_client.twisted import MetricsResource as _Resource

    return _Resource(registry)
