"""
A bounded pool of preallocated numpy buffers shared by the audio worker threads (S1
``AudioBufferPool(max_buffers, cleanup_interval)``).

Streams of the same format ask for the same sizes over and over (a 20 ms frame at 16 kHz, a
decoded Opus packet at 48 kHz ...), so handing back a released buffer avoids an allocation and
keeps memory flat under load.  At most ``max_buffers`` pooled buffers exist at once; past that
:meth:`AudioBufferPool.acquire` still succeeds with a throw-away buffer, because dropping audio
is worse than one allocation.  Buffers idle for ``cleanup_interval`` seconds are trimmed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["PoolStats", "AudioBufferPool"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of an :class:`AudioBufferPool`'s counters."""

    hits: int  # acquire() served from an idle buffer
    misses: int  # acquire() had to allocate
    in_use: int  # handed out and not released yet (pooled and overflow)
    idle: int  # pooled buffers waiting to be reused
    overflow: int  # buffers allocated past max_buffers (dropped when released)
    trimmed: int  # idle buffers removed by cleanup or to make room


class AudioBufferPool:
    """
    Thread-safe, bounded pool of 1-D numpy buffers keyed by ``(size, dtype)``.

    One lock guards everything: the critical sections are a few list operations, uncontended
    acquire+release costs about 1 µs (see ``bench/bench_signal.py``), far below the per-frame
    work, so per-thread free lists would buy little and make cleanup and bounds harder.

    ``clock`` returns seconds; inject a fake one to make cleanup deterministic in tests.
    """

    def __init__(
        self,
        max_buffers: int = 256,
        cleanup_interval: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_buffers < 1:
            raise ValueError("max_buffers must be at least 1")
        if cleanup_interval <= 0:
            raise ValueError("cleanup_interval must be positive")
        self.max_buffers = max_buffers
        self.cleanup_interval = cleanup_interval
        self._clock = clock
        self._lock = threading.Lock()
        # Per key, idle buffers and the time each was released, oldest first.
        self._idle: dict[tuple[int, np.dtype], list[tuple[float, np.ndarray]]] = {}
        # id(buffer) -> (buffer, pooled?); holding the buffer keeps its id from being reused.
        self._in_use: dict[int, tuple[np.ndarray, bool]] = {}
        self._pooled = 0  # pooled buffers in existence, idle or in use
        self._idle_count = 0
        self._next_cleanup = clock() + cleanup_interval
        self._hits = self._misses = self._overflow = self._trimmed = 0

    def acquire(self, size: int, dtype: npt.DTypeLike = np.int16, *, zero: bool = False) -> np.ndarray:
        """
        A 1-D buffer of exactly ``size`` elements; its content is whatever the last user left
        unless ``zero``.  Give the same array object back with :meth:`release`.
        """
        key = (int(size), np.dtype(dtype))
        with self._lock:
            now = self._clock()
            if now >= self._next_cleanup:
                self._cleanup(now)
            idle = self._idle.get(key)
            if idle:
                buf = idle.pop()[1]
                self._idle_count -= 1
                self._hits += 1
                self._in_use[id(buf)] = (buf, True)
                if zero:
                    buf.fill(0)
                return buf
            self._misses += 1
            if self._pooled >= self.max_buffers and self._idle_count:
                self._evict_oldest()  # make room: an idle buffer of another size goes
            pooled = self._pooled < self.max_buffers
            if pooled:
                self._pooled += 1
            else:
                self._overflow += 1
        buf = (np.zeros if zero else np.empty)(key[0], dtype=key[1])  # allocate outside the lock
        with self._lock:
            self._in_use[id(buf)] = (buf, pooled)
        return buf

    def release(self, buf: np.ndarray) -> None:
        """Return a buffer from :meth:`acquire`; ``ValueError`` for one not handed out (or twice)."""
        with self._lock:
            entry = self._in_use.get(id(buf))
            if entry is None or entry[0] is not buf:
                raise ValueError("buffer was not acquired from this pool or was already released")
            del self._in_use[id(buf)]
            pooled = entry[1]
            if not pooled:
                return
            now = self._clock()
            self._idle.setdefault((len(buf), buf.dtype), []).append((now, buf))
            self._idle_count += 1
            if now >= self._next_cleanup:
                self._cleanup(now)

    @contextmanager
    def buffer(self, size: int, dtype: npt.DTypeLike = np.int16) -> Iterator[np.ndarray]:
        """``with pool.buffer(n) as buf:`` -- acquire and always release."""
        buf = self.acquire(size, dtype)
        try:
            yield buf
        finally:
            self.release(buf)

    def cleanup(self) -> int:
        """Trim buffers idle for ``cleanup_interval`` seconds or more; return how many went."""
        with self._lock:
            return self._cleanup(self._clock())

    def _cleanup(self, now: float) -> int:
        cutoff = now - self.cleanup_interval
        removed = 0
        for key in list(self._idle):
            idle = self._idle[key]
            stale = 0
            while stale < len(idle) and idle[stale][0] <= cutoff:
                stale += 1
            if stale:
                del idle[:stale]
                removed += stale
            if not idle:
                del self._idle[key]
        self._forget(removed)
        self._next_cleanup = now + self.cleanup_interval
        return removed

    def _evict_oldest(self) -> None:
        key = min(self._idle, key=lambda k: self._idle[k][0][0])
        idle = self._idle[key]
        del idle[0]
        if not idle:
            del self._idle[key]
        self._forget(1)

    def _forget(self, count: int) -> None:
        self._idle_count -= count
        self._pooled -= count
        self._trimmed += count

    @property
    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(
                hits=self._hits,
                misses=self._misses,
                in_use=len(self._in_use),
                idle=self._idle_count,
                overflow=self._overflow,
                trimmed=self._trimmed,
            )
