"""The audio worker pool: ordered per stream, batched hand-off, work off the reactor thread."""

from __future__ import annotations

import threading

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from txvoice.audio.workers import AudioWorkers


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
