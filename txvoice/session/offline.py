"""
Messages for a client that is not connected (S4's "message queuing for offline delivery").

What is addressed to a call session or a user while no connection serves it (a reply finished
after the caller dropped, a broadcast) is kept here, bounded per address in count, bytes and age,
and handed over in order, once, when the session resumes or the user reconnects.  Over a bound the
oldest messages are dropped first, and every drop is counted by reason (``count``, ``bytes``,
``expired``) for ``/metrics``.

:class:`MemoryOfflineStore` keeps them in this process; a Redis store fills the same
:class:`IOfflineStore` for scale-out (a list per address, ``RPUSH`` / ``LTRIM`` / ``LRANGE`` + ``DEL``
in one transaction for ``take``), which is why every method answers a Deferred.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

#: Defaults (``--offline-queue-*`` options): per address.
DEFAULT_MAX_MESSAGES = 200
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_AGE = 300.0

DROP_REASONS = ("count", "bytes", "expired")


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One WebSocket message as it will be sent: its payload, whether binary, when it was queued."""

    payload: bytes
    is_binary: bool
    queued_at: float


class IOfflineStore(Interface):
    """Per-address FIFO queues of messages for clients that are not connected."""

    dropped = Attribute("dict reason -> messages dropped (``count``, ``bytes``, ``expired``), for metrics.")

    def put(address: str, payload: bytes, is_binary: bool) -> defer.Deferred[None]:
        """Append a message for ``address``, dropping the oldest over a bound."""

    def take(address: str) -> defer.Deferred[list[QueuedMessage]]:
        """Remove and return every live message for ``address``, oldest first."""

    def discard(address: str) -> defer.Deferred[int]:
        """Forget ``address``'s messages (the session ended for good); how many there were."""

    def pending(address: str) -> int:
        """Messages held for ``address`` now (may be approximate for a networked store)."""


class _Queue:
    __slots__ = ("messages", "bytes")

    def __init__(self) -> None:
        self.messages: deque[QueuedMessage] = deque()
        self.bytes = 0


@implementer(IOfflineStore)
class MemoryOfflineStore:
    """In this process: ``max_messages``, ``max_bytes`` and ``max_age`` (s) per address."""

    def __init__(
        self,
        now: Callable[[], float],
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age: float = DEFAULT_MAX_AGE,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        if max_messages < 1 or max_bytes < 1 or max_age <= 0:
            raise ValueError("offline queue bounds must be positive")
        self.now = now
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.on_drop = on_drop
        self.dropped = {reason: 0 for reason in DROP_REASONS}
        self._queues: dict[str, _Queue] = {}

    def _drop(self, reason: str, count: int = 1) -> None:
        if count:
            self.dropped[reason] += count
            if self.on_drop is not None:
                self.on_drop(reason, count)

    def _expire(self, queue: _Queue, now: float) -> None:
        messages, expired = queue.messages, 0
        while messages and now - messages[0].queued_at >= self.max_age:
            queue.bytes -= len(messages.popleft().payload)
            expired += 1
        self._drop("expired", expired)

    def put(self, address: str, payload: bytes, is_binary: bool) -> defer.Deferred[None]:
        now = self.now()
        if len(payload) > self.max_bytes:
            self._drop("bytes")  # larger than the whole bound: it alone is dropped
            return defer.succeed(None)
        queue = self._queues.get(address)
        if queue is None:
            queue = self._queues[address] = _Queue()
        self._expire(queue, now)
        queue.messages.append(QueuedMessage(payload, is_binary, now))
        queue.bytes += len(payload)
        messages = queue.messages
        while len(messages) > self.max_messages:
            queue.bytes -= len(messages.popleft().payload)
            self._drop("count")
        while queue.bytes > self.max_bytes:
            queue.bytes -= len(messages.popleft().payload)
            self._drop("bytes")
        return defer.succeed(None)

    def take(self, address: str) -> defer.Deferred[list[QueuedMessage]]:
        queue = self._queues.pop(address, None)
        if queue is None:
            return defer.succeed([])
        self._expire(queue, self.now())
        return defer.succeed(list(queue.messages))

    def discard(self, address: str) -> defer.Deferred[int]:
        queue = self._queues.pop(address, None)
        return defer.succeed(len(queue.messages) if queue is not None else 0)

    def pending(self, address: str) -> int:
        queue = self._queues.get(address)
        return len(queue.messages) if queue is not None else 0

    def sweep(self) -> None:
        """Drop what has expired everywhere (and empty queues); the realtime dialect calls this now and then."""
        now = self.now()
        for address in list(self._queues):
            queue = self._queues[address]
            self._expire(queue, now)
            if not queue.messages:
                del self._queues[address]
