"""Worker threads scheduled below the reactor (txvoice.threadnice): per-thread nice on Linux."""

from __future__ import annotations

import os
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from txvoice.audio.workers import AudioWorkers
from txvoice.threadnice import MAX_NICE, lower_current_thread, niced_thread_factory, supported

pytestmark = pytest.mark.skipif(not supported(), reason="per-thread nice is Linux's")


def own_nice(_: object = None) -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def in_thread(f):
    result: list = []
    thread = threading.Thread(target=lambda: result.append(f()))
    thread.start()
    thread.join()
    return result[0]


def test_only_the_calling_thread_is_lowered():
    base = own_nice()
    assert in_thread(lambda: (lower_current_thread(3), own_nice())) == (min(MAX_NICE, base + 3), min(MAX_NICE, base + 3))
    assert own_nice() == base  # the caller's (and so the process's main thread's) is untouched
    assert in_thread(lambda: (lower_current_thread(0), own_nice())) == (None, base)
    assert in_thread(lambda: (lower_current_thread(100), own_nice()))[1] == MAX_NICE


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("nice", [0, 4])
def test_audio_worker_threads_run_nice_below_the_reactor(nice):
    workers = AudioWorkers(reactor, threads=2, nice=nice)
    workers.startService()
    seen: list[int] = []
    done = Deferred()
    workers.submit(0, own_nice, None, seen.append)
    workers.submit(1, own_nice, None, seen.append)
    workers.submit(0, lambda _: None, None, done.callback)
    yield done
    yield workers.stopService()
    assert seen == [min(MAX_NICE, own_nice() + nice)] * 2


@pytest_twisted.inlineCallbacks
def test_a_threadpool_with_the_niced_factory_runs_its_work_below():
    pool = ThreadPool(0, 1, name="test-niced")
    pool.threadFactory = niced_thread_factory(2)  # type: ignore[assignment]
    pool.start()
    try:
        nice = yield deferToThreadPool(reactor, pool, own_nice)
    finally:
        pool.stop()
    assert nice == min(MAX_NICE, own_nice() + 2)
