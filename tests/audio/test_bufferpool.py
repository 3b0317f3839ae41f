"""Tests for txvoice.audio.bufferpool: bounds, reuse, cleanup, thread safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from txvoice.audio.bufferpool import AudioBufferPool, PoolStats


class Clock:
    """A settable clock for deterministic cleanup."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_released_buffer_is_reused() -> None:
    pool = AudioBufferPool(4, 60)
    a = pool.acquire(320)
    assert a.shape == (320,) and a.dtype == np.int16
    pool.release(a)
    b = pool.acquire(320)
    assert b is a
    assert pool.stats == PoolStats(hits=1, misses=1, in_use=1, idle=0, overflow=0, trimmed=0)


def test_buffers_are_keyed_by_size_and_dtype() -> None:
    pool = AudioBufferPool(8, 60)
    a = pool.acquire(320)
    pool.release(a)
    assert pool.acquire(160) is not a
    assert pool.acquire(320, np.float32) is not a
    c = pool.acquire(320, np.int16)
    assert c is a


def test_most_recently_released_first() -> None:
    pool = AudioBufferPool(8, 60)
    a, b = pool.acquire(10), pool.acquire(10)
    pool.release(a)
    pool.release(b)
    assert pool.acquire(10) is b


def test_bounded_pooled_buffers_and_overflow_is_not_kept() -> None:
    pool = AudioBufferPool(2, 60)
    bufs = [pool.acquire(320) for _ in range(3)]
    assert pool.stats.in_use == 3 and pool.stats.overflow == 1
    for buf in bufs:
        pool.release(buf)
    assert pool.stats.idle == 2  # the overflow buffer was dropped
    assert {id(pool.acquire(320)) for _ in range(2)} == {id(bufs[0]), id(bufs[1])}


def test_a_full_pool_evicts_the_oldest_idle_buffer_for_a_new_size() -> None:
    clock = Clock()
    pool = AudioBufferPool(2, 60, clock=clock)
    a, b = pool.acquire(100), pool.acquire(200)
    pool.release(a)
    clock.now += 1
    pool.release(b)
    c = pool.acquire(300)  # no room: the idle 100-sample buffer goes
    assert pool.stats == PoolStats(hits=0, misses=3, in_use=1, idle=1, overflow=0, trimmed=1)
    pool.release(c)
    assert pool.acquire(200) is b


def test_cleanup_trims_idle_buffers_by_age() -> None:
    clock = Clock()
    pool = AudioBufferPool(8, 30, clock=clock)
    old, new, busy = pool.acquire(10), pool.acquire(10), pool.acquire(10)
    pool.release(old)
    clock.now += 20
    pool.release(new)
    clock.now += 15  # old idle 35 s, new 15 s
    assert pool.cleanup() == 1
    assert pool.stats.idle == 1 and pool.stats.in_use == 1 and pool.stats.trimmed == 1
    assert pool.acquire(10) is new
    pool.release(busy)  # in-use buffers are never trimmed
    assert pool.stats.idle == 1


def test_cleanup_also_runs_by_itself_every_interval() -> None:
    clock = Clock()
    pool = AudioBufferPool(8, 30, clock=clock)
    pool.release(pool.acquire(10))
    clock.now += 29
    pool.acquire(20)
    assert pool.stats.idle == 1
    clock.now += 31
    pool.acquire(20)  # the interval passed: the 10-sample buffer, idle 60 s, is trimmed
    assert pool.stats.idle == 0 and pool.stats.trimmed == 1


def test_release_checks_ownership() -> None:
    pool = AudioBufferPool(4, 60)
    with pytest.raises(ValueError):
        pool.release(np.zeros(10, dtype=np.int16))
    a = pool.acquire(10)
    with pytest.raises(ValueError):
        pool.release(a[:5])  # a view is not the buffer
    pool.release(a)
    with pytest.raises(ValueError):
        pool.release(a)  # twice


def test_zeroed_buffers_and_context_manager() -> None:
    pool = AudioBufferPool(4, 60)
    with pool.buffer(16) as buf:
        buf[:] = 7
    assert pool.stats.in_use == 0
    assert not pool.acquire(16, zero=True).any()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        AudioBufferPool(0, 60)
    with pytest.raises(ValueError):
        AudioBufferPool(4, 0)


def test_threads_share_the_pool_safely() -> None:
    pool = AudioBufferPool(16, 60)
    rounds, threads = 5000, 4
    errors = []

    def work(k: int) -> None:
        try:
            for i in range(rounds):
                buf = pool.acquire(160 * (1 + i % 3))
                buf[:] = k  # a buffer handed to two threads at once would be caught below
                if buf.min() != k or buf.max() != k:
                    errors.append("shared")
                pool.release(buf)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stats = pool.stats
    assert errors == []
    assert stats.hits + stats.misses == rounds * threads
    assert stats.in_use == 0 and stats.overflow == 0
    assert stats.idle <= 16 and stats.misses <= 12
