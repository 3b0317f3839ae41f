"""The Redis call store against a real redis-server: claims, epochs, hand-over answered, timed out, or to a dead node."""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from zope.interface.verify import verifyObject

from inprocess import connected
from txvoice.scaleout.calls import RedisCallStore
from txvoice.session.calls import CallInUse, CallRecord, ICallStore, new_epoch


@defer.inlineCallbacks
def node(url: str, prefix: str, name: str, **kw):
    conn = yield connected(url, prefix, name, redis_session_ttl=3)
    return conn, RedisCallStore(conn, resume_ttl=1.0, **kw)


def record(node_id: str, user: str = "u", call: str = "c") -> CallRecord:
    return CallRecord(call, user, "t", node_id, new_epoch(), time.time(), {"maxChunkSize": 0})


@pytest_twisted.inlineCallbacks
def test_claims_epochs_and_forget(redis_server):
    ca, a = yield node(redis_server.url, "cs:", "A")
    cb, b = yield node(redis_server.url, "cs:", "B")
    try:
        assert verifyObject(ICallStore, a)
        first = record("A")
        assert (yield a.claim(first)) is None
        second = record("B")
        previous = yield b.claim(second)
        assert previous is not None and previous.node == "A" and previous.epoch == first.epoch
        doc = json.loads(redis_server.cli("--raw", "GET", "cs:call:c"))
        assert doc["node"] == "B" and doc["resumes"] == 1 and doc["started_at"] == pytest.approx(first.started_at)
        assert 0 < int(redis_server.cli("PTTL", "cs:call:c")) <= 4000  # resume_ttl + session_ttl
        with pytest.raises(CallInUse):
            yield a.claim(record("A", user="someone-else"))
        assert json.loads(redis_server.cli("--raw", "GET", "cs:call:c"))["node"] == "B"  # unchanged
        assert (yield a.forget("c", first.epoch)) is False  # a stale claim cannot drop B's record
        assert (yield b.forget("c", second.epoch)) is True
        assert redis_server.cli("EXISTS", "cs:call:c").strip() == "0"
    finally:
        yield ca.stopService()
        yield cb.stopService()


@pytest_twisted.inlineCallbacks
def test_handoff_released_timed_out_or_to_a_dead_node(redis_server):
    ca, a = yield node(redis_server.url, "ho:", "A")
    cb, b = yield node(redis_server.url, "ho:", "B", handoff_timeout=1.0)
    try:
        asked: list[tuple[str, str]] = []
        let_go: defer.Deferred[None] = defer.Deferred()

        def takeover(call_id: str, new_node: str) -> defer.Deferred[None]:
            asked.append((call_id, new_node))
            return let_go

        a.serve(takeover)
        yield task.deferLater(reactor, 0.2, lambda: None)  # the subscriptions are in place
        held = record("A")
        yield a.claim(held)
        assert "c" in a.owned
        mine = record("B")
        yield b.claim(mine)
        t0 = time.monotonic()
        waiting = b.handoff(held, mine.epoch)
        yield task.deferLater(reactor, 0.1, lambda: None)
        assert asked == [("c", "B")] and not waiting.called and "c" not in a.owned
        let_go.callback(None)  # A let it go: B hears "released"
        assert (yield waiting) is True and time.monotonic() - t0 < 1.0  # released, not timed out
        # A node that never answers: bounded by the timeout.
        a.serve(lambda call_id, new_node: defer.Deferred())
        t0 = time.monotonic()
        assert (yield b.handoff(record("A", call="c2"), new_epoch())) is False
        assert 0.95 < time.monotonic() - t0 < 3.0 and b.handoff_timeouts == 1
        # A node that is gone: nobody subscribes to its channel, nothing is waited for.
        t0 = time.monotonic()
        assert (yield b.handoff(record("ghost", call="c3"), new_epoch())) is False
        assert time.monotonic() - t0 < 1.0 and b.handoff_timeouts == 1  # not the timeout
    finally:
        yield ca.stopService()
        yield cb.stopService()


@pytest_twisted.inlineCallbacks
def test_owned_records_are_re_armed_and_a_dead_nodes_age_out(redis_server):
    ca, a = yield node(redis_server.url, "ra:", "A")
    try:
        kept = record("A", call="kept")
        yield a.claim(kept)
        gone = record("A", call="gone")
        yield a.claim(gone)
        del a.owned["gone"]  # as if its node had died: nobody re-arms it
        redis_server.cli("PEXPIRE", "ra:call:kept", "500")
        redis_server.cli("PEXPIRE", "ra:call:gone", "500")
        assert (yield a.refresh()) == 1
        yield task.deferLater(reactor, 0.7, lambda: None)
        assert redis_server.cli("EXISTS", "ra:call:kept").strip() == "1"
        assert redis_server.cli("EXISTS", "ra:call:gone").strip() == "0"
    finally:
        yield ca.stopService()
