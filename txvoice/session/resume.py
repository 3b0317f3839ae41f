"""
Session resumption: what a session leaves behind when its connection drops, so a reconnecting
client can pick it up with the ``resume_token`` it was given in the greeting.

Kept in this process now; a Redis store implements :class:`IResumeStore` for scale-out (and then
survives a restart of the process, which this one does not).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from zope.interface import Interface, implementer

from txvoice.session.session import Session

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class AckedIds:
    """The last ``limit`` reliable message ids a session acknowledged (for de-duplication)."""

    __slots__ = ("_ids", "limit")

    def __init__(self, limit: int = 1024) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self.limit = limit

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._ids

    def add(self, message_id: str) -> None:
        self._ids[message_id] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


@dataclass
class ResumeState:
    """What a reconnecting client gets back."""

    token: str
    session_id: str
    user_id: str | None = None
    tenant: str | None = None
    conversation_id: str | None = None
    acked: AckedIds = field(default_factory=AckedIds)
    expires_at: float = 0.0
    #: The reliable-message log this session writes to: its first session's id, kept across resumes.
    log_id: str | None = None


def new_resume_token() -> str:
    return secrets.token_urlsafe(24)


class IResumeStore(Interface):
    def keep(state: ResumeState, ttl: float) -> None:
        """Keep ``state`` for ``ttl`` seconds."""

    def take(token: str) -> "ResumeState | None | Deferred[ResumeState | None]":
        """
        Remove and return the state for ``token``; None when unknown or expired.  A networked
        store answers a Deferred (callers use ``maybeDeferred``).
        """

    def opened(session: Session, log_id: str) -> None:
        """
        A session that can be resumed started (or was resumed): a store that outlives this process
        keeps its state from now on, so that it can be resumed even if this process is killed.
        """

    def closed(session: Session) -> None:
        """The session ended for good here (after ``keep`` if it may be resumed)."""


class IReliableLog(Interface):
    """
    The reliable messages a session (and the sessions that resumed it) handled, shared by the
    nodes: a message is recorded *before* it is applied, so no node applies it twice.
    """

    def record(log_id: str, message_id: str) -> "Deferred[bool]":
        """Record ``message_id``: True when it is new (apply it), False when already handled."""

    def forget(log_id: str, message_id: str) -> "Deferred[None]":
        """Undo ``record`` (handling it failed: a re-send must be handled)."""


@implementer(IResumeStore)
class LocalResumeStore:
    """Resume states in a dict, expiring by the given clock."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._states: dict[str, ResumeState] = {}

    def keep(self, state: ResumeState, ttl: float) -> None:
        now = self._now()
        state.expires_at = now + ttl
        self._states[state.token] = state
        if len(self._states) % 256 == 0:
            self.expire(now)

    def take(self, token: str) -> ResumeState | None:
        state = self._states.pop(token, None)
        if state is None or state.expires_at < self._now():
            return None
        return state

    def opened(self, session: Session, log_id: str) -> None:
        pass  # kept when its connection drops (keep), which this process sees happen

    def closed(self, session: Session) -> None:
        pass

    def expire(self, now: float | None = None) -> int:
        now = self._now() if now is None else now
        dead = [t for t, s in self._states.items() if s.expires_at < now]
        for t in dead:
            del self._states[t]
        return len(dead)

    def __len__(self) -> int:
        return len(self._states)
