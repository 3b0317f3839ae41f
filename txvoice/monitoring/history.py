"""
Rolling per-second and per-minute aggregates for dashboards and alerts (S1
``get_real_time_metrics()``, ``get_historical_metrics(minutes=60)``, ``get_connection_details``).

Recording only adds to the current one-second bucket (no clock call, no allocation).  A
``LoopingCall`` closes the bucket every second, samples the gauges (active connections, CPU),
and folds it into the current minute; missed ticks (a stalled reactor) are filled with empty
seconds so the series stays regular.  Prometheus has the long-term counters; this is the
short in-process window the S1 API asks for.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

__all__ = ["ProcessCPUSampler", "MetricsHistory"]

HEADLINE_STAGE = "total"


class ProcessCPUSampler:
    """CPU use of this process, in percent of one core, since the previous call."""

    def __init__(
        self,
        wall: Callable[[], float] = time.monotonic,
        cpu: Callable[[], float] = time.process_time,
    ) -> None:
        self._wall, self._cpu = wall, cpu
        self._last_wall, self._last_cpu = wall(), cpu()

    def __call__(self) -> float:
        wall, cpu = self._wall(), self._cpu()
        dw, dc = wall - self._last_wall, cpu - self._last_cpu
        self._last_wall, self._last_cpu = wall, cpu
        return 100.0 * dc / dw if dw > 0 else 0.0


class _Bucket:
    """Sums over one period (a second or a minute)."""

    __slots__ = (
        "start", "seconds", "messages_in", "messages_out", "bytes_in", "bytes_out", "errors",
        "opened", "closed", "active", "cpu_sum", "cpu_samples", "stages",
    )

    def __init__(self, start: float) -> None:
        self.start = start
        self.seconds = 0
        self.messages_in = self.messages_out = 0
        self.bytes_in = self.bytes_out = 0
        self.errors = self.opened = self.closed = 0
        self.active = 0
        self.cpu_sum = 0.0
        self.cpu_samples = 0
        self.stages: dict[str, list[float]] = {}  # stage -> [count, sum_ms, max_ms]

    def merge(self, other: "_Bucket") -> None:
        self.seconds += other.seconds
        self.messages_in += other.messages_in
        self.messages_out += other.messages_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.errors += other.errors
        self.opened += other.opened
        self.closed += other.closed
        self.active = other.active
        self.cpu_sum += other.cpu_sum
        self.cpu_samples += other.cpu_samples
        for stage, (count, total, peak) in other.stages.items():
            mine = self.stages.get(stage)
            if mine is None:
                self.stages[stage] = [count, total, peak]
            else:
                mine[0] += count
                mine[1] += total
                if peak > mine[2]:
                    mine[2] = peak

    def as_dict(self) -> dict[str, Any]:
        secs = self.seconds or 1
        headline = self.stages.get(HEADLINE_STAGE)
        return {
            "timestamp": self.start,
            "seconds": self.seconds,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "messages_per_second_in": self.messages_in / secs,
            "messages_per_second_out": self.messages_out / secs,
            "errors": self.errors,
            "error_rate": self.errors / self.messages_in if self.messages_in else 0.0,
            "connections_opened": self.opened,
            "connections_closed": self.closed,
            "active_connections": self.active,
            "cpu_percent": self.cpu_sum / self.cpu_samples if self.cpu_samples else None,
            "latency_ms": _latency(headline),
            "stages": {stage: _latency(v) for stage, v in self.stages.items()},
        }


def _latency(v: list[float] | None) -> dict[str, Any]:
    if not v or not v[0]:
        return {"count": 0, "avg": None, "max": None}
    return {"count": int(v[0]), "avg": v[1] / v[0], "max": v[2]}


class MetricsHistory(Service):
    """
    Rolling windows: the last ``seconds`` one-second buckets and the last ``minutes`` minute
    buckets.  Start it (``startService``) for the ticks to run.
    """

    name = "txvoice-metrics-history"

    def __init__(
        self,
        clock: IReactorTime | None = None,
        minutes: int = 60,
        seconds: int = 300,
        realtime_window: int = 60,
        cpu_percent: Callable[[], float] | None = None,
        reactor_lag: Callable[[], Mapping[str, Any]] | None = None,
        connection_details: Callable[[str], Mapping[str, Any] | None] | None = None,
        traffic: Callable[[], tuple[int, int, int, int]] | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock: IReactorTime = clock  # type: ignore[assignment]
        self._seconds: deque[_Bucket] = deque(maxlen=seconds)
        self._minutes: deque[_Bucket] = deque(maxlen=minutes)
        self._realtime_window = min(realtime_window, seconds)
        self._cpu = cpu_percent if cpu_percent is not None else ProcessCPUSampler()
        self._lag = reactor_lag
        self._details = connection_details
        self.active_connections = 0
        now = self._clock.seconds()
        self._current = _Bucket(now)
        self._minute = _Bucket(now)
        self._loop: LoopingCall | None = None
        # Pull-based traffic: (messages_in, bytes_in, messages_out, bytes_out) totals, read once a
        # tick, so the per-message path records nothing here.
        self._traffic = traffic
        self._traffic_seen = traffic() if traffic is not None else (0, 0, 0, 0)

    # Recording (hot path) --------------------------------------------------------------------

    def message_in(self, nbytes: int) -> None:
        b = self._current
        b.messages_in += 1
        b.bytes_in += nbytes

    def message_out(self, nbytes: int) -> None:
        b = self._current
        b.messages_out += 1
        b.bytes_out += nbytes

    def error(self, code: str | None = None) -> None:
        self._current.errors += 1

    def connection_opened(self) -> None:
        self._current.opened += 1
        self.active_connections += 1

    def connection_closed(self) -> None:
        self._current.closed += 1
        if self.active_connections > 0:
            self.active_connections -= 1

    def latency(self, stage: str, seconds: float) -> None:
        """Record one latency of pipeline ``stage`` (``"total"`` is the headline figure)."""
        ms = seconds * 1000.0
        v = self._current.stages.get(stage)
        if v is None:
            self._current.stages[stage] = [1, ms, ms]
        else:
            v[0] += 1
            v[1] += ms
            if ms > v[2]:
                v[2] = ms

    # Ticking ---------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        now = self._clock.seconds()
        self._current.start = now
        self._minute.start = now
        self._loop = LoopingCall.withCount(self.tick)
        self._loop.clock = self._clock
        self._loop.start(1.0, now=False)

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        super().stopService()

    def tick(self, count: int = 1) -> None:
        """Close the current second, plus ``count - 1`` empty ones for ticks the reactor missed."""
        now = self._clock.seconds()
        if self._traffic is not None:
            totals = self._traffic()
            seen = self._traffic_seen
            b = self._current
            b.messages_in += totals[0] - seen[0]
            b.bytes_in += totals[1] - seen[1]
            b.messages_out += totals[2] - seen[2]
            b.bytes_out += totals[3] - seen[3]
            self._traffic_seen = totals
        try:
            cpu: float | None = float(self._cpu())
        except Exception:
            cpu = None
        self._close(self._current, cpu)
        for missed in range(count - 1, 0, -1):
            self._close(_Bucket(now - missed), cpu)
        self._current = _Bucket(now)

    def _close(self, bucket: _Bucket, cpu: float | None) -> None:
        bucket.seconds = 1
        bucket.active = self.active_connections
        if cpu is not None:
            bucket.cpu_sum, bucket.cpu_samples = cpu, 1
        self._seconds.append(bucket)
        if self._minute.seconds == 0:
            self._minute.start = bucket.start
        self._minute.merge(bucket)
        if self._minute.seconds >= 60:
            self._minutes.append(self._minute)
            self._minute = _Bucket(bucket.start + 1.0)

    # Queries ---------------------------------------------------------------------------------

    def get_real_time_metrics(self) -> dict[str, Any]:
        """
        Figures over the last ``realtime_window`` closed seconds: rates, ``error_rate``
        (errors / messages in), ``avg_latency_ms``/``max_latency_ms`` of the ``total`` stage,
        ``cpu_percent`` (window average; ``cpu_percent_last`` is the last second), and the
        current ``active_connections``.
        """
        window = _Bucket(self._clock.seconds())
        recent = list(self._seconds)[-self._realtime_window:] if self._seconds else []
        for b in recent:
            window.merge(b)
        out = window.as_dict()
        out["timestamp"] = self._clock.seconds()
        out["window_seconds"] = len(recent)
        out["active_connections"] = self.active_connections
        last = recent[-1] if recent else None
        out["cpu_percent_last"] = last.cpu_sum if last is not None and last.cpu_samples else None
        out["avg_latency_ms"] = out["latency_ms"]["avg"]
        out["max_latency_ms"] = out["latency_ms"]["max"]
        if self._lag is not None:
            out["reactor_lag"] = dict(self._lag())
        return out

    def get_per_second_metrics(self, seconds: int = 60) -> list[dict[str, Any]]:
        """Closed one-second buckets, oldest first."""
        items = list(self._seconds)
        return [b.as_dict() for b in items[-seconds:]] if seconds > 0 else []

    def get_historical_metrics(self, minutes: int = 60) -> list[dict[str, Any]]:
        """
        Per-minute buckets for the last ``minutes`` minutes, oldest first; the minute in
        progress comes last with ``"partial": True`` when it has any closed seconds.
        """
        if minutes <= 0:
            return []
        items = [dict(b.as_dict(), partial=False) for b in self._minutes]
        if self._minute.seconds:
            items.append(dict(self._minute.as_dict(), partial=True))
        return items[-minutes:]

    def get_connection_details(self, connection_id: str) -> Mapping[str, Any] | None:
        """Details of one connection from the provider the server passed in (None if unknown)."""
        if self._details is None:
            return None
        return self._details(connection_id)
