"""The audio worker pool: ordered per stream, batched hand-off, work off the reactor thread."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool

from txvoice.audio.workers import AudioWorkers
from txvoice.pipeline.speech import audio_threadpool


@pytest_twisted.inlineCallbacks
def test_items_of_a_stream_run_in_order_off_the_reactor():
    workers = AudioWorkers(reactor, threads=2)
    workers.startService()
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    threads: set[str] = set()

    def work(arg):
        key, n = arg
        threads.add(threading.current_thread().name)
        seen[key].append(n)
        return n

    delivered: list[int] = []
    for n in range(300):
        for key in seen:
            workers.submit(key, work, (key, n), delivered.append)
    done = Deferred()
    workers.submit(0, lambda _: None, None, done.callback)
    yield done
    yield workers.stopService()
    for key in seen:
        assert seen[key] == list(range(300))
    assert len(delivered) == 900
    assert threading.main_thread().name not in threads
    # Frames submitted within one reactor iteration travel together: far fewer hops than items.
    assert workers.items == 901
    assert workers.batches < 20


@pytest_twisted.inlineCallbacks
def test_failures_reach_their_errback_and_the_stream_goes_on():
    workers = AudioWorkers(reactor, threads=1)
    workers.startService()
    failures, results = [], []

    def boom(_):
        raise ValueError("bad frame")

    workers.submit(5, boom, None, results.append, failures.append)
    workers.submit(5, lambda x: x * 2, 21, results.append)
    yield deferLater(reactor, 0.2, lambda: None)
    yield workers.stopService()
    assert results == [42]
    assert len(failures) == 1 and failures[0].check(ValueError)


@pytest_twisted.inlineCallbacks
def test_stop_runs_what_was_queued():
    workers = AudioWorkers(reactor, threads=2)
    workers.startService()
    ran = []
    for n in range(50):
        workers.submit(n, ran.append, n)
    yield workers.stopService()
    assert sorted(ran) == list(range(50))


def test_inline_mode_runs_at_once():
    workers = AudioWorkers(None, threads=0)
    out = []
    workers.submit(1, lambda x: x + 1, 1, out.append)
    assert out == [2]


@pytest_twisted.inlineCallbacks
def test_deferToThreadPool_runs_on_the_audio_threads():
    """The pipeline's short calls (final transcripts) go through deferToThreadPool to the workers."""
    workers = AudioWorkers(reactor, threads=2)
    assert audio_threadpool(workers) is None
    workers.startService()
    try:
        assert audio_threadpool(workers) is workers
        names = yield DeferredList(
            [deferToThreadPool(reactor, workers, lambda: threading.current_thread().name) for _ in range(6)]
        )
        assert {name for _, name in names} == {"txvoice-audio-0", "txvoice-audio-1"}  # the shards take turns

        def boom():
            raise KeyError("no transcript")

        failures = []
        yield deferToThreadPool(reactor, workers, boom).addErrback(failures.append)
        assert len(failures) == 1 and failures[0].check(KeyError)
    finally:
        yield workers.stopService()
    assert audio_threadpool(workers) is None
    with pytest.raises(RuntimeError):
        workers.callInThreadWithCallback(None, lambda: None)


@pytest_twisted.inlineCallbacks
def test_stop_waits_for_calls_and_batches_in_flight_then_ends_the_threads():
    workers = AudioWorkers(reactor, threads=2)
    workers.startService()
    threads = list(workers._threads)
    release = threading.Event()
    finished: list[str] = []

    def slow_call():
        release.wait(5)
        finished.append("call")
        return "transcript"

    def slow_item(_):
        release.wait(5)
        finished.append("item")

    call = deferToThreadPool(reactor, workers, slow_call)
    workers.submit(1, slow_item)
    yield deferLater(reactor, 0.05, lambda: None)  # both are running now
    stopped = workers.stopService()
    workers.submit(1, lambda _: finished.append("queued after stop"))
    yield deferLater(reactor, 0.1, lambda: None)
    assert not stopped.called  # still waiting for the call and the batch
    release.set()
    yield stopped
    assert (yield call) == "transcript"
    assert sorted(finished) == ["call", "item", "queued after stop"]
    assert not any(thread.is_alive() for thread in threads)
    assert not workers.started


@pytest_twisted.inlineCallbacks
def test_a_raising_result_callback_is_logged_and_the_thread_keeps_serving():
    from twisted.logger import globalLogPublisher

    workers = AudioWorkers(reactor, threads=1)
    workers.startService()
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        def bad_callback(ok, result):
            raise RuntimeError("callback broke")

        workers.callInThreadWithCallback(bad_callback, lambda: 1)
        done = Deferred().addTimeout(5, reactor)
        workers.submit(0, lambda x: x + 1, 1, done.callback)  # same (only) thread, afterwards
        assert (yield done) == 2
        yield deferLater(reactor, 0.05, lambda: None)
    finally:
        globalLogPublisher.removeObserver(logged.append)
        yield workers.stopService().addTimeout(5, reactor)  # a dead thread would never finish
    failures = [e["log_failure"] for e in logged if "log_failure" in e]
    assert any(f.check(RuntimeError) for f in failures)


@pytest_twisted.inlineCallbacks
def test_a_batch_delay_lets_items_that_arrive_meanwhile_share_one_hop():
    """--audio-batch-ms: the first item waits batch_delay; those submitted in that time join its batch."""
    results = {}
    for delay in (0.0, 0.08):
        workers = AudioWorkers(reactor, threads=1, batch_delay=delay)
        workers.startService()
        done: list[tuple[int, float]] = []
        start = reactor.seconds()

        def deliver(n, done=done):
            done.append((n, reactor.seconds() - start))

        workers.submit(1, lambda n: n, 0, deliver)
        yield deferLater(reactor, 0.02, lambda: None)
        workers.submit(2, lambda n: n, 1, deliver)  # another stream, 20 ms later
        workers.submit(1, lambda n: n, 2, deliver)
        yield deferLater(reactor, 0.25, lambda: None)
        yield workers.stopService()
        results[delay] = (workers.batches, done)
    batches, done = results[0.0]
    assert batches == 2 and [n for n, _ in done] == [0, 1, 2]
    batches, done = results[0.08]
    assert batches == 1 and [n for n, _ in done] == [0, 1, 2]  # one hop for all three, in order
    assert done[0][1] >= 0.075  # the first waited for the others
