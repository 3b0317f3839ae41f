"""
Request rate limits per client address, for HTTP endpoints that cost the server something.

``POST /auth/websocket`` verifies a JWT (an RSA or ECDSA signature check) and stores a session
token for every request; without a limit one address could spend the reactor's time on
signature checks, or fill the token store and lock everyone else out until its tokens expire.
:class:`AddressRateLimiter` keeps a :class:`~txvoice.security.ratelimit.TokenBucket` per client
address key (IPv6 per /64, as the connection limits count) and holds at most ``max_addresses``
of them: buckets that have refilled carry no state and are dropped first, then the least
recently used.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from txvoice.security.iplimits import is_ip_address
from txvoice.security.ratelimit import TokenBucket

__all__ = ["AddressRateLimiter"]


class AddressRateLimiter:
    """``per_minute`` requests per address key, in bursts of up to ``burst`` (default: ``per_minute``)."""

    def __init__(
        self,
        per_minute: float,
        burst: int | None = None,
        key: Callable[[str], str] = str,
        max_addresses: int = 100_000,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be > 0")
        if max_addresses < 1:
            raise ValueError("max_addresses must be >= 1")
        if burst is not None and burst < 1:
            raise ValueError("burst must be >= 1")
        self.rate = per_minute / 60.0
        self.capacity = float(burst if burst is not None else max(1, round(per_minute)))
        self._key = key
        self.max_addresses = max_addresses
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def tracked(self) -> int:
        """Addresses with a bucket right now."""
        return len(self._buckets)

    def check(self, address: str, now: float) -> float:
        """
        Count one request from ``address`` at ``now`` (seconds): 0.0 when it is allowed,
        otherwise the seconds until one would be (for ``Retry-After``).  Like the per-IP
        connection limit, it applies to IP addresses only: a peer without one (a UNIX socket,
        i.e. a local proxy) stands for all its clients, and one budget would lock them all out.
        """
        if not is_ip_address(address):
            return 0.0
        key = self._key(address)
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = buckets[key] = TokenBucket(self.rate, self.capacity, now)
        else:
            buckets.move_to_end(key)
        if bucket.allow(now):
            return 0.0
        return max(0.0, (1.0 - bucket.available(now)) / self.rate)

    def _make_room(self, now: float) -> None:
        """Drop a few refilled buckets from the cold end; then, if still full, the coldest."""
        buckets = self._buckets
        for _ in range(2):
            if not buckets:
                return
            key, bucket = next(iter(buckets.items()))
            if bucket.available(now) < self.capacity:
                break
            del buckets[key]
        while len(buckets) >= self.max_addresses:
            buckets.popitem(last=False)
