"""
Which Redis client on the reactor: txredisapi (Twisted-native) against redis-py's asyncio client
on Twisted's asyncio reactor (#24).  Each runs ``--pairs`` sequential SET+GET pairs against a
redis-server of its own (127.0.0.1, free port, no persistence) and reports the wall time per pair
and the reactor lag (a 10 ms LoopingCall's lateness) while it runs.  One client per process (the
reactor is chosen at import).  ``python bench/bench_redis_client.py [--pairs 5000] [--reps 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _lag_probe(reactor, samples):
    from twisted.internet.task import LoopingCall

    last = [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        samples.append(max(0.0, now - last[0] - 0.01))
        last[0] = now

    lc = LoopingCall(tick)
    lc.clock = reactor
    lc.start(0.01, now=False)
    return lc


async def _timed_pairs(client, pairs: int) -> float:
    """Seconds for ``pairs`` sequential SET+GET pairs: the one loop timed for every client."""
    t0 = time.perf_counter()
    for i in range(pairs):
        await client.set(f"k{i % 100}", "v" * 32)
        await client.get(f"k{i % 100}")
    return time.perf_counter() - t0


def run_client(kind: str, port: int, pairs: int) -> dict:
    if kind == "redis-py-asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import defer, reactor

    lag: list[float] = []
    result: dict = {}

    @defer.inlineCallbacks
    def main():
        probe = _lag_probe(reactor, lag)
        if kind == "txredisapi":
            import txredisapi

            conn = yield txredisapi.Connection("127.0.0.1", port, dbid=0)
            # Awaiting txredisapi's Deferreds: the coroutine runs on the reactor (ensureDeferred).
            elapsed = yield defer.ensureDeferred(_timed_pairs(conn, pairs))
            yield conn.disconnect()
        else:
            import asyncio

            import redis.asyncio as aioredis

            client = aioredis.Redis(host="127.0.0.1", port=port)
            # redis-py awaits asyncio futures: the coroutine runs on asyncio's loop under the reactor.
            elapsed = yield defer.Deferred.fromFuture(asyncio.ensure_future(_timed_pairs(client, pairs)))
            yield defer.Deferred.fromFuture(asyncio.ensure_future(client.aclose()))
        probe.stop()
        lag.sort()
        result.update(kind=kind, pairs=pairs, us_per_pair=round(elapsed / pairs * 1e6, 1),
                      lag_p99_ms=round(lag[int(len(lag) * 0.99)] * 1000, 2) if lag else None)
        reactor.stop()

    reactor.callWhenRunning(main)
    reactor.run()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_client(args.child[0], int(args.child[1]), args.pairs)))
        return
    from redisd import RedisServer

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            rows: dict[str, list[dict]] = {"txredisapi": [], "redis-py-asyncio": []}
            for _ in range(args.reps):
                for kind in rows:  # interleaved, so drift in steal hits both
                    out = subprocess.run([sys.executable, __file__, "--pairs", str(args.pairs), "--child", kind, str(server.port)],
                                         check=True, capture_output=True, text=True, env={**os.environ})
                    rows[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            server.stop()
    for kind, runs in rows.items():
        print(f"{kind:18} µs per SET+GET pair: {', '.join(str(r['us_per_pair']) for r in runs)}; "
              f"reactor lag p99 ms: {', '.join(str(r['lag_p99_ms']) for r in runs)}")


if __name__ == "__main__":
    main()
