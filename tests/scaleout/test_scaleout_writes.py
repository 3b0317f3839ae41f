"""
A node's background writes to a real redis-server: a refresh of many sessions goes out in batches,
one per reactor turn (it held the reactor ~22 ms for 1000 sessions in one go); a failing kind of
write is logged once per outage, not once per write.
"""

from __future__ import annotations

import time

import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel, capturedLogs

from inprocess import connected
from txvoice.scaleout.calls import RedisCallStore
from txvoice.scaleout.connection import RedisUnavailable
from txvoice.scaleout.registry import RedisSessionRegistry
from txvoice.scaleout.resume import RedisResumeStore
from txvoice.scaleout.writes import BATCH, OutageNotice
from txvoice.session.session import Session

SESSIONS = 1000


class _Turns:
    """
    Counts the reactor's polls (each ``doIteration``): events with the same count ran with no
    poll between them.  A 0.5 ms LoopingCall stood in for this and could give two EVALs a
    reactor turn apart the same count when Redis answered within 0.5 ms (a flaky failure).
    """

    def __init__(self) -> None:
        self.count = 0
        self._had = "doIteration" in vars(reactor)
        self._saved = reactor.doIteration
        saved = self._saved

        def counting(timeout):
            self.count += 1
            return saved(timeout)

        reactor.doIteration = counting

    def stop(self) -> None:
        if self._had:
            reactor.doIteration = self._saved
        else:
            del reactor.doIteration


def counting_evals(conn):
    """Record (reactor poll count, argument count) of each EVAL ``conn`` sends; returns them, the poll counter, the real call."""
    evals: list[tuple[int, int]] = []
    ticker = _Turns()
    send = conn.call

    def counting(*args):
        if args[0] == "EVAL":
            evals.append((ticker.count, len(args)))
        return send(*args)

    conn.call = counting
    return evals, ticker, send


@pytest_twisted.inlineCallbacks
def test_a_refresh_of_a_thousand_sessions_never_holds_the_reactor(redis_server):
    conn = yield connected(redis_server.url, "w:")
    try:
        registry, resume = RedisSessionRegistry(conn), RedisResumeStore(conn, 30)
        sessions = [Session("127.0.0.1:1", user_id=f"u{i}", conversation_id="c", ip="127.0.0.1", resume_token=f"t{i}")
                    for i in range(SESSIONS)]
        for s in sessions:
            registry.local.add(s)
            resume._live[s.id] = (s, s.id)
        evals, ticker, send = counting_evals(conn)
        cpu = time.thread_time()
        wall = time.perf_counter()
        done = defer.gatherResults([registry.refresh(), resume.refresh()])  # what Redis coming back starts
        first_turn_cpu_ms = (time.thread_time() - cpu) * 1000
        yield done
        ticker.stop()
        total_ms = (time.perf_counter() - wall) * 1000
        print(f"\nrefresh of {SESSIONS} sessions (registry + resume): first reactor turn {first_turn_cpu_ms:.1f} ms CPU, "
              f"{len(evals)} EVALs over {len({t for t, _ in evals})} turns, {total_ms:.0f} ms in all")
        assert len(evals) == 2 * SESSIONS // BATCH
        # Each batch in a turn of its own (the registry's and the resume store's may share one).
        assert max(sum(1 for t, _ in evals if t == turn) for turn, _ in evals) <= 2
        assert first_turn_cpu_ms < 20  # the reactor-lag bound; one batch of each costs ~3 ms here
        assert int((yield conn.call("ZCARD", conn.key("sessions")))) == SESSIONS
        conn.call = send  # type: ignore[method-assign]

        # A session that closes while a round is under way is not written back after its removal.
        late = sessions[-1]
        d = registry.refresh()
        registry.remove(late)
        yield d
        yield task.deferLater(reactor, 0.05, lambda: None)
        assert (yield conn.call("EXISTS", conn.key("session", late.id))) == 0
    finally:
        yield conn.stopService()


@pytest_twisted.inlineCallbacks
def test_a_refresh_of_a_thousand_calls_goes_in_batches_and_skips_calls_that_ended(redis_server):
    """The call store's refresh was one EVAL over every owned call; now BATCH per EVAL, a turn apart."""
    conn = yield connected(redis_server.url, "wk:")
    try:
        store = RedisCallStore(conn, 30)
        for i in range(SESSIONS):
            store.owned[f"c{i}"] = f"e{i}"
            yield conn.call("SET", conn.key("call", f"c{i}"), f'{{"epoch":"e{i}"}}', "PX", "600000")
        evals, ticker, send = counting_evals(conn)
        d = store.refresh()
        del store.owned[f"c{SESSIONS - 1}"]  # ended after the round began: not re-armed by it
        rearmed = yield d
        ticker.stop()
        conn.call = send  # type: ignore[method-assign]
        assert rearmed == SESSIONS - 1
        assert len(evals) == SESSIONS // BATCH
        assert len({t for t, _ in evals}) == len(evals)  # each batch in a reactor turn of its own
        assert max(n for _, n in evals) <= 3 + 1 + 2 * BATCH  # EVAL, script, 0 keys, ttl, pairs
        assert int((yield conn.call("PTTL", conn.key("call", "c0")))) <= store.ttl_ms < 600000  # re-armed
        assert int((yield conn.call("PTTL", conn.key("call", f"c{SESSIONS - 1}")))) > store.ttl_ms  # left alone
    finally:
        yield conn.stopService()


def test_outage_notice_logs_the_first_failure_once_and_the_count_when_it_works_again():
    notice = OutageNotice("writing the session registry to Redis")
    with capturedLogs() as events:
        for _ in range(50):
            defer.fail(RedisUnavailable("Redis at redis://127.0.0.1:1/0 is not connected")).addErrback(notice.failed)
        passed = defer.fail(RedisUnavailable("down")).addErrback(notice.passed)
        passed.addErrback(lambda f: f.trap(RedisUnavailable))  # handed on to the caller
        notice.succeeded(None)
        defer.fail(RedisUnavailable("down again")).addErrback(notice.failed)
    warnings = [e for e in events if e["log_level"] is LogLevel.warn]
    infos = [e for e in events if e["log_level"] is LogLevel.info]
    assert len(warnings) == 2  # one for each outage
    assert "not connected" in warnings[0]["error"] and warnings[1]["error"] == "redis_unavailable: down again"
    assert len(infos) == 1 and infos[0]["failures"] == 51


@pytest_twisted.inlineCallbacks
def test_call_record_refreshes_that_fail_are_logged_once_per_outage(redis_server):
    """The call store's refresh uses OutageNotice as the registry's and resume store's writes do."""
    conn = yield connected(redis_server.url, "wc:")
    try:
        store = RedisCallStore(conn, 30)
        store.owned["call-1"] = "e1"
        send = conn.call
        conn.call = lambda *args: defer.fail(RedisUnavailable("Redis at the test is not connected"))  # type: ignore[method-assign]
        with capturedLogs() as events:
            for _ in range(20):
                yield store.refresh()  # the failure ends there
            conn.call = send  # type: ignore[method-assign]
            yield store.refresh()
        warnings = [e for e in events if e["log_level"] is LogLevel.warn]
        infos = [e for e in events if e["log_level"] is LogLevel.info and e.get("what") == "refreshing call records in Redis"]
        assert len(warnings) == 1 and warnings[0]["what"] == "refreshing call records in Redis", warnings
        assert len(infos) == 1 and infos[0]["failures"] == 20
    finally:
        yield conn.stopService()
