"""
Exponential backoff with jitter: how long a client waits before each reconnection attempt.

The defaults are S0/S4's: 1 s, doubling, at most 30 s, five attempts.  Jitter spreads clients
that lost the same server over time, so they do not all come back in the same instant.
"""

from __future__ import annotations

import math
import random as _random
from dataclasses import dataclass
from typing import Callable

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """
    Delay before reconnection attempt ``n`` (1-based): ``min(max_delay, base * factor ** (n - 1))``,
    spread uniformly over ``±jitter`` of itself and never above ``max_delay``.

    ``max_attempts`` is how many reconnection attempts in a row may fail before the client gives
    up (``None``: never gives up).
    """

    base: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.2
    max_attempts: int | None = 5

    def __post_init__(self) -> None:
        if self.base < 0 or self.max_delay < 0:
            raise ValueError("backoff delays must be >= 0")
        if self.factor < 1:
            raise ValueError("backoff factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a fraction between 0 and 1")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError("max_attempts must be >= 0 or None")

    def nominal(self, attempt: int) -> float:
        """The delay before attempt ``attempt`` without jitter."""
        if attempt < 1:
            raise ValueError(f"attempts count from 1, not {attempt}")
        try:
            delay = self.base * self.factor ** min(attempt - 1, 1024)
        except OverflowError:
            delay = math.inf
        return min(delay, self.max_delay)

    def delay(self, attempt: int, random: Callable[[], float] = _random.random) -> float:
        """The jittered delay before attempt ``attempt``; ``random()`` returns a float in [0, 1)."""
        delay = self.nominal(attempt)
        if self.jitter:
            delay *= 1.0 + self.jitter * (2.0 * random() - 1.0)
        return min(max(delay, 0.0), self.max_delay)

    def exhausted(self, attempts: int) -> bool:
        """True when ``attempts`` failed attempts in a row mean the client should give up."""
        return self.max_attempts is not None and attempts >= self.max_attempts
