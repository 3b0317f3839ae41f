"""Parsing and validation of the v1 envelope."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txvoice.errors import ProtocolError
from txvoice.protocol.envelope import decode_envelope, encode_envelope
from txvoice.protocol.messages import CLIENT_TYPES


def code_of(payload) -> str:
    with pytest.raises(ProtocolError) as info:
        decode_envelope(payload)
    return info.value.code


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "invalid_message"),
        (b'"text"', "invalid_message"),
        (b"{}", "missing_field"),
        (b'{"type": 5}', "invalid_field"),
        (b'{"type": "nope"}', "unknown_type"),
        (b'{"type": "ping", "data": []}', "invalid_field"),
        (b'{"type": "ping", "timestamp": "x"}', "invalid_field"),
        (b'{"type": "ping", "timestamp": true}', "invalid_field"),
        (b'{"type": "ping", "conversation_id": 3}', "invalid_field"),
        (b'{"type": "ping", "message_id": 3}', "invalid_field"),
        (b'{"type": "auth"}', "missing_field"),
        (b'{"type": "auth", "data": {"token": 1}}', "invalid_field"),
        (b'{"type": "voice_start", "data": {"sample_rate": "16000"}}', "invalid_field"),
        (b'{"type": "voice_start", "data": {"sample_rate": true}}', "invalid_field"),
        (b'{"type": "voice_chunk", "data": {}}', "missing_field"),
    ],
)
def test_bad_messages_have_stable_codes(payload: bytes, code: str) -> None:
    assert code_of(payload) == code


def test_message_id_is_kept_on_errors() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_envelope(b'{"type": "auth", "message_id": "m-7"}')
    assert info.value.details["message_id"] == "m-7"
    assert info.value.details["field"] == "token"


def test_full_envelope_parses() -> None:
    env = decode_envelope(
        json.dumps(
            {"type": "voice_start", "data": {"codec": "opus", "sample_rate": 48000}, "message_id": "a",
             "timestamp": 1.5, "conversation_id": "c1"}
        )
    )
    assert (env.type, env.data["codec"], env.message_id, env.timestamp, env.conversation_id) == (
        "voice_start", "opus", "a", 1.5, "c1")


def test_encode_has_every_envelope_field() -> None:
    msg = json.loads(encode_envelope("pong", {"a": 1}, "c"))
    assert set(msg) == {"type", "data", "message_id", "timestamp", "conversation_id"}
    assert msg["data"] == {"a": 1} and msg["conversation_id"] == "c"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"type": st.sampled_from(sorted(CLIENT_TYPES)) | st.text(max_size=8)},
            optional={"data": json_values, "message_id": json_values, "timestamp": json_values,
                      "conversation_id": json_values},
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_any_input_parses_or_raises_protocol_error(payload: bytes) -> None:
    try:
        env = decode_envelope(payload)
    except ProtocolError as e:
        assert e.code in {"invalid_json", "invalid_message", "unknown_type", "missing_field", "invalid_field"}
    else:
        assert env.type in CLIENT_TYPES and isinstance(env.data, dict)
