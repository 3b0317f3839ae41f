"""
The write side of the txvoice.v1 client: message ids and envelopes, the priority send queue
drained onto the open connection as fast as it takes them, the pause after the server says
``rate_limited``, and the server's ``ack`` of reliable messages.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from txvoice.client.protocol import IVoiceLink
from txvoice.client.queue import Outgoing, QueueFull, SendQueue
from txvoice.client.states import ClientStats

__all__ = ["Outbox", "dumps"]

dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class Outbox:
    """
    What one client sends.  ``writable_link()`` is the connection messages may go on now (open
    and greeted), or None; :attr:`queue` keeps the rest (reliable messages until their ack).
    """

    def __init__(
        self,
        clock: IReactorTime,
        stats: ClientStats,
        max_queue_bytes: int,
        writable_link: Callable[[], IVoiceLink | None],
    ) -> None:
        self.clock = clock
        self.stats = stats
        self.queue = SendQueue(max_queue_bytes)
        self.writable_link = writable_link
        self._id_prefix = f"c{secrets.token_hex(3)}"
        self._ids = 0
        self._hold_until = 0.0  # no writes before this time (after rate_limited)
        self._hold_call: IDelayedCall | None = None

    def new_id(self) -> str:
        self._ids += 1
        return f"{self._id_prefix}-{self._ids}"

    def envelope(self, message: dict[str, Any] | str, reliable: bool) -> dict[str, Any]:
        if isinstance(message, str):
            message = json.loads(message)
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ValueError("a message is a JSON object with a string 'type'")
        env = dict(message)
        env.setdefault("data", {})
        if not env.get("message_id"):
            env["message_id"] = self.new_id()
        env.setdefault("timestamp", self.clock.seconds())
        if reliable:
            env["reliable"] = True
        return env

    def send(self, message: dict[str, Any] | str | bytes, priority: int, reliable: bool) -> Deferred[Any]:
        """Queue a message and write what can go now (see :meth:`VoiceClient.send`)."""
        if isinstance(message, (bytes, bytearray, memoryview)):
            if reliable:
                raise ValueError("binary messages cannot be reliable: txvoice.v1 acknowledges JSON messages only")
            item = Outgoing(bytes(message), True, priority)
        else:
            env = self.envelope(message, reliable)
            item = Outgoing(dumps(env).encode("utf-8"), False, priority, reliable, env["message_id"])
        if not reliable and self.writable_link() is None:
            self.stats.dropped_disconnected += 1
            return succeed(False)
        try:
            accepted = self.queue.push(item)
        except QueueFull as e:
            return fail(e)
        if not accepted:
            return succeed(False)
        self.flush()
        return item.deferred

    def write(self, link: IVoiceLink, env: dict[str, Any]) -> None:
        """Write a message straight to ``link`` (link-bound messages that must not be queued)."""
        env.setdefault("timestamp", self.clock.seconds())
        payload = dumps(env).encode("utf-8")
        link.sendText(payload)
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(payload)

    def flush(self) -> None:
        """Write queued messages while the connection takes them (and no hold is on)."""
        link = self.writable_link()
        if link is None or self.clock.seconds() < self._hold_until:
            return
        while self.writable_link() is link and link.writable:
            item = self.queue.pop()
            if item is None:
                break
            if item.is_binary:
                link.sendBinary(item.payload)
            else:
                link.sendText(item.payload)
            self.stats.messages_sent += 1
            self.stats.bytes_sent += item.size
            self.queue.written(item)
            if not item.reliable and not item.deferred.called:
                item.deferred.callback(True)

    def ack(self, data: dict[str, Any]) -> None:
        """The server's ``ack`` of a reliable message: fire its Deferred with ``data``."""
        mid = data.get("message_id")
        if not isinstance(mid, str):
            return
        item = self.queue.ack(mid)
        if item is None:
            return
        self.stats.acks += 1
        if data.get("duplicate"):
            self.stats.duplicate_acks += 1
        if not item.deferred.called:
            item.deferred.callback(data)

    def hold(self, seconds: float) -> None:
        """Write nothing for ``seconds`` (longer if a hold is already on), then flush."""
        self._hold_until = max(self._hold_until, self.clock.seconds() + seconds)
        if self._hold_call is None or not self._hold_call.active():
            self._hold_call = self.clock.callLater(self._hold_until - self.clock.seconds(), self._endHold)

    def _endHold(self) -> None:
        self._hold_call = None
        if self.clock.seconds() < self._hold_until:
            self.hold(0)
        else:
            self.flush()
