"""
Commands for one key applied in the order they were sent.

txredisapi sends each command on a connection of its pool picked at random, and Redis applies
what arrives on different connections in whatever order it reads them: a session that opens and
closes at once could have its ``DEL`` applied before the write of its registry entry (a ghost
entry until its TTL), two ``put`` of the offline queue swapped (a reply's audio after its end).

:class:`KeyOrder` sends a command that names a key once every earlier command naming that key has
been answered (whether it succeeded or failed).  A command may name several keys (a refresh
round's batch): it waits for all of them, and the later commands of each wait for it.  Each unit
registers itself as the tail of its keys when it is submitted and only ever waits for units
submitted earlier, so the waits cannot form a cycle.  Keys with nothing in flight hold nothing.

Only commands that write a key a node may write again soon (registry, resume, offline queue, call
records) go through it; a command for a key nothing else is in flight for goes out at once (no
extra round trip).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

T = TypeVar("T")


class KeyOrder:
    """Run units of Redis commands one after another per key (see the module docstring)."""

    def __init__(self) -> None:
        #: key -> fires (with None) once the last unit submitted for the key has been answered.
        self._tails: dict[str, defer.Deferred[None]] = {}
        #: Tails answered, to fire: from a loop, not recursively (a chain of units that fail at once,
        #: Redis gone, would otherwise nest a few frames per unit, past the recursion limit).
        self._ready: deque[defer.Deferred[None]] = deque()
        self._releasing = False

    def __len__(self) -> int:
        """Keys with a unit in flight or waiting (0 when idle: nothing is kept per key)."""
        return len(self._tails)

    def run(self, keys: str | Iterable[str], send: Callable[[], defer.Deferred[T]]) -> defer.Deferred[T]:
        """``send()`` once every unit submitted earlier for any of ``keys`` has been answered."""
        names = [keys] if isinstance(keys, str) else list(dict.fromkeys(keys))
        previous = [self._tails[k] for k in names if k in self._tails]
        tail: defer.Deferred[None] = defer.Deferred()
        for k in names:
            self._tails[k] = tail
        result: defer.Deferred[T] = defer.Deferred()

        def settled(outcome: Any) -> None:
            for k in names:
                if self._tails.get(k) is tail:
                    del self._tails[k]
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)
            self._release(tail)

        def go(_: object = None) -> None:
            defer.maybeDeferred(send).addBoth(settled)

        if not previous:
            go()
        elif len(previous) == 1:
            previous[0].addCallback(go)
        else:
            defer.gatherResults(previous).addCallback(go)
        return result

    def _release(self, tail: defer.Deferred[None]) -> None:
        self._ready.append(tail)
        if self._releasing:
            return
        self._releasing = True
        try:
            while self._ready:
                self._ready.popleft().callback(None)
        finally:
            self._releasing = False
