"""
Errors that carry a stable, machine-readable code.

Anything a client can cause raises a :class:`VoiceError` subclass; the protocol layer turns it
into an ``error`` message with ``code`` and ``message`` and the session goes on.  The codes are
part of the public protocol (``doc/protocol.md``), so never rename one.
"""

from __future__ import annotations

from typing import Any


class VoiceError(Exception):
    """A client-caused error with a stable ``code``."""

    code: str = "internal_error"

    def __init__(self, message: str, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ProtocolError(VoiceError):
    """The message itself is malformed (bad JSON, envelope, field)."""

    code = "invalid_message"


class AudioError(VoiceError):
    """Audio a client sent cannot be decoded or does not match its declared format."""

    code = "invalid_audio"


class UnsupportedFormat(AudioError):
    """A codec, sample rate or channel count the server does not support."""

    code = "unsupported_format"


class StateError(VoiceError):
    """A message that is valid in itself but not in the session's current state."""

    code = "invalid_state"
