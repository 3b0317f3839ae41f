"""
The baselines' reactor-lag probe: the method of txvoice's own (``txvoice/monitoring/reactorlag.py``).

A timer ticks every ``interval`` seconds (txvoice's interval: 0.25 s).  Each tick was due at the
first interval boundary after the previous tick, ``start + (k - count + 1) * interval`` with ``k``
the intervals counted so far and ``count`` those elapsed since the last tick (Twisted's
``LoopingCall.withCount`` arithmetic, exact even when a stall swallows several ticks); the lag is
now minus that, 0 when negative.  A tick that fires before its boundary is not a sample: it is
rescheduled, as ``LoopingCall`` does.

Every sample goes into a cumulative histogram with txvoice's buckets (``LAG_BUCKETS`` of
``txvoice/monitoring/metrics.py``, exported there as ``txvoice_reactor_lag_seconds``) and into a
list, so ``bench/run.py`` reads both servers the same way: the histogram before and after the
measured window, and here also the exact samples of the window.  ``GET /lag?since=K`` answers

    {"interval": 0.25, "count": N, "sum": S, "buckets": [[le, cumulative count], ...],
     "samples": [lag seconds of samples K, K+1, ..., N-1]}

(``since`` omitted or negative: no samples, just the totals).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

#: txvoice's reactor_lag_seconds buckets (txvoice/monitoring/metrics.py, LAG_BUCKETS).
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: txvoice's probe interval (ReactorLagProbe's default, the one txvoice runs).
INTERVAL = 0.25
MAX_SAMPLES = 200_000


class LagRecorder:
    """Samples in a cumulative histogram (txvoice's buckets) and a list."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.count = 0
        self.sum = 0.0
        self.bucket_counts = [0] * (len(LAG_BUCKETS) + 1)  # the last one is +Inf
        self.samples: list[float] = []

    def record(self, lag: float) -> None:
        self.count += 1
        self.sum += lag
        for i, le in enumerate(LAG_BUCKETS):
            if lag <= le:
                self.bucket_counts[i] += 1
                break
        else:
            self.bucket_counts[-1] += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(lag)

    def document(self, since: int | None) -> dict[str, Any]:
        cumulative, total = [], 0
        for le, n in zip([*LAG_BUCKETS, float("inf")], self.bucket_counts):
            total += n
            cumulative.append(["+Inf" if le == float("inf") else le, total])
        doc: dict[str, Any] = {"interval": self.interval, "count": self.count, "sum": self.sum, "buckets": cumulative}
        if since is not None and since >= 0:
            doc["samples"] = self.samples[since:]
        return doc

    def http_body(self, query: dict[str, list[str]] | dict[str, str]) -> bytes:
        raw = query.get("since")
        if isinstance(raw, list):
            raw = raw[0] if raw else None
        try:
            since = int(raw) if raw is not None else None
        except ValueError:
            since = None
        return json.dumps(self.document(since)).encode("utf-8")


class _Schedule:
    """``LoopingCall.withCount``'s bookkeeping: which tick is due, how late this one is."""

    def __init__(self, start: float, interval: float) -> None:
        self.start = start
        self.interval = interval
        self.last: float | None = None  # time of the last tick that counted
        self.intervals = 0

    def _interval_of(self, t: float) -> int:
        return int((t - self.start) / self.interval)

    def tick(self, now: float) -> float | None:
        """The lag of a tick at ``now`` (None: it fired before its boundary, no sample)."""
        last = self.start if self.last is None else self.last
        count = self._interval_of(now) - self._interval_of(last)
        if count <= 0:
            return None
        self.last = now
        self.intervals += count
        scheduled = self.start + (self.intervals - count + 1) * self.interval
        lag = now - scheduled
        return lag if lag > 0.0 else 0.0

    def delay_from(self, now: float) -> float:
        """Seconds from ``now`` to the next interval boundary (LoopingCall._scheduleFrom)."""
        running = now - self.start
        until = self.interval - (running % self.interval)
        return self.interval if now == now + until else until


def start_twisted(reactor: Any, recorder: LagRecorder) -> Any:
    """txvoice's probe itself, in effect: ``LoopingCall.withCount`` on the reactor's clock."""
    from twisted.internet.task import LoopingCall

    state: dict[str, Any] = {"intervals": 0}

    def tick(count: int) -> None:
        state["intervals"] += count
        scheduled = loop.starttime + (state["intervals"] - count + 1) * recorder.interval
        lag = reactor.seconds() - scheduled
        recorder.record(lag if lag > 0.0 else 0.0)

    loop = LoopingCall.withCount(tick)
    loop.clock = reactor
    loop.start(recorder.interval, now=False)
    return loop


def start_asyncio(loop: Any, recorder: LagRecorder, clock: Callable[[], float] = time.monotonic) -> None:
    """The same on an asyncio (uvloop) loop; times from ``clock``, not the loop's cached time."""
    schedule = _Schedule(clock(), recorder.interval)

    def fire() -> None:
        now = clock()
        lag = schedule.tick(now)
        if lag is not None:
            recorder.record(lag)
        after = clock()
        loop.call_later(schedule.delay_from(after), fire)

    loop.call_later(schedule.delay_from(schedule.start), fire)
