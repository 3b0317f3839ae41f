"""Per-address request limits: the bucket per address, the wait it reports, and bounded memory."""

from __future__ import annotations

import pytest

from txvoice.security.iplimits import ConnectionLimiter
from txvoice.security.requestlimits import AddressRateLimiter


def test_a_burst_then_the_sustained_rate() -> None:
    limiter = AddressRateLimiter(per_minute=6)  # one every 10 s, bursts of 6
    assert [limiter.check("203.0.113.1", 0.0) for _ in range(6)] == [0.0] * 6
    assert limiter.check("203.0.113.1", 0.0) == pytest.approx(10.0)
    assert limiter.check("203.0.113.1", 4.0) == pytest.approx(6.0)  # refused requests take nothing
    assert limiter.check("203.0.113.1", 10.0) == 0.0
    assert limiter.check("203.0.113.1", 10.0) == pytest.approx(10.0)


def test_addresses_are_counted_apart() -> None:
    limiter = AddressRateLimiter(per_minute=2)
    assert limiter.check("203.0.113.1", 0.0) == limiter.check("203.0.113.1", 0.0) == 0.0
    assert limiter.check("203.0.113.1", 0.0) > 0
    assert limiter.check("198.51.100.7", 0.0) == 0.0


def test_ipv6_hosts_of_one_network_share_a_bucket_through_the_key() -> None:
    limiter = AddressRateLimiter(per_minute=2, key=ConnectionLimiter().key_for)
    assert limiter.check("2001:db8::1", 0.0) == limiter.check("2001:db8::2", 0.0) == 0.0
    assert limiter.check("2001:db8::3", 0.0) > 0
    assert limiter.check("2001:db8:0:1::1", 0.0) == 0.0  # another /64


def test_explicit_burst() -> None:
    limiter = AddressRateLimiter(per_minute=60, burst=2)
    assert limiter.check("192.0.2.1", 0.0) == limiter.check("192.0.2.1", 0.0) == 0.0
    assert limiter.check("192.0.2.1", 0.0) == pytest.approx(1.0)


def test_memory_is_bounded_and_refilled_buckets_go_first() -> None:
    limiter = AddressRateLimiter(per_minute=60, max_addresses=3)  # refills in 60 s
    for i in range(3):
        limiter.check(f"10.0.0.{i}", 0.0)
    limiter.check("10.0.0.9", 0.0)
    assert limiter.tracked == 3  # the coldest (10.0.0.0) made room
    # Long after, every bucket has refilled: new addresses drop them instead of growing the map.
    for i in range(20, 40):
        limiter.check(f"10.0.1.{i}", 1000.0 + i)
    assert limiter.tracked <= 3


def test_an_address_in_use_is_kept_over_colder_ones() -> None:
    limiter = AddressRateLimiter(per_minute=1, max_addresses=2)
    assert limiter.check("192.0.2.10", 0.0) == 0.0
    limiter.check("192.0.2.11", 1.0)
    assert limiter.check("192.0.2.10", 2.0) > 0  # touched: now the warmest
    limiter.check("192.0.2.12", 3.0)  # evicts "192.0.2.11", not "192.0.2.10"
    assert limiter.check("192.0.2.10", 4.0) > 0


@pytest.mark.parametrize("peer", ["", "/run/txvoice.sock", "not-an-address"])
def test_peers_without_an_ip_address_are_not_limited(peer) -> None:
    limiter = AddressRateLimiter(per_minute=1)
    assert all(limiter.check(peer, 0.0) == 0.0 for _ in range(5))
    assert limiter.tracked == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"per_minute": 0}, {"per_minute": -1}, {"per_minute": 5, "max_addresses": 0}, {"per_minute": 5, "burst": 0}],
)
def test_bad_settings(kwargs) -> None:
    with pytest.raises(ValueError):
        AddressRateLimiter(**kwargs)
