"""
A circuit breaker around connecting: after enough failures in a row it stops attempts for a while.

``closed``: attempts go through; ``failure_threshold`` failures in a row open it.
``open``: attempts are refused (:class:`CircuitOpenError`) until ``reset_timeout`` has passed.
``half_open``: one trial attempt is let through; its success closes the breaker, its failure
opens it again for another ``reset_timeout``.

The open -> half-open move happens when the breaker is next consulted after the timeout (no
timer of its own), so it is exact under a ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

import enum
from typing import Callable

from twisted.internet.interfaces import IReactorTime

from txvoice.logging import NamespaceLogger

__all__ = ["BreakerState", "CircuitBreaker", "CircuitOpenError"]


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(Exception):
    """An attempt refused by an open breaker; ``retry_after`` seconds until a trial is allowed."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"circuit breaker open: next attempt allowed in {retry_after:.2f}s")
        self.retry_after = retry_after


class CircuitBreaker:
    """Counts connection outcomes; see the module docstring for the states."""

    log = NamespaceLogger(namespace="txvoice.client.breaker")

    def __init__(self, clock: IReactorTime, failure_threshold: int = 5, reset_timeout: float = 30.0) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if reset_timeout < 0:
            raise ValueError("reset_timeout must be >= 0")
        self.clock = clock
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.failures = 0  # in a row
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._trial = False  # a half-open trial is under way
        self._listeners: list[Callable[[BreakerState, BreakerState], None]] = []

    # state

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose timeout passed turns half-open here)."""
        if self._state is BreakerState.OPEN and self.clock.seconds() >= self._opened_at + self.reset_timeout:
            self._move(BreakerState.HALF_OPEN)
        return self._state

    def on_change(self, listener: Callable[[BreakerState, BreakerState], None]) -> Callable[[], None]:
        """Call ``listener(old, new)`` on every transition; returns the unsubscribe callable."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if new is BreakerState.OPEN:
            self._opened_at = self.clock.seconds()
        self._trial = False
        self.log.info("circuit breaker {old} -> {new} after {failures} failures",
                      old=old.value, new=new.value, failures=self.failures)
        for listener in list(self._listeners):
            listener(old, new)

    # gate

    def retry_after(self) -> float:
        """Seconds until an attempt would be allowed (0 when one is allowed now)."""
        state = self.state
        if state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self.reset_timeout - self.clock.seconds())
        return 0.0

    def allow(self) -> bool:
        """Take the right to make one attempt now (in half-open, only one at a time gets it)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial:
            self._trial = True
            return True
        return False

    def check(self) -> None:
        """:meth:`allow` or raise :class:`CircuitOpenError`."""
        if not self.allow():
            raise CircuitOpenError(self.retry_after())

    # outcomes

    def record_success(self) -> None:
        self.failures = 0
        if self._state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self.failures += 1
        state = self.state
        tripped = state is BreakerState.CLOSED and self.failures >= self.failure_threshold
        if state is BreakerState.HALF_OPEN or tripped:
            self._move(BreakerState.OPEN)
        elif state is BreakerState.OPEN:
            self._opened_at = self.clock.seconds()

    def release(self) -> None:
        """Give back a half-open trial that ended without an outcome (the attempt was cancelled)."""
        self._trial = False

    def reset(self) -> None:
        """Forget failures and close."""
        self.failures = 0
        if self._state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED)
