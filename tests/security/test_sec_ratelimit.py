"""Token bucket and strikes on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txvoice.errors import VoiceError
from txvoice.security.ratelimit import (
    CLOSE_POLICY_VIOLATION,
    ConnectionRateLimiter,
    Decision,
    RateLimited,
    RateLimitPolicy,
    TokenBucket,
)


def test_burst_then_reject():
    b = TokenBucket(rate=10, capacity=5, now=0.0)
    assert [b.allow(0.0) for _ in range(6)] == [True] * 5 + [False]


def test_refill_rate():
    b = TokenBucket(rate=10, capacity=5, now=0.0)
    for _ in range(5):
        b.allow(0.0)
    assert not b.allow(0.05)  # half a token
    assert b.allow(0.1)  # 0.1 s * 10/s = one token (the half above carried over)
    assert not b.allow(0.1)
    assert b.available(0.3) == pytest.approx(2.0)


def test_refill_caps_at_capacity():
    b = TokenBucket(rate=10, capacity=5, now=0.0)
    assert b.available(1000.0) == 5.0
    assert sum(b.allow(1000.0) for _ in range(10)) == 5


def test_clock_going_back_does_not_refill():
    b = TokenBucket(rate=1, capacity=1, now=100.0)
    assert b.allow(100.0)
    assert not b.allow(50.0)
    assert not b.allow(100.5)
    assert b.allow(101.0)


def test_cost():
    b = TokenBucket(rate=1000, capacity=4000, now=0.0)
    assert b.allow(0.0, cost=3000)
    assert not b.allow(0.0, cost=1500)
    assert b.allow(0.5, cost=1500)


def test_bad_parameters():
    with pytest.raises(ValueError):
        TokenBucket(rate=0, capacity=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, capacity=0)


def test_s4_policy():
    policy = RateLimitPolicy.from_settings(window_ms=60000, max_requests=1000)
    assert policy.rate == pytest.approx(1000 / 60)
    assert policy.capacity == 100
    assert RateLimitPolicy(burst=7).capacity == 7
    limiter = policy.new_limiter(now=0.0)
    # a full window at the sustained rate is allowed after the burst is spent
    allowed = sum(limiter.check(i * 0.06) is Decision.ALLOW for i in range(1000))
    assert allowed == 1000
    # a flood is cut to burst + rate * elapsed
    flood = policy.new_limiter(now=0.0)
    allowed = sum(flood.check(i * 0.001) is Decision.ALLOW for i in range(1000))
    assert allowed == pytest.approx(100 + 1000 / 60 * 0.999, abs=1)


def test_strikes_close():
    limiter = ConnectionRateLimiter(TokenBucket(1, 2, 0.0), strike_limit=3, strike_window=10)
    decisions = [limiter.check(0.0) for _ in range(5)]
    assert decisions == [Decision.ALLOW, Decision.ALLOW, Decision.REJECT, Decision.REJECT,
                         Decision.CLOSE]
    assert limiter.rejected == 3
    assert CLOSE_POLICY_VIOLATION == 1008


def test_strikes_reset_after_window():
    limiter = ConnectionRateLimiter(TokenBucket(0.01, 1, 0.0), strike_limit=3, strike_window=10)
    assert limiter.check(0.0) is Decision.ALLOW
    assert limiter.check(1.0) is Decision.REJECT
    assert limiter.check(2.0) is Decision.REJECT
    # window of the first strike (t=1) is over at t=11: counting starts again
    assert limiter.check(11.0) is Decision.REJECT
    assert limiter.strikes == 1
    assert limiter.check(12.0) is Decision.REJECT
    assert limiter.check(13.0) is Decision.CLOSE


def test_allowed_messages_do_not_strike():
    limiter = ConnectionRateLimiter(TokenBucket(10, 1, 0.0), strike_limit=2, strike_window=60)
    for i in range(100):
        assert limiter.check(i * 0.1) is Decision.ALLOW
    assert limiter.strikes == 0


def test_rate_limited_error():
    err = RateLimited("slow down")
    assert isinstance(err, VoiceError) and err.code == "rate_limited"


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.5, 100),
    capacity=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200),
)
def test_never_exceeds_budget(rate, capacity, gaps):
    b = TokenBucket(rate, capacity, now=0.0)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += b.allow(now)
    assert allowed <= capacity + rate * now + 1e-6
