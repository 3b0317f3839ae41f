"""
How many turns the server processes at once, and how many may wait for a turn to finish.

Recognizing, answering and speaking a turn costs CPU (decoders, synthesis processes); a burst of
turns must not run all at once and starve the audio of every session.  A :class:`TurnLimiter` lets
``max_active`` turns run (S4 ``MAX_CONCURRENT_PROCESSING``), queues up to ``max_queued`` more in
arrival order, and refuses the rest with :class:`ServerBusy` at once, so a client hears "busy" now
rather than an answer too late to matter.  Reactor thread only.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredSemaphore

from txvoice.errors import VoiceError


class ServerBusy(VoiceError):
    """Every processing slot is taken and the queue is full: the turn is dropped."""

    code = "server_busy"


class TurnLimiter:
    """A counting semaphore over turns in processing, with a bounded, cancellable wait queue."""

    def __init__(self, max_active: int, max_queued: int) -> None:
        if max_active < 1:
            raise ValueError("max_active must be at least 1")
        if max_queued < 0:
            raise ValueError("max_queued must not be negative")
        self.max_active = max_active
        self.max_queued = max_queued
        self._slots = DeferredSemaphore(max_active)
        self.refused = 0

    @property
    def active(self) -> int:
        """Turns holding a slot."""
        return self.max_active - self._slots.tokens

    @property
    def queued(self) -> int:
        """Turns waiting for a slot."""
        return len(self._slots.waiting)

    def acquire(self) -> Deferred[DeferredSemaphore]:
        """
        A Deferred that fires when the caller holds a slot (with the semaphore under it; nothing
        uses the value): at once when one is free, else in turn.  Cancelling a waiting Deferred
        leaves the queue.  Raise :class:`ServerBusy` when the queue is full.  Call :meth:`release`
        once per slot obtained.
        """
        if self._slots.tokens == 0 and len(self._slots.waiting) >= self.max_queued:
            self.refused += 1
            raise ServerBusy(
                f"the server is processing {self.active} turns and {self.queued} are waiting; try again later",
                active=self.active, queued=self.queued,
            )
        return self._slots.acquire()

    def release(self) -> None:
        """Give a slot back; the longest-waiting turn gets it."""
        self._slots.release()

    def stats(self) -> dict[str, int]:
        return {"active": self.active, "queued": self.queued, "max_active": self.max_active,
                "max_queued": self.max_queued, "refused": self.refused}
