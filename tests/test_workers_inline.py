"""--audio-inline-max: small batches of cheap items run on the reactor when their shard is idle."""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import numpy as np
import pytest
from twisted.internet.task import Clock

from txvoice.audio import native
from txvoice.audio.format import AudioFormat
from txvoice.audio.ingest import StreamIngest, StreamSettings, inline_capable, prepare_batch
from txvoice.audio.workers import AUTO_INLINE_MAX, AudioWorkers, inline_limit


class ThreadClock(Clock):
    """A deterministic reactor whose callFromThread queues the call for :meth:`pump`."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.arrived = threading.Event()
        self.lock = threading.Lock()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        with self.lock:
            self.from_threads.append((f, args))
        self.arrived.set()

    def deliver(self) -> None:
        """Wait for the worker's batch result and run it (as the reactor would)."""
        assert self.arrived.wait(5)
        with self.lock:
            calls, self.from_threads = self.from_threads, []
            self.arrived.clear()
        for f, args in calls:
            f(*args)


def workers(limit: int, cheap: Callable[[Any], bool]) -> tuple[AudioWorkers, ThreadClock]:
    clock = ThreadClock()
    pool = AudioWorkers(clock, threads=1, inline_max=limit, cheap=cheap)
    pool.startService()
    return pool, clock


def stop(pool: AudioWorkers, clock: ThreadClock) -> None:
    for shard in pool._shards:
        shard.jobs.put(None)
    for thread in pool._threads:
        thread.join(5)


def test_a_small_cheap_batch_runs_on_the_reactor_at_the_flush() -> None:
    pool, clock = workers(2, lambda item: True)
    try:
        ran: list[str] = []
        got: list[int] = []

        def work(n: int) -> int:
            ran.append(threading.current_thread().name)
            return n

        pool.submit(0, work, 1, got.append)
        pool.submit(0, work, 2, got.append)
        assert got == []  # not at submit: at the reactor turn's flush, with the others of the turn
        clock.advance(0)
        assert got == [1, 2] and ran == [threading.current_thread().name] * 2
        assert pool.inline_batches == 1 and pool.batches == 1 and pool.items == 2
        # Three items are over the limit: they hop, in order.
        for n in (3, 4, 5):
            pool.submit(0, work, n, got.append)
        clock.advance(0)
        clock.deliver()
        assert got == [1, 2, 3, 4, 5] and ran[2:] == ["txvoice-audio-0"] * 3
        assert pool.inline_batches == 1 and pool.batches == 2
    finally:
        stop(pool, clock)


def test_an_item_that_is_not_cheap_makes_its_batch_hop() -> None:
    pool, clock = workers(4, lambda item: item[1] != "heavy")
    try:
        got: list[str] = []
        pool.submit(0, str.upper, "a", got.append)
        pool.submit(0, str.upper, "heavy", got.append)
        clock.advance(0)
        assert got == []
        clock.deliver()
        assert got == ["A", "HEAVY"] and pool.inline_batches == 0
    finally:
        stop(pool, clock)


def test_a_busy_shard_keeps_the_order_cheap_items_wait_for_the_hop_in_flight() -> None:
    pool, clock = workers(4, lambda item: item[1] != "first")
    try:
        got: list[str] = []
        pool.submit(0, str.upper, "first", got.append)
        clock.advance(0)  # hops: the shard is busy
        pool.submit(0, str.upper, "second", got.append)
        clock.advance(0)  # cheap, but must not overtake the batch in flight
        assert got == [] and pool.inline_batches == 0
        clock.deliver()  # the first batch's result; its shard's pending go next (a hop)
        clock.deliver()
        assert got == ["FIRST", "SECOND"]
    finally:
        stop(pool, clock)


def test_failures_inline_reach_their_errback() -> None:
    pool, clock = workers(2, lambda item: True)
    try:
        failures: list[Any] = []
        got: list[int] = []
        pool.submit(0, lambda n: 1 // n, 0, got.append, failures.append)
        pool.submit(0, lambda n: n, 7, got.append, failures.append)
        clock.advance(0)
        assert got == [7] and len(failures) == 1 and failures[0].check(ZeroDivisionError)
    finally:
        stop(pool, clock)


def test_off_by_default() -> None:
    pool = AudioWorkers(Clock(), threads=1, cheap=lambda item: True)
    assert pool.inline_max == 0
    assert AudioWorkers(Clock(), threads=1, inline_max=3).inline_max == 0  # no predicate: nothing is cheap


def test_auto_limit_follows_the_cpus_the_process_may_use() -> None:
    """-1 (the daemon's default): inline only where a hop can buy no parallelism (one CPU)."""
    assert inline_limit(-1, cpus=1) == AUTO_INLINE_MAX == 64
    assert inline_limit(-1, cpus=2) == 0
    assert inline_limit(-1, cpus=64) == 0
    assert inline_limit(0, cpus=1) == 0 and inline_limit(5, cpus=8) == 5  # set: as set
    assert inline_limit(-1) == (64 if len(os.sched_getaffinity(0)) == 1 else 0)
    with pytest.raises(ValueError, match="-1 \\(auto\\)"):
        inline_limit(-2)


def test_daemon_refuses_a_bad_inline_limit() -> None:
    from twisted.python.usage import UsageError

    from txvoice.config import VoiceConfig
    from txvoice.service.voice import makeVoiceService

    with pytest.raises(UsageError, match="audio-inline-max"):
        makeVoiceService(VoiceConfig(audio_inline_max=-5), reactor=Clock())


needs_native = pytest.mark.skipif(not native.available(), reason="the native ingest is not built")
OPUS = AudioFormat("opus", 48000, 1)


@needs_native
def test_inline_capable_only_for_native_chunks_of_a_stream_feeding_no_turn() -> None:
    ingest = StreamIngest(OPUS, StreamSettings(mode="voice_activity"), answers=True)
    item = (ingest.process, (b"x", 0, 0.0), None, None)
    assert inline_capable(item)
    ingest.feeds.open(1)  # a turn is being fed: its feed may run a recognizer
    assert not inline_capable(item)
    assert not inline_capable((ingest.attach, (1, None), None, None))
    python = StreamIngest(OPUS, StreamSettings(mode="voice_activity"), answers=False, native=False)
    assert not inline_capable((python.process, (b"x", 0, 0.0), None, None))
    assert not inline_capable((len, b"x", None, None))


@needs_native
def test_inline_and_hopped_chunks_give_the_same_events() -> None:
    from txvoice.audio.codecs.opus import OpusEncoder

    t = np.arange(48000 * 2) / 48000.0
    speech = (np.sin(2 * np.pi * 220 * t) * 8000 * (t > 0.5)).astype(np.int16)
    packets = OpusEncoder(OPUS).encode(speech)

    def run(limit: int) -> tuple[list[Any], int]:
        clock = ThreadClock()
        pool = AudioWorkers(clock, threads=1, prepare=prepare_batch, inline_max=limit, cheap=inline_capable)
        pool.startService()
        ingest = StreamIngest(OPUS, StreamSettings(mode="voice_activity"), answers=False)
        events: list[Any] = []
        try:
            for k, packet in enumerate(packets):
                pool.submit(0, ingest.process, (packet, k, 0.0), lambda e: events.append(e and [repr(x) for x in e]))
                clock.advance(0)
                if not limit:
                    clock.deliver()
        finally:
            stop(pool, clock)
        return events, pool.inline_batches

    hopped, none_inline = run(0)
    inline, all_inline = run(2)
    assert none_inline == 0 and all_inline == len(packets)
    assert inline == hopped and any(hopped)


def test_reads_flush_after_the_poll_dispatch_not_on_a_delayed_call() -> None:
    """With the lean poll's AfterDispatch, frames a read queued flush once the poll's events are handled."""
    from txvoice.service.poll import AfterDispatch

    pool, clock = workers(8, lambda item: True)
    after = AfterDispatch()
    pool.flushAfterDispatch(after)
    try:
        got: list[int] = []
        after.dispatching = True  # as while a read handler runs
        pool.submit(0, lambda n: n, 1, got.append)
        pool.submit(1, lambda n: n, 2, got.append)
        assert clock.getDelayedCalls() == [] and len(after.calls) == 1  # one flush asked, no DelayedCall
        after.dispatching = False
        after.run()
        assert got == [1, 2] and pool.inline_batches == 1
        # Queued outside a dispatch (a timer, a thread's result): the next reactor turn, as before.
        pool.submit(0, lambda n: n, 3, got.append)
        assert after.calls == [] and len(clock.getDelayedCalls()) == 1
        clock.advance(0)
        assert got == [1, 2, 3]
        # A batch delay (--audio-batch-ms) keeps its DelayedCall even from a read.
        pool.batch_delay = 0.002
        after.dispatching = True
        pool.submit(0, lambda n: n, 4, got.append)
        after.dispatching = False
        assert after.calls == [] and len(clock.getDelayedCalls()) == 1
        clock.advance(0.002)
        assert got == [1, 2, 3, 4]
    finally:
        stop(pool, clock)
