"""
The client's priority send queue, bounded in bytes.

Lower priority numbers go first; equal priorities go in the order they were queued.  Reliable
messages (JSON with ``reliable: true`` and a ``message_id``) stay in the queue's care until the
server's ``ack``: once written they wait in :attr:`SendQueue.unacked`, and after a reconnect
:meth:`SendQueue.requeue_unacked` puts them back ahead of later messages, with their original
``message_id`` and position.  Best-effort messages (audio) are written at most once and are the
first to go when the byte bound is reached.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator

from twisted.internet.defer import Deferred

__all__ = ["Outgoing", "QueueFull", "SendQueue"]


class QueueFull(Exception):
    """A reliable message does not fit in the queue's byte bound (best-effort ones are dropped)."""


@dataclass(eq=False, slots=True)
class Outgoing:
    """One message waiting to be written (or, when reliable, to be acknowledged)."""

    payload: bytes
    is_binary: bool
    priority: int
    reliable: bool = False
    message_id: str | None = None
    seq: int = 0
    deferred: Deferred[Any] = field(default_factory=Deferred)  # True / False / the ack / a failure
    writes: int = 0  # how many times it went out (a reliable message is re-sent after reconnects)
    dropped: bool = False

    @property
    def size(self) -> int:
        return len(self.payload)


class SendQueue:
    """Priority queue of :class:`Outgoing` plus the reliable messages waiting for their ack."""

    def __init__(self, max_bytes: int = 4 * 1024 * 1024) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.max_bytes = max_bytes
        self._heap: list[tuple[int, int, Outgoing]] = []
        self._live = 0  # items in the heap that are not dropped
        self._seq = itertools.count(1)  # 0 means "not numbered yet"
        self.unacked: dict[str, Outgoing] = {}
        self.bytes = 0  # queued + unacked
        self.dropped = 0  # best-effort messages dropped for the bound

    def __len__(self) -> int:
        return self._live

    def __iter__(self) -> Iterator[Outgoing]:
        """Queued items in send order (not the unacked ones)."""
        return iter(item for _, _, item in sorted(self._heap, key=lambda e: e[:2]) if not item.dropped)

    @property
    def reliable_pending(self) -> int:
        """Reliable messages not acknowledged yet (queued or written)."""
        return len(self.unacked) + sum(1 for _, _, item in self._heap if item.reliable and not item.dropped)

    def next_seq(self) -> int:
        return next(self._seq)

    # in

    def push(self, item: Outgoing) -> bool:
        """
        Queue ``item``.  Returns False when a best-effort item was dropped because it does not fit;
        raises :class:`QueueFull` for a reliable one.  Best-effort items of the largest priority
        number (oldest first) are evicted to make room.
        """
        if item.seq == 0:
            item.seq = self.next_seq()
        if item.reliable and item.message_id is None:
            raise ValueError("a reliable message needs a message_id")
        if not self._make_room(item):
            if item.reliable:
                raise QueueFull(f"{item.size} bytes do not fit: {self.bytes} of {self.max_bytes} in use")
            self.dropped += 1
            item.dropped = True
            return False
        self._add(item)
        return True

    def _add(self, item: Outgoing) -> None:
        heapq.heappush(self._heap, (item.priority, item.seq, item))
        self._live += 1
        self.bytes += item.size

    def _make_room(self, item: Outgoing) -> bool:
        if self.bytes + item.size <= self.max_bytes:
            return True
        if item.size > self.max_bytes:
            return False
        victims = sorted(
            (e for e in self._heap if not e[2].reliable and not e[2].dropped),
            key=lambda e: (-e[0], e[1]),
        )
        freed = 0
        chosen: list[Outgoing] = []
        for prio, _, victim in victims:
            if not item.reliable and prio < item.priority:
                break  # never evict more urgent best-effort audio for less urgent
            chosen.append(victim)
            freed += victim.size
            if self.bytes - freed + item.size <= self.max_bytes:
                break
        if self.bytes - freed + item.size > self.max_bytes:
            return False
        for victim in chosen:
            self._drop(victim)
        return True

    def _drop(self, item: Outgoing, *, for_bound: bool = True) -> None:
        item.dropped = True
        self._live -= 1
        self.bytes -= item.size
        if for_bound:
            self.dropped += 1
        if not item.deferred.called:
            item.deferred.callback(False)

    # out

    def pop(self) -> Outgoing | None:
        """The next item to write, or None.  A reliable one must then be passed to :meth:`written`."""
        while self._heap:
            _, _, item = heapq.heappop(self._heap)
            if item.dropped:
                continue
            self._live -= 1
            self.bytes -= item.size
            return item
        return None

    def peek(self) -> Outgoing | None:
        while self._heap and self._heap[0][2].dropped:
            heapq.heappop(self._heap)
        return self._heap[0][2] if self._heap else None

    def written(self, item: Outgoing) -> None:
        """``item`` went out: a reliable one now waits for its ack; a best-effort one is done."""
        item.writes += 1
        if item.reliable:
            assert item.message_id is not None
            self.unacked[item.message_id] = item
            self.bytes += item.size

    def ack(self, message_id: str) -> Outgoing | None:
        """The server acknowledged ``message_id``: forget it and return it (None if unknown)."""
        item = self.unacked.pop(message_id, None)
        if item is not None:
            self.bytes -= item.size
        return item

    def discard(self, message_id: str) -> Outgoing | None:
        """Forget a reliable message (e.g. the server answered it with an error); None if unknown."""
        item = self.ack(message_id)
        if item is not None:
            return item
        for _, _, queued in self._heap:
            if queued.message_id == message_id and not queued.dropped:
                queued.dropped = True
                self._live -= 1
                self.bytes -= queued.size
                return queued
        return None

    # reconnects

    def requeue_unacked(self) -> int:
        """Put every written, unacknowledged reliable message back in the queue, in its old place."""
        items = list(self.unacked.values())
        self.unacked.clear()
        for item in items:
            self.bytes -= item.size
            self._add(item)
        return len(items)

    def requeue(self, message_id: str) -> Outgoing | None:
        """Put one written, unacknowledged reliable message back in the queue (the server dropped it)."""
        item = self.unacked.pop(message_id, None)
        if item is not None:
            self.bytes -= item.size
            self._add(item)
        return item

    def drop_best_effort(self) -> list[Outgoing]:
        """Drop every queued best-effort message (the connection is gone); returns them."""
        gone = [item for _, _, item in self._heap if not item.reliable and not item.dropped]
        for item in gone:
            self._drop(item, for_bound=False)
        return gone

    def clear(self) -> list[Outgoing]:
        """Remove everything, queued and unacked; returns the items still pending (caller fails them)."""
        items = [item for _, _, item in self._heap if not item.dropped] + list(self.unacked.values())
        self._heap.clear()
        self.unacked.clear()
        self._live = 0
        self.bytes = 0
        return items
