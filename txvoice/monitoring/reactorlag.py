"""
Reactor lag probe: how late timed calls run, which is how long the reactor thread was busy.

A ``LoopingCall`` (``withCount``) ticks every ``interval`` seconds.  Each call was scheduled for
the first interval boundary after the previous call, so with ``k`` the total intervals counted
and ``count`` those elapsed since the last call, the scheduled time is
``start + (k - count + 1) * interval`` and the lag is now minus that (exact even when a stall
swallows several ticks).  p50/p99/max are kept over the last ``window`` seconds.

On a shared machine part of a lag is not this process's doing: its thread was runnable but waited
for a CPU that another process had.  Given ``cpu_wait`` (cumulative seconds the reactor thread
waited on a run queue; :func:`runqueue_wait` reads Linux's ``/proc/thread-self/schedstat``), each
sample is also reported less the run-queue wait since the previous one, to ``on_own_sample``: what
this process itself held the reactor for (busy code, a blocking call, the GIL), which is what a
test of "nothing here blocks the reactor" can hold to a figure on a machine it shares.  The run
queue wait of an interval may also have fallen before the tick was due, so the own figure can
undercount a stall that coincides with CPU contention; it never counts the machine's.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["ReactorLagProbe", "percentile", "runqueue_wait"]

log = Logger(namespace="txvoice.monitoring.reactorlag")


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (``fraction`` in [0, 1]); 0.0 if empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


#: Linux: the calling thread's time on a CPU, time waiting on a run queue (ns), timeslices.
SCHEDSTAT = "/proc/thread-self/schedstat"


def runqueue_wait() -> float:
    """Seconds the calling thread has waited for a CPU so far (Linux schedstat's second field)."""
    with open(SCHEDSTAT, "rb") as f:
        return int(f.read().split()[1]) / 1e9


def runqueue_wait_available() -> bool:
    try:
        runqueue_wait()
    except (OSError, ValueError, IndexError):
        return False
    return True


class ReactorLagProbe(Service):
    """Samples reactor lag; ``stats()`` gives p50/p99/max in seconds over the window."""

    name = "txvoice-reactor-lag"  # type: ignore[assignment]  # Twisted declares Service.name as None

    def __init__(
        self,
        clock: IReactorTime | None = None,
        interval: float = 0.25,
        window: float = 60.0,
        on_sample: Callable[[float], object] | None = None,
        warn_above: float = 0.5,
        cpu_wait: Callable[[], float] | None = None,
        on_own_sample: Callable[[float], object] | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._clock: IReactorTime = clock  # type: ignore[assignment]
        self.interval = interval
        self.warn_above = warn_above
        self._on_sample = on_sample
        self._cpu_wait = cpu_wait
        self._on_own_sample = on_own_sample
        self._waited = 0.0
        self._samples: deque[float] = deque(maxlen=max(1, int(round(window / interval))))
        self._intervals = 0
        self._loop: LoopingCall | None = None
        self.last = 0.0
        self.own_last = 0.0

    def startService(self) -> None:
        super().startService()
        self._intervals = 0
        if self._cpu_wait is not None:
            self._waited = self._cpu_wait()
        self._loop = LoopingCall.withCount(self._tick)
        self._loop.clock = self._clock
        d = self._loop.start(self.interval, now=False)
        d.addErrback(lambda f: log.failure("reactor lag probe stopped", f))

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def _tick(self, count: int) -> None:
        assert self._loop is not None and self._loop.starttime is not None
        self._intervals += count
        scheduled = self._loop.starttime + (self._intervals - count + 1) * self.interval
        lag = self._clock.seconds() - scheduled
        lag = lag if lag > 0.0 else 0.0
        self.record(lag)
        if self._cpu_wait is not None:
            waited, self._waited = self._waited, self._cpu_wait()
            own = lag - (self._waited - waited)
            self.own_last = own if own > 0.0 else 0.0
            if self._on_own_sample is not None:
                self._on_own_sample(self.own_last)

    def record(self, lag: float) -> None:
        """Add one lag sample (seconds)."""
        self.last = lag
        self._samples.append(lag)
        if self._on_sample is not None:
            self._on_sample(lag)
        if lag > self.warn_above:
            log.warn("reactor lagged {lag_ms:.0f} ms behind schedule", lag_ms=lag * 1000.0, lag=lag)

    def stats(self) -> dict[str, float]:
        """``{"p50", "p99", "max", "last", "samples"}`` over the window (seconds)."""
        values = sorted(self._samples)
        return {
            "p50": percentile(values, 0.50),
            "p99": percentile(values, 0.99),
            "max": values[-1] if values else 0.0,
            "last": self.last,
            "samples": len(values),
        }
