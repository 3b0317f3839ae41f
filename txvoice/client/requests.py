"""
The txvoice.v1 client's requests awaiting their answer: the message whose ``reply_to`` is the
request's ``message_id``, within an optional timeout.  A best-effort request fails when the
connection is lost; a reliable one waits for the reconnect (its message is re-sent).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txvoice.client.errors import NotConnected, RequestTimeout

__all__ = ["PendingRequests"]


class PendingRequests:
    """The requests of one client that have no answer yet, by ``message_id``."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._pending: dict[str, tuple[Deferred[Any], bool]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, mid: str, reliable: bool, timeout: float | None, what: str) -> Deferred[Any]:
        """Await the answer to ``mid``; fails with :class:`RequestTimeout` after ``timeout`` s."""
        result: Deferred[Any] = Deferred()
        self._pending[mid] = (result, reliable)
        timer: IDelayedCall | None = None
        if timeout is not None:

            def expire() -> None:
                if self._pending.pop(mid, None) is not None and not result.called:
                    result.errback(RequestTimeout(f"no answer to {what} within {timeout}s"))

            timer = self.clock.callLater(timeout, expire)

        def settled(value: Any) -> Any:
            if timer is not None and timer.active():
                timer.cancel()
            return value

        result.addBoth(settled)
        return result

    def pop(self, mid: str) -> Deferred[Any] | None:
        """Stop awaiting ``mid``; its Deferred (None if it was not awaited)."""
        entry = self._pending.pop(mid, None)
        return None if entry is None else entry[0]

    def answer(self, reply_to: str, env: dict[str, Any]) -> None:
        """``env`` answers ``reply_to``: fire its request with it."""
        d = self.pop(reply_to)
        if d is not None and not d.called:
            d.callback(env)

    def fail(self, mid: str, error: Exception) -> None:
        d = self.pop(mid)
        if d is not None and not d.called:
            d.errback(error)

    def lost(self, reason: str | None) -> None:
        """The connection is lost: fail the best-effort requests (reliable ones are re-sent)."""
        for mid, (d, reliable) in list(self._pending.items()):
            if not reliable:
                del self._pending[mid]
                if not d.called:
                    d.errback(NotConnected(f"connection lost before the answer ({reason})"))

    def fail_all(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for d, _ in pending.values():
            if not d.called:
                d.errback(error)
