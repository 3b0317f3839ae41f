"""
What one node writes to a key is applied in order on a real redis-server, although txredisapi sends
each command on a pool connection picked at random (pool size 2 here): a session that opens and
closes at once leaves no ghost registry entry, a resume token kept then taken at once is found, a
call claimed then forgotten at once leaves no record.  And :class:`KeyOrder` itself: a long chain
of units that fail at once (Redis gone) does not recurse.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, reactor, task

from inprocess import connected
from txvoice.scaleout.calls import RedisCallStore
from txvoice.scaleout.ordering import KeyOrder
from txvoice.scaleout.registry import RedisSessionRegistry
from txvoice.scaleout.resume import RedisResumeStore
from txvoice.session.calls import CallRecord
from txvoice.session.resume import ResumeState
from txvoice.session.session import Session

SESSIONS = 400


@defer.inlineCallbacks
def settled(conn, timeout: float = 10.0):
    """Until nothing is waiting in order nor in flight."""
    for _ in range(int(timeout / 0.02)):
        if not len(conn.order) and not conn._inflight:
            return
        yield task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{len(conn.order)} keys still waiting, {conn._inflight} commands in flight")


@pytest_twisted.inlineCallbacks
def test_sessions_opened_and_closed_at_once_leave_no_ghost_entry(redis_server):
    conn = yield connected(redis_server.url, "g:")
    try:
        assert conn.settings.pool_size >= 2
        registry = RedisSessionRegistry(conn)
        for i in range(SESSIONS):
            s = Session("127.0.0.1:1", user_id=f"u{i}", conversation_id="c", ip="127.0.0.1")
            registry.add(s)
            registry.remove(s)
        yield settled(conn)
        assert int((yield conn.call("ZCARD", conn.key("sessions")))) == 0
        ghosts = yield conn.call("KEYS", conn.key("session", "*"))
        assert list(ghosts or []) == []
        assert (yield registry.cluster()) == []
        assert len(conn.order) == 0  # nothing kept per key once answered
    finally:
        yield conn.stopService()


@pytest_twisted.inlineCallbacks
def test_a_refresh_round_and_the_closes_during_it_leave_no_ghost_entry(redis_server):
    conn = yield connected(redis_server.url, "gr:")
    try:
        registry = RedisSessionRegistry(conn)
        sessions = [Session("127.0.0.1:1", user_id=f"u{i}", ip="127.0.0.1") for i in range(SESSIONS)]
        for s in sessions:
            registry.local.add(s)
        done = registry.refresh()  # its first batch in flight
        for s in sessions:
            registry.remove(s)
        yield done
        yield settled(conn)
        assert int((yield conn.call("ZCARD", conn.key("sessions")))) == 0
        assert list((yield conn.call("KEYS", conn.key("session", "*"))) or []) == []
    finally:
        yield conn.stopService()


@pytest_twisted.inlineCallbacks
def test_resume_state_kept_then_taken_at_once_is_found(redis_server):
    conn = yield connected(redis_server.url, "gk:")
    try:
        store = RedisResumeStore(conn, 30)
        takes = []
        for i in range(SESSIONS):
            s = Session("127.0.0.1:1", user_id=f"u{i}", ip="127.0.0.1", resume_token=f"tok{i}")
            store.opened(s, s.id)
            store.keep(ResumeState(f"tok{i}", s.id, f"u{i}", log_id=s.id), 30)
            takes.append(store.take(f"tok{i}"))
        found = yield defer.gatherResults(takes)
        assert [state and state.user_id for state in found] == [f"u{i}" for i in range(SESSIONS)]
        yield settled(conn)
        assert list((yield conn.call("KEYS", conn.key("resume", "*"))) or []) == []  # each taken once: gone
    finally:
        yield conn.stopService()


@pytest_twisted.inlineCallbacks
def test_calls_claimed_then_forgotten_at_once_leave_no_record(redis_server):
    conn = yield connected(redis_server.url, "gc:")
    try:
        store = RedisCallStore(conn, 30)
        forgets = []
        for i in range(SESSIONS):
            record = CallRecord(f"call-{i}", f"u{i}", None, conn.node_id, f"e{i}", 1.0)
            store.claim(record)
            forgets.append(store.forget(f"call-{i}", f"e{i}"))
        assert all((yield defer.gatherResults(forgets)))  # each found its claim's record
        yield settled(conn)
        assert list((yield conn.call("KEYS", conn.key("call", "*"))) or []) == []
    finally:
        yield conn.stopService()


def test_key_order_runs_units_in_order_across_keys_without_recursing():
    order = KeyOrder()
    first: defer.Deferred[str] = defer.Deferred()
    ran: list[str] = []
    results = [order.run("a", lambda: first)]

    def unit(name: str, fail: bool = False):
        def send():
            ran.append(name)
            return defer.fail(RuntimeError(name)) if fail else defer.succeed(name)
        return send

    results.append(order.run(["a", "b"], unit("ab")))  # waits for a
    results.append(order.run("b", unit("b")))  # waits for ab
    results.append(order.run("c", unit("c")))  # nothing before it: at once
    assert ran == ["c"]
    # 5000 units for one key, each failing at once when run (Redis gone): released in a loop.
    failing = [order.run("a", unit(f"f{i}", fail=True)) for i in range(5000)]
    for d in failing:
        d.addErrback(lambda f: None)
    first.callback("first")
    assert ran[:3] == ["c", "ab", "b"] and len(ran) == 5003 and ran[-1] == "f4999"
    assert [r.result for r in results] == ["first", "ab", "b", "c"]
    assert len(order) == 0
