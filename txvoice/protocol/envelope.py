"""The v1 JSON envelope: parsing a client's text message and building the server's."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from txvoice.errors import ProtocolError
from txvoice.protocol.messages import CLIENT_TYPES, validate_data

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_dumps_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode

#: Integers a client may send: what a 64-bit signed field holds (JSON peers agree on no more).
MAX_INT = 2**63 - 1


class _NotJSON(ValueError):
    """A number Python's parser accepts but JSON does not have (NaN, Infinity, an overflow)."""


def _refuse_constant(name: str) -> None:
    raise _NotJSON(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # inf or nan
        raise _NotJSON(f"number {text[:32]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    value = int(text)
    if len(text) > 18 and not -MAX_INT - 1 <= value <= MAX_INT:
        raise _NotJSON(f"integer {text[:32]}... is out of range")
    return value


# Python's json accepts NaN, Infinity and -Infinity and turns 1e999 into inf: none of them can be
# written back (allow_nan=False) nor are they JSON, so they are refused where they are read.
_loads = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int).decode


def _lone_surrogate(obj: Any, path: str) -> str | None:
    """The path of the first string (or key) holding an unpaired surrogate, else None."""
    if isinstance(obj, str):
        return None if obj.isascii() or _encodable(obj) else path
    if isinstance(obj, dict):
        for key, value in obj.items():
            where = f"{path}.{key}" if path else key
            if not _encodable(key):
                return path or "key"
            found = _lone_surrogate(value, where)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for value in obj:
            found = _lone_surrogate(value, path)
            if found is not None:
                return found
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        # Strict UTF-8 (json.loads would let encoded surrogates through with 'surrogatepass').
        text = payload.decode("utf-8") if not isinstance(payload, str) else payload
        obj = _loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ProtocolError(f"message is not valid JSON: {_safe(e)}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message must be a JSON object", code="invalid_message")
    if "\\u" in text or (isinstance(payload, str) and not _encodable(text)):
        # Only a \uD8xx escape (or a str payload) can carry an unpaired surrogate, which no reply
        # and no log line could write: refuse it before any handler sees it.
        where = _lone_surrogate(obj, "")
        if where is not None:
            mid = obj.get("message_id")
            raise ProtocolError(
                f"{where[:64]} holds an unpaired UTF-16 surrogate",
                code="invalid_field",
                field=where[:64] if _encodable(where) else "data",
                message_id=mid if isinstance(mid, str) and _encodable(mid) else None,
            )
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


def _safe(error: BaseException) -> str:
    """An exception's text, writable whatever it quotes."""
    return str(error).encode("utf-8", "backslashreplace").decode("utf-8")[:200]


def encoded_size(value: Any) -> int:
    """Bytes ``value`` takes in a server message (how big an echo of it would be)."""
    return len(_dumps(value).encode("utf-8"))


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
    """Build one server message as UTF-8 JSON bytes (always valid UTF-8: see below)."""
    obj = {
        "type": msg_type,
        "data": data if data is not None else {},
        "message_id": message_id or new_message_id(),
        "timestamp": time.time() if timestamp is None else timestamp,
        "conversation_id": conversation_id,
    }
    text = _dumps(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from somewhere other than a client message (the envelope refuses
        # those): \u-escaped it is still valid JSON and valid UTF-8.
        return _dumps_ascii(obj).encode("ascii")
