"""The Redis offline queue against a real redis-server: order, bounds, expiry, handed over once, shared by nodes."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer

from inprocess import connected
from txvoice.scaleout.offline import RedisOfflineStore


@pytest_twisted.inlineCallbacks
def test_offline_queue_bounds_order_and_once(redis_server):
    a = yield connected(redis_server.url, "off:")
    b = yield connected(redis_server.url, "off:")
    clock = [1000.0]
    try:
        drops: list[tuple[str, int]] = []
        store_a = RedisOfflineStore(a, max_messages=3, max_bytes=10, max_age=5, on_drop=lambda r, n: drops.append((r, n)),
                                    now=lambda: clock[0])
        store_b = RedisOfflineStore(b, max_messages=3, max_bytes=10, max_age=5, now=lambda: clock[0])
        for i in range(5):
            yield store_a.put("call-1", b"m%d" % i, False)
        assert store_a.pending("call-1") == 3 and ("count", 1) in drops
        yield store_a.put("call-1", b"\x00\x01\x02\x03\x04\x05", True)  # a fourth: the oldest goes (count)
        taken = yield store_b.take("call-1")  # another node takes it, once
        assert [(m.payload, m.is_binary) for m in taken] == [(b"m3", False), (b"m4", False), (b"\x00\x01\x02\x03\x04\x05", True)]
        assert store_a.dropped["count"] == 3
        yield store_a.put("call-5", b"123456", False)
        yield store_a.put("call-5", b"abcdef", False)  # 12 bytes > 10: the oldest goes (bytes)
        assert [m.payload for m in (yield store_b.take("call-5"))] == [b"abcdef"] and store_a.dropped["bytes"] == 1
        assert (yield store_a.take("call-1")) == []
        yield store_a.put("call-2", b"old", False)
        clock[0] += 6
        assert (yield store_b.take("call-2")) == [] and store_b.dropped["expired"] == 1
        yield store_a.put("call-3", b"x", False)
        assert (yield store_a.discard("call-3")) == 1
        ttl = int(redis_server.cli("PTTL", "off:offline:call-1").strip())
        assert ttl == -2  # taken: gone
        yield store_a.put("call-4", b"y", False)
        assert 0 < int(redis_server.cli("PTTL", "off:offline:call-4").strip()) <= 5000
    finally:
        yield a.stopService()
        yield b.stopService()


@pytest_twisted.inlineCallbacks
def test_puts_sent_back_to_back_are_queued_in_order(redis_server):
    """txredisapi picks a pool connection at random per command: the store must still keep the order."""
    a = yield connected(redis_server.url, "ord:")
    try:
        assert a.settings.pool_size >= 2
        store = RedisOfflineStore(a, max_messages=500)
        puts = [store.put("call-o", b"m%03d" % i, i % 3 == 0) for i in range(120)]  # none waited for
        taken = store.take("call-o")
        yield defer.gatherResults(puts)
        assert [m.payload for m in (yield taken)] == [b"m%03d" % i for i in range(120)]
    finally:
        yield a.stopService()
