#!/usr/bin/env python3
"""
What one hand-off of a batch of audio work to the audio thread and back costs, on one core.

The reactor hands each idle shard's backlog to an audio thread once per iteration and gets the
results back in one ``callFromThread`` (``txvoice.audio.workers``).  This measures the round trip
with work that does nothing, so only the hand-off is left, two ways side by side:

* ``threadpool``: Twisted's ``ThreadPool`` through ``deferToThreadPool``, one Deferred per batch
  (how ``AudioWorkers`` handed batches over before);
* ``audioworkers``: ``AudioWorkers.submit`` (a thread per shard fed through a ``SimpleQueue``).

For each batch size it runs ``--batches`` round trips one after another (the next batch leaves
when the last result is back, as at light load) and reports CPU µs per round trip; the process
pins itself to one core (``--cpu``), as the benchmark pins the server.

    .venv/bin/python bench/bench_handoff.py [--batches 4000] [--sizes 1,4,16] [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor  # noqa: E402
from twisted.internet.threads import deferToThreadPool  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402

from txvoice.audio.workers import AudioWorkers, _run_batch  # noqa: E402


def _nothing(value: object) -> object:
    return value


def _ignore(value: object) -> None:
    pass


def threadpool_round_trips(batches: int, size: int, finished: Callable[[], None]) -> Callable[[], None]:
    """The old hand-off: a batch through deferToThreadPool on a one-thread ThreadPool."""
    pool = ThreadPool(minthreads=1, maxthreads=1, name="bench-threadpool")
    pool.start()
    left = [batches]

    def back(results: list) -> None:
        for deliver, value in results:
            deliver(value)
        left[0] -= 1
        if left[0]:
            send()
        else:
            pool.stop()
            finished()

    def send() -> None:
        batch = [(_nothing, n, _ignore, None) for n in range(size)]
        deferToThreadPool(reactor, pool, _run_batch, batch).addCallback(back)

    return send


def audioworkers_round_trips(batches: int, size: int, finished: Callable[[], None]) -> Callable[[], None]:
    """txvoice's hand-off: AudioWorkers with one thread."""
    workers = AudioWorkers(reactor, threads=1)
    workers.startService()
    left = [batches]

    def last(_: object) -> None:
        left[0] -= 1
        if left[0]:
            send()
        else:
            workers.stopService().addCallback(lambda _: finished())

    def send() -> None:
        for n in range(size - 1):
            workers.submit(0, _nothing, n, _ignore)
        workers.submit(0, _nothing, size, last)

    return send


WAYS = {"threadpool": threadpool_round_trips, "audioworkers": audioworkers_round_trips}


def measure(way: str, batches: int, size: int) -> float:
    """CPU µs per round trip (this process, all threads) for one way and batch size."""
    marks: dict[str, float] = {}

    def finished() -> None:
        marks["end"] = time.process_time()
        reactor.crash()

    start = WAYS[way](batches, size, finished)

    def begin() -> None:
        marks["start"] = time.process_time()
        start()

    reactor.callLater(0, begin)
    reactor.run(installSignalHandlers=False)
    return (marks["end"] - marks["start"]) / batches * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4000)
    parser.add_argument("--sizes", default="1,4,16", help="items per batch, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each way, interleaved; the median is shown")
    parser.add_argument("--cpu", type=int, default=0, help="the core to pin to (-1: do not pin)")
    parser.add_argument("--json", help="write every run here too")
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    sizes = [int(s) for s in args.sizes.split(",")]
    runs: dict[str, dict[int, list[float]]] = {way: {size: [] for size in sizes} for way in WAYS}
    for round_ in range(args.rounds):
        for size in sizes:
            ways = list(WAYS) if round_ % 2 == 0 else list(reversed(WAYS))
            for way in ways:
                runs[way][size].append(measure(way, args.batches, size))
    print(f"CPU µs per batch round trip, median of {args.rounds} ({args.batches} batches each), one core")
    print(f"{'items/batch':>12} {'threadpool':>11} {'audioworkers':>13} {'ratio':>6}")
    for size in sizes:
        old = statistics.median(runs["threadpool"][size])
        new = statistics.median(runs["audioworkers"][size])
        print(f"{size:>12} {old:>11.1f} {new:>13.1f} {new / old:>6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"batches": args.batches, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
