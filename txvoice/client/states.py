"""
What a txvoice.v1 client (:class:`~txvoice.client.connection.VoiceClient`) is and has done: its
connection states, the send priorities it accepts, and its life-long counters.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "PRIORITY_AUDIO",
    "PRIORITY_HIGH",
    "PRIORITY_INTERNAL",
    "PRIORITY_LOW",
    "PRIORITY_NORMAL",
    "ClientStats",
    "ConnectionState",
]

#: Send priorities: lower numbers go first.
PRIORITY_INTERNAL = 0  # the client's own re-attach messages go before anything queued
PRIORITY_HIGH = 1
PRIORITY_AUDIO = 2
PRIORITY_NORMAL = 5
PRIORITY_LOW = 9


class ConnectionState(str, enum.Enum):
    CLOSED = "closed"
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    FAILED = "failed"


@dataclass
class ClientStats:
    """Counters of one client over its whole life (all connections)."""

    attempts: int = 0  # connection attempts made
    failed_attempts: int = 0  # attempts that did not reach ``open``
    opens: int = 0  # times the connection became open
    drops: int = 0  # open connections lost
    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    acks: int = 0
    duplicate_acks: int = 0
    resent: int = 0  # reliable messages written again after a reconnect
    dropped_disconnected: int = 0  # best-effort messages dropped because the connection was not open
    heartbeats: int = 0
    heartbeat_timeouts: int = 0
    resumes: int = 0
    resume_failures: int = 0
    rate_limited: int = 0  # reliable messages the server dropped for its rate limit (sent again)
    last_heartbeat_rtt: float | None = None
