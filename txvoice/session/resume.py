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
from typing import Callable

from zope.interface import Interface, implementer


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


def new_resume_token() -> str:
    return secrets.token_urlsafe(24)


class IResumeStore(Interface):
    def keep(state: ResumeState, ttl: float) -> None:
        """Keep ``state`` for ``ttl`` seconds."""

    def take(token: str) -> ResumeState | None:
        """Remove and return the state for ``token``; None when unknown or expired."""


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

    def expire(self, now: float | None = None) -> int:
        now = self._now() if now is None else now
        dead = [t for t, s in self._states.items() if s.expires_at < now]
        for t in dead:
            del self._states[t]
        return len(dead)

    def __len__(self) -> int:
        return len(self._states)
