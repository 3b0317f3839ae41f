"""
The offline message queue (S4) on Redis: bounded lists with a TTL, one per address.

``offline:<address>`` holds JSON ``{n: bytes, b: is_binary, t: queued_at, p: base64 payload}``;
``put`` is one script (``RPUSH``, then ``LPOP`` the oldest over ``max_messages`` or
``max_bytes``, ``PEXPIRE`` both keys to ``max_age``), ``take`` and ``discard`` one script each
(read and ``DEL`` together, so a message is handed over once).  Messages older than ``max_age`` are
dropped at ``take`` (counted ``expired``).  Drops are counted by reason, as the in-process store.

The commands for one address are sent one after the other (each once the previous answered,
:meth:`RedisConnection.ordered <txvoice.scaleout.connection.RedisConnection.ordered>`): txredisapi
sends each command on a connection of its pool picked at random, so two ``put`` in a row could
otherwise be applied out of order (seen: a reply's audio queued after its end).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Callable, TypeVar

from twisted.internet import defer
from zope.interface import implementer

from txvoice.scaleout.connection import RedisConnection
from txvoice.session.offline import (DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, DEFAULT_MAX_MESSAGES, DROP_REASONS,
                                     IOfflineStore, QueuedMessage)

#: KEYS list, byte counter; ARGV message, its size, max messages, max bytes, ttl ms -> {dropped count, dropped bytes, length}
_PUT = """
redis.call('RPUSH', KEYS[1], ARGV[1])
local total = redis.call('INCRBY', KEYS[2], ARGV[2])
local by_count, by_bytes = 0, 0
while redis.call('LLEN', KEYS[1]) > tonumber(ARGV[3]) do
  local old = redis.call('LPOP', KEYS[1])
  total = redis.call('DECRBY', KEYS[2], cjson.decode(old).n)
  by_count = by_count + 1
end
while total > tonumber(ARGV[4]) do
  local old = redis.call('LPOP', KEYS[1])
  if not old then break end
  total = redis.call('DECRBY', KEYS[2], cjson.decode(old).n)
  by_bytes = by_bytes + 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {by_count, by_bytes, redis.call('LLEN', KEYS[1])}
"""

T = TypeVar("T")

_TAKE = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1], KEYS[2])
return items
"""

_DISCARD = """
local n = redis.call('LLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return n
"""


@implementer(IOfflineStore)
class RedisOfflineStore:
    def __init__(
        self,
        redis: RedisConnection,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age: float = DEFAULT_MAX_AGE,
        on_drop: Callable[[str, int], None] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        if max_messages < 1 or max_bytes < 1 or max_age <= 0:
            raise ValueError("offline queue bounds must be positive")
        self.redis = redis
        self.max_messages, self.max_bytes, self.max_age = max_messages, max_bytes, max_age
        self.on_drop = on_drop
        self.now = now
        self.dropped = {reason: 0 for reason in DROP_REASONS}
        self._pending: dict[str, int] = {}  # what this node last saw per address (approximate)

    def _serial(self, address: str, run: Callable[[], defer.Deferred[T]]) -> defer.Deferred[T]:
        """``run()`` once every earlier command for ``address`` has been answered (in order)."""
        return self.redis.ordered(self.redis.key("offline", address), run)

    def _keys(self, address: str) -> list[str]:
        return [self.redis.key("offline", address), self.redis.key("offline-bytes", address)]

    def _drop(self, reason: str, count: int) -> None:
        if count:
            self.dropped[reason] += count
            if self.on_drop is not None:
                self.on_drop(reason, count)

    def put(self, address: str, payload: bytes, is_binary: bool) -> defer.Deferred[None]:
        if len(payload) > self.max_bytes:
            self._drop("bytes", 1)
            return defer.succeed(None)
        item = json.dumps({"n": len(payload), "b": is_binary, "t": self.now(),
                           "p": base64.b64encode(payload).decode("ascii")}, separators=(",", ":"))
        d = self._serial(address, lambda: self.redis.eval(
            _PUT, self._keys(address), [item, len(payload), self.max_messages, self.max_bytes, int(self.max_age * 1000)]))

        def stored(result: list[int]) -> None:
            by_count, by_bytes, length = (int(x) for x in result)
            self._drop("count", by_count)
            self._drop("bytes", by_bytes)
            self._pending[address] = length

        return d.addCallback(stored)

    def take(self, address: str) -> defer.Deferred[list[QueuedMessage]]:
        d = self._serial(address, lambda: self.redis.eval(_TAKE, self._keys(address), []))

        def taken(items: Any) -> list[QueuedMessage]:
            self._pending.pop(address, None)
            now, live = self.now(), []
            for raw in items or []:
                doc = json.loads(raw)
                if now - doc["t"] >= self.max_age:
                    self._drop("expired", 1)
                    continue
                live.append(QueuedMessage(base64.b64decode(doc["p"]), bool(doc["b"]), float(doc["t"])))
            return live

        return d.addCallback(taken)

    def discard(self, address: str) -> defer.Deferred[int]:
        self._pending.pop(address, None)
        return self._serial(address, lambda: self.redis.eval(_DISCARD, self._keys(address), [])).addCallback(int)

    def pending(self, address: str) -> int:
        return self._pending.get(address, 0)

    def sweep(self) -> None:
        """Redis expires whole queues by their TTL; single messages are checked at ``take``."""
