"""
Message types of protocol v1 and the schema of each one's ``data``.

A schema maps a field name to ``(accepted types, required)``.  Validation is deliberately small
and explicit: it runs on every control message, and its error codes are public.
"""

from __future__ import annotations

from typing import Any

from txvoice.errors import ProtocolError

SUBPROTOCOL = "txvoice.v1"

_NUM = (int, float)
_STR = (str,)
_OPT_STR = (str, type(None))
_DICT = (dict,)
_BOOL = (bool,)
_INT = (int,)
_LIST = (list,)

Schema = dict[str, tuple[tuple[type, ...], bool]]

#: What a client may send, with the schema of its ``data``.
CLIENT_TYPES: dict[str, Schema] = {
    "connect": {"client": (_STR, False), "user_id": (_STR, False), "resume_token": (_STR, False)},
    "disconnect": {"reason": (_STR, False)},
    "ping": {},
    "pong": {},
    "heartbeat": {},
    "auth": {"token": (_STR, True), "user_id": (_STR, False)},
    "voice_start": {
        "stream_id": (_STR, False),
        "codec": (_STR, False),
        "format": (_STR, False),
        "sample_rate": (_INT, False),
        "channels": (_INT, False),
        "frame_duration_ms": (_NUM, False),
        "mode": (_STR, False),
        "response_audio": (_STR, False),
        "options": (_DICT, False),
    },
    "voice_chunk": {"stream_id": (_STR, False), "audio": (_STR, True), "sequence": (_INT, False)},
    "voice_end": {"stream_id": (_STR, False)},
    "playback": {"response_id": (_STR, False), "position_ms": (_NUM, True)},
    "conversation_start": {"conversation_id": (_STR, False), "metadata": (_DICT, False)},
    "conversation_end": {"conversation_id": (_STR, False)},
    "conversation_state": {"conversation_id": (_STR, False)},
    "status": {},
    "metrics": {"subscribe": (_BOOL, False)},
    "error": {"code": (_STR, False), "message": (_STR, False)},
}

#: What the server sends (for documentation and for the tests that check it).
SERVER_TYPES: frozenset[str] = frozenset(
    {
        "connect",
        "disconnect",
        "ping",
        "pong",
        "ack",
        "auth_success",
        "heartbeat",
        "auth_failed",
        "voice_start",
        "voice_end",
        "voice_response",
        "voice_stream_chunk",
        "conversation_start",
        "conversation_end",
        "conversation_state",
        "status",
        "error",
        "metrics",
    }
)

_TYPE_NAMES = {int: "integer", float: "number", str: "string", dict: "object", bool: "boolean", list: "array"}


def _describe(types: tuple[type, ...]) -> str:
    names = sorted({"number" if t in (int, float) and float in types else _TYPE_NAMES.get(t, "null") for t in types})
    return " or ".join(names)


def validate_data(msg_type: str, data: dict[str, Any], message_id: str | None) -> None:
    """Check ``data`` against the schema of ``msg_type``; raise ``missing_field``/``invalid_field``."""
    schema = CLIENT_TYPES[msg_type]
    for name, (types, required) in schema.items():
        if name not in data:
            if required:
                raise ProtocolError(
                    f"{msg_type}: data.{name} is required", code="missing_field", field=name, message_id=message_id
                )
            continue
        value = data[name]
        # bool is an int subclass: refuse True where an integer is wanted.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ProtocolError(
                f"{msg_type}: data.{name} must be {_describe(types)}, not {type(value).__name__}",
                code="invalid_field",
                field=name,
                message_id=message_id,
            )
