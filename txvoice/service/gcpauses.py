"""
Time the garbage collector's collections (``gc.callbacks``), per generation.

Every collection holds the GIL from start to end, so while one runs (on whichever thread's
allocation triggered it) the reactor does nothing.  :class:`GCPauses` notes each collection's
duration per generation (count, total, largest), logs every one longer than a bound
with the thread it ran on, and a summary when removed.  A callback costs ~1 µs per collection
(generation 0 runs every ~700 net allocations).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any, Callable

from twisted.logger import Logger


class GCPauses:
    """Collections' durations per generation while installed; ``log_over_ms`` > 0 logs each longer one."""

    def __init__(self, log: Logger, log_over_ms: float = 0.0, timer: Callable[[], float] = time.perf_counter) -> None:
        self.log = log
        self.log_over_ms = log_over_ms
        self.timer = timer
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]
        self._started: float | None = None

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
            self.log.info("garbage collections: {summary}", summary=self.summary(), gc_pauses=self.stats())

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self.timer()
            return
        started, self._started = self._started, None
        if started is None:
            return
        ms = (self.timer() - started) * 1000.0
        gen = info.get("generation", 2)
        self.count[gen] += 1
        self.total_ms[gen] += ms
        if ms > self.max_ms[gen]:
            self.max_ms[gen] = ms
        if self.log_over_ms > 0 and ms > self.log_over_ms:
            self.log.info("garbage collection of generation {generation} took {ms:.1f} ms on {thread}"
                          " ({collected} collected, {frozen} frozen)",
                          generation=gen, ms=ms, thread=threading.current_thread().name,
                          collected=info.get("collected", 0), frozen=gc.get_freeze_count())

    def stats(self) -> dict[str, Any]:
        return {f"gen{g}": {"count": self.count[g], "total_ms": round(self.total_ms[g], 2),
                            "max_ms": round(self.max_ms[g], 2)} for g in range(3)}

    def summary(self) -> str:
        return "; ".join(f"gen{g} {self.count[g]} in {self.total_ms[g]:.0f} ms (largest {self.max_ms[g]:.1f} ms)"
                         for g in range(3))


__all__ = ["GCPauses"]
