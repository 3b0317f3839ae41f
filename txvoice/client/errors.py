"""
The errors of the txvoice.v1 client (:class:`~txvoice.client.connection.VoiceClient`): what a
Deferred of ``connect``, ``send`` or ``request`` fails with.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RETRYABLE_ERRORS",
    "ClientClosed",
    "ClientError",
    "ConnectionFailed",
    "NotConnected",
    "RequestTimeout",
    "ServerError",
]

#: Errors that mean "dropped, not handled": a reliable message answered with one is sent again later.
RETRYABLE_ERRORS = frozenset({"rate_limited"})


class ClientError(Exception):
    """Base of the client's errors."""


class NotConnected(ClientError):
    """A best-effort message or request could not go out: the connection is not open."""


class ClientClosed(ClientError):
    """The client was closed (by :meth:`VoiceClient.close`) before this completed."""


class RequestTimeout(ClientError):
    """No answer to a request within its timeout."""


class ConnectionFailed(ClientError):
    """The client gave up: ``attempts`` attempts failed in a row (last ``reason``)."""

    def __init__(self, reason: str, attempts: int = 0) -> None:
        super().__init__(f"connection failed after {attempts} attempt(s): {reason}")
        self.reason = reason
        self.attempts = attempts


class ServerError(ClientError):
    """The server answered a message with ``error``; ``code`` and ``data`` are its fields."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.code = str(data.get("code", "unknown"))
        self.data = data
        super().__init__(f"{self.code}: {data.get('message', '')}")
