"""
Per-connection message rate limiting: a token bucket plus a strike counter.

S4 configures ``RATE_LIMIT_WINDOW`` (ms) and ``RATE_LIMIT_MAX_REQUESTS``: the bucket refills at
``max_requests / window`` per second and holds ``burst`` tokens.  Each rejected message is a
strike; ``strike_limit`` strikes inside one strike window mean a persistent abuser, whom the
server closes with 1008 (policy violation).

This runs once per inbound message, so the hot methods only do float arithmetic on
``__slots__`` attributes: no containers, no clock call (the caller passes ``now``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from txvoice.errors import VoiceError

__all__ = [
    "CLOSE_POLICY_VIOLATION",
    "RateLimited",
    "Decision",
    "TokenBucket",
    "ConnectionRateLimiter",
    "RateLimitPolicy",
]

#: WebSocket close code for "policy violation" (RFC 6455 section 7.4.1).
CLOSE_POLICY_VIOLATION = 1008


class RateLimited(VoiceError):
    """A message was dropped because the connection exceeds its message rate."""

    code = "rate_limited"


class Decision(IntEnum):
    """Outcome of :meth:`ConnectionRateLimiter.check`."""

    ALLOW = 0  # process the message
    REJECT = 1  # drop it (optionally answer with a ``rate_limited`` error)
    CLOSE = 2  # too many strikes: close the connection with 1008


# Module-level aliases: class attribute access on an Enum costs more than a global lookup.
_ALLOW, _REJECT, _CLOSE = Decision.ALLOW, Decision.REJECT, Decision.CLOSE


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate`` tokens per second; starts full."""

    __slots__ = ("rate", "capacity", "_tokens", "_last")

    def __init__(self, rate: float, capacity: float, now: float = 0.0) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("rate must be > 0 and capacity >= 1")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._tokens = float(capacity)
        self._last = float(now)

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if available at time ``now`` (seconds); True if taken."""
        elapsed = now - self._last
        tokens = self._tokens
        if elapsed > 0.0:  # a clock that steps back does not refill
            tokens += elapsed * self.rate
            if tokens > self.capacity:
                tokens = self.capacity
            self._last = now
        if tokens >= cost - 1e-9:  # tolerate float error at exactly the refill rate
            self._tokens = tokens - cost
            return True
        self._tokens = tokens
        return False

    def available(self, now: float) -> float:
        """Tokens available at ``now`` (without taking any)."""
        elapsed = now - self._last
        tokens = self._tokens + (elapsed * self.rate if elapsed > 0.0 else 0.0)
        return tokens if tokens < self.capacity else self.capacity


class ConnectionRateLimiter:
    """A token bucket with strikes: :meth:`check` says allow, reject, or close."""

    __slots__ = ("bucket", "strike_limit", "strike_window", "strikes", "_strike_start", "rejected")

    def __init__(
        self, bucket: TokenBucket, strike_limit: int = 50, strike_window: float = 60.0
    ) -> None:
        self.bucket = bucket
        self.strike_limit = strike_limit
        self.strike_window = strike_window
        self.strikes = 0  # rejections in the current strike window
        self.rejected = 0  # rejections over the connection's life (for logs/metrics)
        self._strike_start = 0.0

    def check(self, now: float, cost: float = 1.0) -> Decision:
        """Decide for one message arriving at ``now``."""
        if self.bucket.allow(now, cost):
            return _ALLOW
        self.rejected += 1
        if self.strikes == 0 or now - self._strike_start >= self.strike_window:
            self._strike_start = now
            self.strikes = 1
        else:
            self.strikes += 1
        if self.strikes >= self.strike_limit:
            return _CLOSE
        return _REJECT


@dataclass(frozen=True)
class RateLimitPolicy:
    """Settings shared by all connections; :meth:`new_limiter` makes one per connection."""

    max_requests: int = 1000
    window: float = 60.0  # seconds
    burst: int | None = None  # bucket size; default: max_requests / 10, at least 10
    strike_limit: int = 50
    strike_window: float | None = None  # default: ``window``

    @classmethod
    def from_settings(
        cls,
        window_ms: int = 60_000,
        max_requests: int = 1000,
        burst: int | None = None,
        strike_limit: int = 50,
    ) -> "RateLimitPolicy":
        """From S4's ``RATE_LIMIT_WINDOW`` (milliseconds) and ``RATE_LIMIT_MAX_REQUESTS``."""
        return cls(max_requests=max_requests, window=window_ms / 1000.0, burst=burst,
                   strike_limit=strike_limit)

    @property
    def rate(self) -> float:
        """Sustained rate, tokens per second."""
        return self.max_requests / self.window

    @property
    def capacity(self) -> int:
        """Bucket size (the burst a fresh or idle connection may send at once)."""
        if self.burst is not None:
            return self.burst
        return max(10, self.max_requests // 10)

    def new_limiter(self, now: float) -> ConnectionRateLimiter:
        """A limiter for a connection opened at ``now``."""
        return ConnectionRateLimiter(
            TokenBucket(self.rate, self.capacity, now),
            strike_limit=self.strike_limit,
            strike_window=self.strike_window if self.strike_window is not None else self.window,
        )
