"""A voice session: who is connected, in what state, and what has passed through it."""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred
from zope.interface import Interface

from txvoice.errors import StateError


class SessionState(enum.Enum):
    """Lifecycle of a session; ``STREAMING`` while a voice stream is open."""

    CONNECTED = "connected"
    AUTHENTICATED = "authenticated"
    STREAMING = "streaming"
    CLOSED = "closed"


_ALLOWED: dict[SessionState, frozenset[SessionState]] = {
    SessionState.CONNECTED: frozenset({SessionState.AUTHENTICATED, SessionState.CLOSED}),
    SessionState.AUTHENTICATED: frozenset({SessionState.STREAMING, SessionState.CLOSED}),
    SessionState.STREAMING: frozenset({SessionState.AUTHENTICATED, SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}


@dataclass(slots=True)
class SessionCounters:
    """
    Traffic through one session.  Plain integers, bumped on the per-message path; Prometheus
    reads them (summed over sessions) only when it is scraped.
    """

    text_in: int = 0
    binary_in: int = 0
    text_bytes_in: int = 0
    binary_bytes_in: int = 0
    text_out: int = 0
    binary_out: int = 0
    text_bytes_out: int = 0
    binary_bytes_out: int = 0
    audio_frames_in: int = 0
    audio_frames_out: int = 0
    errors: int = 0
    turns: int = 0

    @property
    def messages_in(self) -> int:
        return self.text_in + self.binary_in

    @property
    def messages_out(self) -> int:
        return self.text_out + self.binary_out

    @property
    def bytes_in(self) -> int:
        return self.text_bytes_in + self.binary_bytes_in

    @property
    def bytes_out(self) -> int:
        return self.text_bytes_out + self.binary_bytes_out

    def add(self, other: "SessionCounters") -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
        )
        return fields


def new_session_id() -> str:
    return "sess_" + uuid.uuid4().hex


@dataclass(slots=True)
class HeartbeatState:
    """The WebSocket heartbeat of one connection (``txvoice.service.heartbeat``)."""

    ping_sent: float | None = None  # when the unanswered ping went out
    pong_at: float | None = None  # the last proof of life (a pong, an application heartbeat)
    missed: int = 0  # pings unanswered in a row

    def alive(self, now: float) -> None:
        """The peer answered: nothing is outstanding."""
        self.ping_sent = None
        self.pong_at = now
        self.missed = 0


class ISessionConnection(Interface):
    """What services need of the connection a session lives on, whatever its dialect."""

    def deliverEvent(event_type: str, data: dict[str, Any], conversation_id: str | None) -> None:
        """A broadcast event addressed to the session, in the dialect's own words."""

    def pushMetrics() -> None:
        """Send the session its metrics (it subscribed to them)."""

    def sendPing(payload: bytes) -> None:
        """A WebSocket ping (the heartbeat)."""

    def dropConnection(abort: bool) -> None:
        """Drop the connection now, without a close handshake (a dead peer)."""

    def goingAway(reason: str) -> None:
        """The server is stopping: close with 1001."""

    def whenClosed() -> Deferred[Any]:
        """A Deferred that fires once the connection has closed."""


#: The fields that say who a session is (:meth:`Session.identify`).
_IDENTITY = ("user_id", "tenant", "conversation_id")


@dataclass(slots=True, eq=False)
class Session:
    """
    Everything the server knows about one connection.

    ``close`` is the transport-side hook (set by the protocol) the registry and services use to
    end the session, e.g. ``close(1001, "server shutting down")``.
    """

    peer: str
    dialect: str = "txvoice.v1"
    id: str = field(default_factory=new_session_id)
    user_id: str | None = None
    tenant: str | None = None
    state: SessionState = SessionState.CONNECTED
    conversation_id: str | None = None
    created_at: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.monotonic)
    counters: SessionCounters = field(default_factory=SessionCounters)
    close: Callable[[int, str], None] | None = None
    #: The connection the session lives on (an :class:`ISessionConnection`), once it is open.
    connection: Any = None
    opened_at: float | None = None
    ip: str | None = None
    heartbeat: HeartbeatState = field(default_factory=HeartbeatState)
    metrics_subscribed: bool = False
    resume_token: str | None = None
    #: What a dialect keeps about its session beyond these (S3's transports and site ...).
    attributes: dict[str, Any] = field(default_factory=dict)
    #: Told by :meth:`identify` when who the session is changed: set by the registry holding it
    #: (a registry shared by nodes re-writes its entry then, not at its next refresh).
    on_identity: Callable[["Session"], None] | None = field(default=None, repr=False)

    def identify(self, **fields: str | None) -> None:
        """
        Set ``user_id``, ``tenant`` and/or ``conversation_id`` (only those given) and, when any of
        them changed, tell the registry holding the session (:attr:`on_identity`).  The one way a
        dialect changes who a registered session is, so that no dialect has to remember to report it.
        """
        changed = False
        for name, value in fields.items():
            if name not in _IDENTITY:
                raise TypeError(f"identify() takes {', '.join(_IDENTITY)}, not {name!r}")
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed = True
        if changed and self.on_identity is not None:
            self.on_identity(self)

    def transition(self, new_state: SessionState) -> None:
        """Move to ``new_state`` or raise ``invalid_state``; a no-op when already there."""
        if new_state is self.state:
            return
        if new_state not in _ALLOWED[self.state]:
            raise StateError(f"session is {self.state.value}, cannot become {new_state.value}", code="invalid_state")
        self.state = new_state

    @property
    def is_authenticated(self) -> bool:
        return self.state in (SessionState.AUTHENTICATED, SessionState.STREAMING)

    def touch(self, now: float) -> None:
        self.last_activity = now

    def as_dict(self) -> dict[str, Any]:
        """Public view (``status`` replies, monitoring)."""
        return {
            "session_id": self.id,
            "peer": self.peer,
            "dialect": self.dialect,
            "user_id": self.user_id,
            "tenant": self.tenant,
            "state": self.state.value,
            "conversation_id": self.conversation_id,
            "created_at": self.created_at,
            "counters": self.counters.as_dict(),
            # S3's sessions: which transports reach it (voicews, socketio) and the JWT's siteId.
            **{k: self.attributes[k] for k in ("transports", "site_id") if k in self.attributes},
        }
