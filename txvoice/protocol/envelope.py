"""The v1 JSON envelope: parsing a client's text message and building the server's."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from txvoice.errors import ProtocolError
from txvoice.protocol.messages import CLIENT_TYPES, validate_data

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_loads = json.loads


class Envelope:
    """One parsed client message."""

    __slots__ = ("type", "data", "message_id", "timestamp", "conversation_id", "reliable")

    def __init__(
        self,
        type: str,
        data: dict[str, Any],
        message_id: str | None = None,
        timestamp: float | None = None,
        conversation_id: str | None = None,
        reliable: bool = False,
    ) -> None:
        self.type = type
        self.reliable = reliable
        self.data = data
        self.message_id = message_id
        self.timestamp = timestamp
        self.conversation_id = conversation_id

    def __repr__(self) -> str:
        return f"<Envelope {self.type} id={self.message_id!r}>"


def _message_id_of(obj: dict[str, Any]) -> str | None:
    mid = obj.get("message_id")
    return mid if isinstance(mid, str) else None


def decode_envelope(payload: bytes | str) -> Envelope:
    """
    Parse and validate one text message.

    Raises :class:`ProtocolError` with code ``invalid_json``, ``invalid_message``,
    ``unknown_type``, ``missing_field`` or ``invalid_field``; ``details['message_id']`` carries the
    client's message id whenever it could be read.
    """
    try:
        obj = _loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ProtocolError(f"message is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message must be a JSON object", code="invalid_message")
    message_id = _message_id_of(obj)
    if "message_id" in obj and obj["message_id"] is not None and message_id is None:
        raise ProtocolError("message_id must be a string", code="invalid_field", field="message_id")
    msg_type = obj.get("type")
    if msg_type is None:
        raise ProtocolError("type is required", code="missing_field", field="type", message_id=message_id)
    if not isinstance(msg_type, str):
        raise ProtocolError("type must be a string", code="invalid_field", field="type", message_id=message_id)
    if msg_type not in CLIENT_TYPES:
        raise ProtocolError(
            f"unknown message type {msg_type[:64]!r}", code="unknown_type", field="type", message_id=message_id
        )
    data = obj.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise ProtocolError("data must be an object", code="invalid_field", field="data", message_id=message_id)
    timestamp = obj.get("timestamp")
    if timestamp is not None and (not isinstance(timestamp, (int, float)) or isinstance(timestamp, bool)):
        raise ProtocolError("timestamp must be a number", code="invalid_field", field="timestamp", message_id=message_id)
    conversation_id = obj.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise ProtocolError(
            "conversation_id must be a string or null",
            code="invalid_field",
            field="conversation_id",
            message_id=message_id,
        )
    reliable = obj.get("reliable", False)
    if not isinstance(reliable, bool):
        raise ProtocolError("reliable must be a boolean", code="invalid_field", field="reliable", message_id=message_id)
    if reliable and message_id is None:
        raise ProtocolError(
            "a reliable message needs a message_id", code="missing_field", field="message_id", message_id=None
        )
    validate_data(msg_type, data, message_id)
    return Envelope(msg_type, data, message_id, timestamp, conversation_id, reliable)


def new_message_id() -> str:
    """A fresh server-side message id."""
    return uuid.uuid4().hex


def encode_envelope(
    msg_type: str,
    data: dict[str, Any] | None = None,
    conversation_id: str | None = None,
    message_id: str | None = None,
    timestamp: float | None = None,
) -> bytes:
    """Build one server message as UTF-8 JSON bytes."""
    return _dumps(
        {
            "type": msg_type,
            "data": data if data is not None else {},
            "message_id": message_id or new_message_id(),
            "timestamp": time.time() if timestamp is None else timestamp,
            "conversation_id": conversation_id,
        }
    ).encode("utf-8")
