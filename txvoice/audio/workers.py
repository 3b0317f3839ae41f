"""
The audio worker pool: a dedicated, bounded set of threads that keeps audio work off the reactor.

A thread hop costs about as much as decoding a 20 ms frame, so work is not handed over one frame
at a time.  Items are queued per *shard*; once per reactor iteration every idle shard hands its
whole backlog to its thread as one batch, and a batch's results come back in one
``callFromThread``.  A stream always maps to the same shard and a shard has at most one batch in
flight, so a stream's items run in order without locks, and under load one hop carries the frames
of many sessions.

Each shard has a thread of its own fed through a :class:`queue.SimpleQueue`, not Twisted's
:class:`~twisted.python.threadpool.ThreadPool` with ``deferToThreadPool``: a batch needs no
Deferred, no context copy and no coordinator thread hand-over, and the round trip of a batch costs
0.67-0.77x the CPU, measured on one core (``bench/bench_handoff.py``: 61 -> 41 µs for one item).  Twisted's pool is
general; this one only has to run batches in order.  The workers also take single calls the way
a ``ThreadPool`` does (:meth:`AudioWorkers.callInThreadWithCallback`), so ``deferToThreadPool``
runs short pipeline work (a final transcript) on them.

What a batch's results write to a connection can wait for the end of the batch:
:meth:`AudioWorkers.afterBatch` calls a function once every result of the batch being delivered
has been, so a connection writes the acknowledgements of all its frames in the batch at once
(one ``send`` instead of one per frame) before the reactor turns again.
"""

from __future__ import annotations

import os
import threading
from itertools import count
from queue import SimpleQueue
from typing import Any, Callable, Final, Literal, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txvoice.threadnice import lower_current_thread

Work = Callable[[Any], Any]
Deliver = Callable[[Any], None]
Item = tuple[Work, Any, "Deliver | None", "Deliver | None"]
#: ``prepare(items, start)``: do what the run of items from ``start`` can share in one go (the
#: native batch ingest: :func:`txvoice.audio.ingest.prepare_batch`) before they run; returns the
#: index after that run.
Prepare = Callable[[list[Item], int], int]


class DispatchHook(Protocol):
    """
    Calls to make once the events of the poll being dispatched are handled: what
    :class:`txvoice.service.poll.AfterDispatch` offers (the audio layer sits below the service
    layer, so it names the shape, not the class).
    """

    dispatching: bool
    calls: list[Callable[[], object]]


#: :attr:`AudioWorkers._flush_pending` while a flush waits among a poll's after-dispatch calls.
_AFTER_DISPATCH: Final = "after dispatch"

#: ``cheap(item)``: whether an item's work is small and bounded enough to run on the reactor
#: instead of a hop (the native ingest: :func:`txvoice.audio.ingest.inline_capable`).
Cheap = Callable[[Item], bool]


def _run_batch(items: list[Item], prepare: Prepare | None = None) -> list[tuple[Deliver, Any]]:
    """Run a batch in a worker thread; collect what must be delivered on the reactor."""
    results: list[tuple[Deliver, Any]] = []
    append = results.append
    prepared = 0 if prepare is not None else len(items)
    for index, (work, arg, deliver, fail) in enumerate(items):
        if index >= prepared and prepare is not None:
            try:
                prepared = prepare(items, index)
            except Exception:
                # Each item then does its own work, and fails on its own.
                _log.failure("preparing an audio batch failed")
                prepared = len(items)
        try:
            value = work(arg)
        except BaseException:
            if fail is not None:
                append((fail, Failure()))
            else:
                append((_log_failure, Failure()))
        else:
            if deliver is not None:
                append((deliver, value))
    return results


_log = Logger(namespace="txvoice.audio.processor")


#: ``--audio-inline-max -1`` on a process that may run on one CPU only.
AUTO_INLINE_MAX = 64


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask on Linux)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def inline_limit(setting: int, cpus: int | None = None) -> int:
    """
    What ``--audio-inline-max`` means: ``-1`` (the default) is :data:`AUTO_INLINE_MAX` when the
    process may run on one CPU only, else 0.  On one CPU the audio thread cannot run beside the
    reactor: a hop buys no parallelism, only two wake-ups and the GIL passed back and forth
    (issue 26: 0.89x the CPU per frame at 50, 150 and 300 sessions, pinned to one core).  With
    more CPUs the decode of a hopped batch overlaps the reactor, so the hop stays.
    """
    if setting >= 0:
        return setting
    if setting != -1:
        raise ValueError(f"--audio-inline-max must be -1 (auto), 0 or more, not {setting}")
    return AUTO_INLINE_MAX if (usable_cpus() if cpus is None else cpus) == 1 else 0


def _log_failure(failure: Failure) -> None:
    _log.failure("audio work failed", failure)


class _Shard:
    """The items of the streams that map here, and the thread that runs them."""

    __slots__ = ("pending", "busy", "jobs")

    def __init__(self) -> None:
        self.pending: list[Item] = []
        self.busy = False
        self.jobs: SimpleQueue = SimpleQueue()


class AudioWorkers(Service):
    """
    Bounded audio threads with ordered, batched hand-off.

    ``threads=0`` runs every item inline on the caller's thread: deterministic tests use it.
    ``batch_delay`` (seconds, ``--audio-batch-ms``) holds the first item of a batch that long so
    the items that arrive meanwhile share its hop.  ``prepare`` (see :data:`Prepare`) runs
    before each run of a batch's items it covers: the native ingest decodes them all at once.
    ``inline_max`` (``--audio-inline-max``): a batch of at most that many items, all ``cheap``
    (see :data:`Cheap`), whose shard is idle runs at once on the reactor instead of hopping: at
    low load a batch holds about one frame and the hop (two wake-ups, the GIL passed back and
    forth) costs more than the frame's work.  0 (the default) always hops.
    ``nice`` (``--worker-nice``, 10 in the daemon) lowers each thread's scheduling priority
    by that much below the reactor's (:mod:`txvoice.threadnice`).
    """

    name = "audio-workers"  # type: ignore[assignment]  # Twisted declares Service.name as None

    def __init__(
        self, reactor: IReactorThreads | IReactorTime | None = None, threads: int = 2, batch_delay: float = 0.0,
        prepare: Prepare | None = None, inline_max: int = 0, cheap: Cheap | None = None, nice: int = 0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        # Both IReactorThreads and IReactorTime (zope interfaces cannot be intersected in a hint).
        self._reactor: Any = reactor
        self.threads = threads
        #: Seconds an item waits for others before its shard hands the batch over (0: the next turn).
        self.batch_delay = batch_delay
        self.prepare = prepare
        self.inline_max = inline_max if cheap is not None else 0
        self.cheap = cheap
        self.nice = nice
        self._shards = [_Shard() for _ in range(max(threads, 1))]
        self._threads: list[threading.Thread] = []
        #: The flush to come: its DelayedCall, _AFTER_DISPATCH when the poll's dispatch runs it, or None.
        self._flush_pending: IDelayedCall | Literal["after dispatch"] | None = None
        #: The lean poll's after-dispatch calls, when in use.
        self._after_dispatch: DispatchHook | None = None
        self._calls = 0  # single calls (callInThreadWithCallback) not finished yet
        self._next_call = count()
        self._idle_waiters: list[Deferred] = []
        #: While a batch's results are delivered: what afterBatch asked to run once they all were.
        self._after: list[Callable[[], object]] | None = None
        self.batches = 0
        self.items = 0
        #: Batches run on the reactor (inline_max) instead of hopping: counted in batches too.
        self.inline_batches = 0

    # lifecycle

    @property
    def started(self) -> bool:
        """True while the threads run (False before start, after stop, and inline)."""
        return bool(self._threads)

    def startService(self) -> None:
        super().startService()
        if self.threads > 0 and not self._threads:
            for number, shard in enumerate(self._shards):
                thread = threading.Thread(
                    target=self._work, args=(shard.jobs,), name=f"txvoice-audio-{number}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def stopService(self) -> Deferred:
        """Run what is queued, wait for the batches and calls in flight, then stop the threads."""
        super().stopService()
        if not self._threads:
            return succeed(None)
        pending = self._flush_pending
        if pending is not None and pending != _AFTER_DISPATCH and pending.active():
            pending.cancel()
        self._flush()
        idle: Deferred[None] = Deferred()
        self._idle_waiters.append(idle)
        self._checkIdle()

        def stop(_: object) -> None:
            threads, self._threads = self._threads, []
            for shard in self._shards:
                shard.jobs.put(None)
            for thread in threads:
                thread.join()

        return idle.addCallback(stop)

    def _checkIdle(self) -> None:
        if not self._idle_waiters or self._calls:
            return
        if any(shard.busy or shard.pending for shard in self._shards):
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # the threads

    def _work(self, jobs: SimpleQueue) -> None:
        """A worker thread: run each batch and hand its results back in one reactor call."""
        lower_current_thread(self.nice)
        get = jobs.get
        callFromThread = self._reactor.callFromThread
        batchDone = self._batchDone
        while True:
            job = get()
            if job is None:
                return
            shard, batch = job
            if shard is None:
                batch()  # a single call; it reports by itself
            else:
                callFromThread(batchDone, shard, _run_batch(batch, self.prepare))

    # hand-off

    @property
    def queue_depth(self) -> int:
        """Items waiting for a worker (not counting those in a running batch)."""
        return sum(len(shard.pending) for shard in self._shards)

    def submit(self, key: int, work: Work, arg: Any = None, deliver: Deliver | None = None, fail: Deliver | None = None) -> None:
        """
        Run ``work(arg)`` on a worker after every earlier item with the same ``key``; call
        ``deliver(result)`` (or ``fail(failure)``) on the reactor thread when it is done.
        """
        if not self._threads:
            self._deliver(_run_batch([(work, arg, deliver, fail)], self.prepare), inline=True)
            return
        self._shards[key % len(self._shards)].pending.append((work, arg, deliver, fail))
        if self._flush_pending is None:
            after = self._after_dispatch
            if after is not None and after.dispatching and not self.batch_delay:
                self._flush_pending = _AFTER_DISPATCH
                after.calls.append(self._flush)
            else:
                self._flush_pending = self._reactor.callLater(self.batch_delay, self._flush)

    def flushAfterDispatch(self, after: DispatchHook | None) -> None:
        """
        Hand over what a poll's reads queued once that poll's events are handled (``after``: the
        lean poll's :class:`~txvoice.service.poll.AfterDispatch`), not on a ``callLater(0)``;
        items queued anywhere else still flush on the next reactor turn.  None: always ``callLater``.
        """
        self._after_dispatch = after

    def _flush(self) -> None:
        self._flush_pending = None
        limit = self.inline_max
        for shard in self._shards:
            pending = shard.pending
            if pending and not shard.busy:
                if len(pending) <= limit and all(map(self.cheap, pending)):  # type: ignore[arg-type]  # set with limit
                    self._runInline(shard)
                else:
                    self._dispatch(shard)

    def _runInline(self, shard: _Shard) -> None:
        """A small batch of cheap items, its shard idle: run it here, delivered as a hop's would be."""
        batch, shard.pending = shard.pending, []
        self.batches += 1
        self.inline_batches += 1
        self.items += len(batch)
        self._deliver(_run_batch(batch, self.prepare))

    def _dispatch(self, shard: _Shard) -> None:
        batch, shard.pending = shard.pending, []
        shard.busy = True
        self.batches += 1
        self.items += len(batch)
        shard.jobs.put((shard, batch))

    def _batchDone(self, shard: _Shard, results: list[tuple[Deliver, Any]]) -> None:
        shard.busy = False
        self._deliver(results)
        if shard.pending:
            self._dispatch(shard)
        elif self._idle_waiters:
            self._checkIdle()

    def _deliver(self, results: list[tuple[Deliver, Any]], inline: bool = False) -> None:
        """
        Hand a batch's results to their callbacks, then run what they asked for (afterBatch).
        Inline (no threads), a raising callback raises to the caller, as a direct call would.
        """
        if self._after is not None:  # inline work submitted while delivering: part of that batch
            for callback, value in results:
                callback(value)
            return
        after: list[Callable[[], object]] = []
        self._after = after
        try:
            for callback, value in results:
                if inline:
                    callback(value)
                    continue
                try:
                    callback(value)
                except Exception:
                    _log.failure("delivering audio result failed")
        finally:
            self._after = None
            for call in after:
                try:
                    call()
                except Exception:
                    _log.failure("finishing an audio batch failed")

    def afterBatch(self, call: Callable[[], object]) -> None:
        """
        Call ``call()`` on the reactor once the results of the batch being delivered have all been
        delivered (at once when none is), before anything else runs on the reactor.  Called from a
        result's callback, it lets a connection write what the batch's results made for it in one
        go (:meth:`txvoice.server.base.VoiceServerProtocol.sendPreparedTextSoon`).
        """
        after = self._after
        if after is None:
            call()
        else:
            after.append(call)

    # ThreadPool's hand-off, for deferToThreadPool

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], object] | None, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        """
        Call ``func(*args, **kwargs)`` on a worker thread (the shards take turns), then
        ``onResult(True, result)`` or ``onResult(False, failure)`` on that thread, as
        :meth:`twisted.python.threadpool.ThreadPool.callInThreadWithCallback` does.  Not ordered
        with any stream's items.  Called on the reactor thread.
        """
        if not self._threads:
            raise RuntimeError("the audio workers are not running")
        self._calls += 1
        callFromThread = self._reactor.callFromThread

        def call() -> None:
            try:
                result = func(*args, **kwargs)
                ok = True
            except BaseException:
                result = Failure()
                ok = False
            try:
                if onResult is not None:
                    onResult(ok, result)
                elif not ok:
                    callFromThread(_log_failure, result)
            except BaseException:
                # The thread serves a shard too: a raising callback must not end it.
                callFromThread(_log_failure, Failure())
            finally:
                callFromThread(self._callDone)

        self._shards[next(self._next_call) % len(self._shards)].jobs.put((None, call))

    def _callDone(self) -> None:
        self._calls -= 1
        if self._idle_waiters:
            self._checkIdle()
