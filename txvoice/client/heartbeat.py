"""
The txvoice.v1 client's application heartbeat: a ``heartbeat`` message every ``interval``
seconds on the open connection, at most one unanswered; an answer ``timeout`` seconds late means
the connection is dead (the client drops it and reconnects).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall

from txvoice.client.protocol import IVoiceLink

__all__ = ["Heartbeat"]


class Heartbeat:
    """
    Heartbeats of one client, started when its connection opens and stopped when it is lost.

    ``send()`` writes one heartbeat and returns its ``message_id`` and the link it went on (None:
    nothing sent); ``missed(link)`` is called when its answer is late.  The client hands every
    ``heartbeat`` answer to :meth:`answered`, which returns the round trip when it is the one
    awaited.
    """

    def __init__(
        self,
        clock: IReactorTime,
        send: Callable[[], tuple[str, IVoiceLink] | None],
        missed: Callable[[IVoiceLink], None],
    ) -> None:
        self.clock = clock
        self.send = send
        self.missed = missed
        self.timeout = 0.0
        #: (message_id, time sent) of the heartbeat awaiting its answer.
        self.pending: tuple[str, float] | None = None
        self._loop: LoopingCall | None = None
        self._timer: IDelayedCall | None = None

    def start(self, interval: float, timeout: float) -> None:
        """Beat every ``interval`` seconds (0: never), the first one ``interval`` from now."""
        self.timeout = timeout
        if interval > 0:
            self._loop = LoopingCall(self._beat)
            self._loop.clock = self.clock
            self._loop.start(interval, now=False)

    def stop(self) -> None:
        """Stop beating and forget the heartbeat awaiting its answer."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.pending = None
        self._cancelTimer()

    def answered(self, data: dict[str, Any]) -> float | None:
        """The round trip, if ``data`` (of a ``heartbeat`` message) answers the awaited one."""
        pending = self.pending
        if pending is None or data.get("reply_to") != pending[0]:
            return None
        self.pending = None
        self._cancelTimer()
        return self.clock.seconds() - pending[1]

    def _beat(self) -> None:
        if self.pending is not None:
            return
        sent_at = self.clock.seconds()
        sent = self.send()
        if sent is None:
            return
        mid, link = sent
        self.pending = (mid, sent_at)
        self._timer = self.clock.callLater(self.timeout, self._late, link)

    def _late(self, link: IVoiceLink) -> None:
        self._timer = None
        self.missed(link)

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
