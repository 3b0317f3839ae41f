"""
Hostile values at the envelope and in handlers, driven in memory (deterministic): every answer is
a structured, encodable message and the connection stays open.
"""

from __future__ import annotations

import json

import pytest

from twisted.logger import globalLogPublisher

from txvoice.dialects.native import MAX_PING_DATA, NativeVoiceProtocol
from txvoice.service.heartbeat import HeartbeatService
from wsmemory import MemoryClient, memory_server

PING = 0x9


@pytest.fixture
def client() -> MemoryClient:
    c = MemoryClient(memory_server())
    c.messages()  # the greeting
    return c


def only_reply(client: MemoryClient) -> dict:
    frames = client.frames()
    assert [op for op, _ in frames] == [0x1], frames
    payload = frames[0][1]
    payload.decode("utf-8")  # strict: a reply is always valid UTF-8
    return json.loads(payload)


@pytest.mark.parametrize(
    "raw, code",
    [
        (b'{"type":"ping","data":{"x":NaN}}', "invalid_json"),
        (b'{"type":"ping","data":{"x":Infinity}}', "invalid_json"),
        (b'{"type":"ping","data":{"x":-Infinity}}', "invalid_json"),
        (b'{"type":"ping","timestamp":NaN}', "invalid_json"),
        (b'{"type":"ping","data":{"x":1e999}}', "invalid_json"),
        (b'{"type":"playback","data":{"position_ms":1' + b"0" * 400 + b"}}", "invalid_json"),
        (b'{"type":"ping","message_id":"\\ud800"}', "invalid_field"),
        (b'{"type":"ping","conversation_id":"\\udfff"}', "invalid_field"),
        (b'{"type":"voice_start","data":{"stream_id":"\\ud800"}}', "invalid_field"),
        (b'{"type":"ping","data":{"a":[{"b":"x\\ud800"}]}}', "invalid_field"),
        (b'{"type":"ping","data":{"\\ud800":1}}', "invalid_field"),
        (b'{"type":"ping","data":{"x":"' + "x".encode() * (MAX_PING_DATA + 1) + b'"}}', "ping_too_large"),
    ],
)
def test_hostile_values_are_refused_before_any_handler(client: MemoryClient, raw: bytes, code: str) -> None:
    client.send_text(raw)
    reply = only_reply(client)
    assert reply["type"] == "error" and reply["data"]["code"] == code
    # ... and the session goes on.
    client.send_json({"type": "ping", "message_id": "after", "data": {"seq": 1}})
    assert only_reply(client)["data"]["reply_to"] == "after"


def test_a_paired_surrogate_escape_is_a_character(client: MemoryClient) -> None:
    client.send_text(b'{"type":"ping","message_id":"m","data":{"e":"\\ud83d\\ude00"}}')
    reply = only_reply(client)
    assert reply["type"] == "pong" and reply["data"]["e"] == "\U0001F600"


def test_a_handler_error_is_one_internal_error_and_the_connection_stays(
    client: MemoryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)

    def broken(self, payload: bytes) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(NativeVoiceProtocol, "textReceived", broken)
    try:
        client.send_json({"type": "ping", "message_id": "p"})
    finally:
        globalLogPublisher.removeObserver(events.append)
    reply = only_reply(client)
    assert reply["type"] == "error" and reply["data"]["code"] == "internal_error"
    assert any(e.get("log_failure") is not None and "boom" in str(e["log_failure"].value) for e in events)
    assert not client.transport.disconnecting
    monkeypatch.undo()
    client.send_json({"type": "ping", "message_id": "q"})
    assert only_reply(client)["data"]["reply_to"] == "q"


def test_a_peer_that_keeps_sending_but_never_answers_pings_is_dropped() -> None:
    server = memory_server(ping_interval=30, ping_timeout=10, heartbeat_max_missed=2)
    deaf = MemoryClient(server)
    deaf.frames()
    heartbeat = HeartbeatService(server)
    heartbeat.startService()
    pings = 0
    for _ in range(40):  # 100 s, a message every 2.5 s
        server.clock.advance(2.5)
        deaf.send_json({"type": "status", "message_id": "s"})
        pings += sum(1 for op, _ in deaf.frames() if op == PING)
        if deaf.transport.disconnecting or deaf.transport.disconnected:
            break
    assert pings == 2
    assert deaf.transport.disconnecting or deaf.transport.disconnected
    assert server.stats.heartbeat_drops == 1
    heartbeat.stopService()
