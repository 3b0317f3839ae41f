"""Backoff delays and circuit-breaker transitions, on a Clock (and a MemoryReactorClock for real endpoints)."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from client_fakes import make_client
from txvoice.client import (
    Backoff,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    ConnectionFailed,
    ConnectionState,
    VoiceClient,
)


def test_backoff_defaults_are_s0_s4() -> None:
    b = Backoff()
    assert (b.base, b.factor, b.max_delay, b.max_attempts) == (1.0, 2.0, 30.0, 5)
    assert [Backoff(jitter=0).nominal(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert Backoff().nominal(10_000) == 30.0  # no overflow


def test_jitter_spreads_within_bounds_and_never_exceeds_the_cap() -> None:
    b = Backoff(jitter=0.2)
    assert b.delay(3, lambda: 0.0) == pytest.approx(3.2)
    assert b.delay(3, lambda: 0.5) == pytest.approx(4.0)
    assert b.delay(3, lambda: 0.999999) == pytest.approx(4.8, abs=1e-4)
    assert b.delay(9, lambda: 0.999999) == 30.0  # capped after jitter
    assert b.delay(9, lambda: 0.0) == pytest.approx(24.0)


def test_attempt_limit() -> None:
    assert not Backoff(max_attempts=5).exhausted(4)
    assert Backoff(max_attempts=5).exhausted(5)
    assert not Backoff(max_attempts=None).exhausted(10**6)
    with pytest.raises(ValueError):
        Backoff(factor=0.5)


def test_breaker_closed_open_half_open_closed() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock, failure_threshold=3, reset_timeout=10.0)
    moves: list[tuple[str, str]] = []
    breaker.on_change(lambda old, new: moves.append((old.value, new.value)))

    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    with pytest.raises(CircuitOpenError) as e:
        breaker.check()
    assert e.value.retry_after == 10.0

    clock.advance(9.5)
    assert breaker.retry_after() == pytest.approx(0.5)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.5)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the one trial
    assert not breaker.allow()  # nobody else while it runs
    breaker.record_failure()  # the trial failed: open again, for another full timeout
    assert breaker.state is BreakerState.OPEN
    clock.advance(9.9)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.1)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.failures == 0
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                     ("open", "half_open"), ("half_open", "closed")]


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(Clock(), failure_threshold=2)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def refuse_next(reactor: MemoryReactorClock) -> None:
    """Fail the newest pending TCP connection attempt as 'connection refused'."""
    host, port, factory, timeout, bind = reactor.tcpClients[-1]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))


def test_reconnect_delays_follow_the_backoff_then_the_client_fails() -> None:
    # Real TCP endpoint code on a memory reactor: attempts are recorded, and we refuse each one.
    # (The breaker is set out of the way here; with its defaults it would open at the fifth
    # failure and hold the last retry for its 30 s reset instead of 16 s.)
    reactor = MemoryReactorClock()
    client = VoiceClient("ws://127.0.0.1:9/", reactor=reactor,
                         endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", 9),
                         backoff=Backoff(jitter=0.0, max_attempts=5),
                         breaker=CircuitBreaker(reactor, failure_threshold=10))
    scheduled: list[tuple[int, float]] = []
    client.on("reconnecting", lambda attempt, delay: scheduled.append((attempt, delay)))
    failed: list[Failure] = []
    d = client.connect()
    d.addErrback(failed.append)
    attempt_times = []
    for _ in range(6):
        attempt_times.append(reactor.seconds())
        assert len(reactor.tcpClients) == len(attempt_times)
        refuse_next(reactor)
        if client.state is ConnectionState.CONNECTING:
            reactor.advance(scheduled[-1][1])
    reactor.advance(0)  # the give-up is scheduled, not immediate
    assert attempt_times == [0, 1, 3, 7, 15, 31]
    assert scheduled == [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0)]
    assert client.state is ConnectionState.FAILED
    assert failed and failed[0].check(ConnectionFailed)
    assert failed[0].value.attempts == 6
    reactor.advance(3600)
    assert len(reactor.tcpClients) == 6  # no attempt after giving up


def test_with_default_settings_the_breaker_holds_the_last_retry() -> None:
    reactor = MemoryReactorClock()
    client = VoiceClient("ws://127.0.0.1:9/", reactor=reactor, endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", 9),
                         random=lambda: 0.5)  # jitter at its midpoint: the nominal delays
    scheduled: list[float] = []
    client.on("reconnecting", lambda attempt, delay: scheduled.append(delay))
    client.connect().addErrback(lambda f: None)
    for attempt in range(6):
        refuse_next(reactor)
        reactor.advance(scheduled[-1] if attempt < 5 else 0)
    assert scheduled == [1.0, 2.0, 4.0, 8.0, 30.0]
    assert client.breaker.state is BreakerState.OPEN and client.state is ConnectionState.FAILED


def test_jittered_delays_stay_within_their_band() -> None:
    client, endpoint, clock = make_client(backoff=Backoff(jitter=0.25, max_attempts=None), random=iter(
        [0.0, 0.999, 0.5, 0.0, 0.999]).__next__)
    delays: list[float] = []
    client.on("reconnecting", lambda attempt, delay: delays.append(delay))
    client.connect()
    for _ in range(5):
        endpoint.refuse()
        clock.advance(delays[-1])
    assert delays == pytest.approx([0.75, 2.499, 4.0, 6.0, 19.992])


def test_breaker_holds_retries_until_half_open_and_a_success_closes_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock, failure_threshold=3, reset_timeout=10.0)
    client, endpoint, clock = make_client(clock, breaker=breaker, backoff=Backoff(jitter=0.0, max_attempts=None))
    moves: list[str] = []
    breaker.on_change(lambda old, new: moves.append(new.value))
    delays: list[float] = []
    client.on("reconnecting", lambda attempt, delay: delays.append(delay))
    client.connect()
    for _ in range(4):
        endpoint.refuse()
        clock.advance(delays[-1])
    # 1 s, 2 s, then the breaker opened: wait out its 10 s (not the 4 s backoff); the half-open
    # trial failed: open again for 10 s (the 8 s backoff is shorter).
    assert delays == [1.0, 2.0, 10.0, 10.0]
    assert endpoint.attempt_times == [0, 1, 3, 13, 23]
    assert moves == ["open", "half_open", "open", "half_open"]
    link = endpoint.accept().open()
    assert breaker.state is BreakerState.HALF_OPEN  # the WebSocket is up, but no greeting yet
    link.greet()
    assert client.state is ConnectionState.OPEN
    assert breaker.state is BreakerState.CLOSED


def test_connect_is_refused_while_the_breaker_is_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock, failure_threshold=2, reset_timeout=30.0)
    client, endpoint, clock = make_client(clock, breaker=breaker, backoff=Backoff(jitter=0.0, max_attempts=1))
    errors: list[Failure] = []
    client.connect().addErrback(errors.append)
    endpoint.refuse()
    clock.advance(1.0)
    endpoint.refuse()
    clock.advance(0)
    assert client.state is ConnectionState.FAILED and errors[0].check(ConnectionFailed)
    refused: list[Failure] = []
    client.connect().addErrback(refused.append)
    assert refused[0].check(CircuitOpenError) and not endpoint.pending
    clock.advance(30.0)
    opened = []
    client.connect().addCallback(opened.append)
    endpoint.accept().open().greet()
    assert opened == [client] and breaker.state is BreakerState.CLOSED


def test_a_websocket_that_never_greets_counts_as_a_failed_attempt() -> None:
    client, endpoint, clock = make_client(ready_timeout=5.0, backoff=Backoff(jitter=0.0, max_attempts=None))
    failures: list[str] = []
    client.on("attempt_failed", failures.append)
    client.connect()
    link = endpoint.accept().open()
    clock.advance(5.0)
    assert link.aborted and failures == ["no greeting within 5.0s"]
    clock.advance(0)  # the transport closes
    assert client.state is ConnectionState.CONNECTING
    clock.advance(1.0)
    assert len(endpoint.pending) == 1  # retried after the first backoff step


def test_closing_during_a_half_open_trial_gives_the_trial_back() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock, failure_threshold=1, reset_timeout=5.0)
    client, endpoint, clock = make_client(clock, breaker=breaker, backoff=Backoff(jitter=0.0, max_attempts=None))
    client.connect()
    endpoint.refuse()  # opens the breaker
    clock.advance(5.0)  # the retry is the half-open trial
    assert breaker.state is BreakerState.HALF_OPEN and len(endpoint.pending) == 1
    client.close()
    clock.advance(0)
    assert client.state is ConnectionState.CLOSED
    opened: list = []
    client.connect().addCallback(opened.append)
    endpoint.accept().open().greet()
    assert opened == [client] and breaker.state is BreakerState.CLOSED
