"""The native dialect in memory: every message type, every error path, deterministic timing."""

from __future__ import annotations

import base64
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from txvoice.protocol.messages import CLIENT_TYPES, SERVER_TYPES
from txvoice.session.session import SessionState
from wsmemory import MemoryClient, memory_server


def connected(**config) -> MemoryClient:
    client = MemoryClient(memory_server(**config))
    greeting = client.messages()
    assert [m["type"] for m in greeting] == ["connect"]
    return client


AUDIO_EVENTS = {"vad", "turn_start", "turn_end"}


def flow(messages: list[dict]) -> list[dict]:
    """Messages without the audio engine's status events (checked in their own tests)."""
    return [m for m in messages if not (m["type"] == "status" and m["data"].get("event_type") in AUDIO_EVENTS)]


def request(client: MemoryClient, msg_type: str, data=None, message_id="m1", **extra) -> list[dict]:
    client.send_json({"type": msg_type, "data": data or {}, "message_id": message_id, **extra})
    return flow(client.messages())


def test_handshake_negotiates_subprotocol_and_greets() -> None:
    client = MemoryClient(memory_server())
    assert "101 Switching Protocols" in client.handshake
    assert "Sec-WebSocket-Protocol: txvoice.v1" in client.handshake
    (greeting,) = client.messages()
    data = greeting["data"]
    assert greeting["type"] == "connect" and data["status"] == "connected"
    assert data["session_id"] == client.session.id
    assert data["config"] == {**data["config"], "sample_rate": 16000, "channels": 1, "sample_width": 2,
                              "max_message_size": 1048576}
    assert client.server.registry.get(client.session.id) is client.session


def test_client_offering_no_subprotocol_gets_v1() -> None:
    client = MemoryClient(memory_server(), subprotocol=None)
    assert "Sec-WebSocket-Protocol" not in client.handshake
    assert client.messages()[0]["data"]["protocol"] == "txvoice.v1"


def test_every_reply_is_a_server_type_in_the_envelope() -> None:
    client = connected()
    replies = []
    for msg_type, data in [
        ("connect", {"client": "t"}), ("ping", {"x": 1}), ("pong", {}), ("auth", {"token": "t", "user_id": "u1"}),
        ("conversation_start", {"conversation_id": "c1"}), ("conversation_state", {}),
        ("voice_start", {"codec": "pcm", "sample_rate": 16000}),
        ("voice_chunk", {"audio": base64.b64encode(b"\x01\x02" * 160).decode()}), ("voice_end", {}),
        ("status", {}), ("metrics", {}), ("conversation_end", {}), ("error", {"code": "x", "message": "y"}),
    ]:
        replies += request(client, msg_type, data, message_id=f"id-{msg_type}")
    for m in replies:
        assert set(m) == {"type", "data", "message_id", "timestamp", "conversation_id"}
        assert m["type"] in SERVER_TYPES
    types = [m["type"] for m in replies]
    assert "error" not in types, replies
    for expected in ["connect", "pong", "auth_success", "conversation_start", "conversation_state", "voice_start",
                     "voice_end", "voice_response", "voice_stream_chunk", "status", "metrics", "conversation_end"]:
        assert expected in types
    by_reply = {m["data"].get("reply_to"): m for m in replies}
    assert by_reply["id-ping"]["data"]["x"] == 1
    assert by_reply["id-auth"]["data"]["user_id"] == "u1"
    assert client.session.user_id == "u1"


def test_echo_turn_with_base64_response() -> None:
    client = connected()
    request(client, "voice_start", {"codec": "pcm", "sample_rate": 16000, "response_audio": "base64"})
    chunks = [bytes([i]) * 640 for i in range(5)]
    for c in chunks:
        client.send_binary(c)
    assert client.session.state is SessionState.STREAMING
    out = request(client, "voice_end", {}, message_id="end")
    types = [m["type"] for m in out]
    assert types == ["voice_end", "voice_response"] + ["voice_stream_chunk"] * 6
    assert out[0]["data"]["frames"] == 5 and out[0]["data"]["bytes"] == 3200
    audio = [base64.b64decode(m["data"]["audio"]) for m in out[2:-1]]
    assert audio == chunks
    assert [m["data"]["sequence"] for m in out[2:]] == [1, 2, 3, 4, 5, 6]
    assert out[-1]["data"]["final"] is True
    assert client.session.state is SessionState.AUTHENTICATED


def test_conversation_id_is_carried_in_the_envelope() -> None:
    client = connected()
    (started,) = request(client, "conversation_start", {"conversation_id": "conv-9"})
    assert started["data"]["conversation_id"] == "conv-9"
    (pong,) = request(client, "ping")
    assert pong["conversation_id"] == "conv-9"
    (ended,) = request(client, "conversation_end", {"conversation_id": "conv-9"})
    assert ended["data"]["state"] == "ended"
    (state,) = request(client, "conversation_state")
    assert state["data"]["state"] == "none"


def error_code(messages: list[dict]) -> str:
    (m,) = messages
    assert m["type"] == "error", m
    return m["data"]["code"]


def test_error_paths_answer_with_codes_and_message_id() -> None:
    client = connected(max_message_size=4096)
    cases = [
        ("not json", "invalid_json"),
        (json.dumps({"type": "frobnicate", "message_id": "q"}), "unknown_type"),
        (json.dumps({"type": "auth", "message_id": "q"}), "missing_field"),
        (json.dumps({"type": "voice_start", "message_id": "q", "data": {"codec": "mp3"}}), "unsupported_codec"),
        (json.dumps({"type": "voice_start", "message_id": "q", "data": {"codec": "opus", "sample_rate": 44100}}),
         "unsupported_sample_rate"),
        (json.dumps({"type": "voice_start", "message_id": "q", "data": {"channels": 3}}), "unsupported_channels"),
        (json.dumps({"type": "voice_start", "message_id": "q", "data": {"response_audio": "smoke"}}), "invalid_field"),
        (json.dumps({"type": "voice_end", "message_id": "q"}), "no_active_stream"),
        (json.dumps({"type": "voice_chunk", "message_id": "q", "data": {"audio": "AAAA"}}), "no_active_stream"),
        (json.dumps({"type": "conversation_end", "message_id": "q"}), "no_active_conversation"),
    ]
    for payload, code in cases:
        client.send_text(payload)
        out = client.messages()
        assert error_code(out) == code, payload
        if code != "invalid_json":
            assert out[0]["data"]["message_id"] == "q"
    client.send_binary(b"\x00" * 10)
    assert error_code(flow(client.messages())) == "no_active_stream"
    request(client, "voice_start", {})
    assert error_code(request(client, "voice_start", {})) == "stream_already_active"
    assert error_code(request(client, "voice_chunk", {"audio": "!!not base64!!"})) == "invalid_audio"
    assert error_code(request(client, "voice_end", {"stream_id": "other"})) == "unknown_stream"
    client.send_binary(b"\x00" * 5000)
    assert error_code(flow(client.messages())) == "message_too_large"
    # ... and the stream still works afterwards.
    client.send_binary(b"\x07" * 640)
    out = request(client, "voice_end", {})
    assert [m["type"] for m in out][:2] == ["voice_end", "voice_response"]
    assert out[0]["data"]["frames"] == 1
    assert client.session.counters.errors == len(cases) + 5
    assert client.protocol.state == client.protocol.STATE_OPEN


def test_oversized_text_is_refused_but_connection_survives() -> None:
    client = connected(max_message_size=1000)
    client.send_text(json.dumps({"type": "ping", "data": {"pad": "x" * 2000}}))
    assert error_code(client.messages()) == "message_too_large"
    assert [m["type"] for m in request(client, "ping")] == ["pong"]


def test_hard_limit_fails_with_1009() -> None:
    client = connected(max_message_size=1000, max_message_hard_limit=2000)
    client.send_binary(b"\x00" * 3000)
    client.frames()
    assert client.closes and client.closes[0][0] == 1009


def test_disconnect_closes_normally() -> None:
    client = connected()
    client.frames()
    request(client, "disconnect", {"reason": "bye"})
    assert client.closes == [(1000, "client disconnect")]


def test_one_bad_session_does_not_disturb_another() -> None:
    server = memory_server()
    a, b = MemoryClient(server, port=1), MemoryClient(server, port=2)
    a.messages(), b.messages()
    request(b, "voice_start", {})
    b.send_binary(b"\x01" * 320)
    for junk in [b"{", b"[]", b'{"type":null}']:
        a.send_text(junk)
    assert [m["type"] for m in flow(a.messages())] == ["error"] * 3
    a.send_text(b"\xff")  # invalid UTF-8 in a text frame: RFC 6455 fails that connection (1007) ...
    a.frames()
    assert a.closes and a.closes[0][0] == 1007
    out = request(b, "voice_end", {})  # ... and only that one
    assert [m["type"] for m in out][:2] == ["voice_end", "voice_response"]
    assert b.protocol.state == b.protocol.STATE_OPEN


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.binary(max_size=300).map(lambda b: ("binary", b)),
    st.text(max_size=300).map(lambda t: ("text", t)),
    st.fixed_dictionaries({"type": st.sampled_from(sorted(CLIENT_TYPES))},
                          optional={"data": st.dictionaries(st.sampled_from(
                              ["codec", "sample_rate", "audio", "token", "stream_id", "channels", "conversation_id",
                               "response_audio", "frame_duration_ms"]),
                              st.none() | st.integers() | st.text(max_size=10) | st.booleans(), max_size=4),
                              "message_id": st.text(max_size=5)}).map(lambda d: ("text", json.dumps(d))),
), max_size=12))
def test_random_traffic_never_breaks_the_session(traffic) -> None:
    client = connected()
    for kind, payload in traffic:
        if kind == "binary":
            client.send_binary(payload)
        else:
            client.send_text(payload)
        for m in flow(client.messages()):
            assert m["type"] in SERVER_TYPES
            if m["type"] == "error":
                assert m["data"]["code"] != "internal_error", m
    if client.closes:  # only a client 'disconnect' may close it
        assert client.closes == [(1000, "client disconnect")]
        return
    assert [m["type"] for m in request(client, "ping", message_id="last")] == ["pong"]
