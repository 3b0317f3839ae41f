"""The native protocol over a real socket: the txvoice daemon and the independent `websockets` client."""

from __future__ import annotations

import base64
import json
import threading
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect



def open_ws(daemon, path: str = "/", subprotocols=("txvoice.v1",), **kw):
    return connect(f"ws://127.0.0.1:{daemon.port}{path}", subprotocols=list(subprotocols) or None,
                   open_timeout=5, close_timeout=5, max_size=None, **kw)


AUDIO_EVENTS = {"vad", "turn_start", "turn_end"}


def recv_json(ws, timeout: float = 5.0, audio_events: bool = False) -> dict:
    """The next JSON message (the audio engine's status events skipped unless asked for)."""
    while True:
        msg = ws.recv(timeout=timeout)
        assert isinstance(msg, str), f"expected a text message, got {len(msg)} bytes"
        obj = json.loads(msg)
        if audio_events or not (obj["type"] == "status" and obj["data"].get("event_type") in AUDIO_EVENTS):
            return obj


def call(ws, msg_type: str, data=None, message_id: str = "m") -> dict:
    ws.send(json.dumps({"type": msg_type, "data": data or {}, "message_id": message_id}))
    return recv_json(ws)


def test_health(daemon) -> None:
    with urllib.request.urlopen(daemon.http + "/health", timeout=5) as r:
        body = json.load(r)
    assert r.status == 200 and body["status"] == "healthy"
    assert isinstance(body["active_sessions"], int)


def test_greeting_and_subprotocol(daemon) -> None:
    with open_ws(daemon) as ws:
        assert ws.subprotocol == "txvoice.v1"
        greeting = recv_json(ws)
        assert greeting["type"] == "connect"
        data = greeting["data"]
        assert data["status"] == "connected" and data["session_id"].startswith("sess_")
        assert {"sample_rate", "channels", "sample_width", "max_message_size"} <= set(data["config"])


def test_no_subprotocol_offered_still_speaks_v1(daemon) -> None:
    with open_ws(daemon, subprotocols=()) as ws:
        assert ws.subprotocol is None
        assert recv_json(ws)["data"]["protocol"] == "txvoice.v1"
        assert call(ws, "ping", message_id="p")["type"] == "pong"


def test_each_message_type_round_trip(daemon) -> None:
    with open_ws(daemon) as ws:
        recv_json(ws)
        assert call(ws, "connect", {"client": "pytest"})["type"] == "connect"
        pong = call(ws, "ping", {"payload": "abc"}, "p1")
        assert pong["type"] == "pong" and pong["data"]["payload"] == "abc" and pong["data"]["reply_to"] == "p1"
        assert call(ws, "auth", {"token": "t", "user_id": "alice"})["type"] == "auth_success"
        started = call(ws, "conversation_start", {"conversation_id": "c-1"})
        assert started["type"] == "conversation_start" and started["conversation_id"] == "c-1"
        assert call(ws, "conversation_state")["data"]["state"] == "active"
        status = call(ws, "status")
        assert status["type"] == "status" and status["data"]["session"]["user_id"] == "alice"
        metrics = call(ws, "metrics")
        assert metrics["type"] == "metrics" and metrics["data"]["session"]["messages_in"] >= 6
        assert call(ws, "conversation_end")["data"]["state"] == "ended"
        ws.send(json.dumps({"type": "pong"}))
        ws.send(json.dumps({"type": "error", "data": {"code": "client_side", "message": "just saying"}}))
        assert call(ws, "ping", message_id="after")["data"]["reply_to"] == "after"
        assert call(ws, "disconnect")["type"] == "disconnect"
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd.code == 1000


def test_binary_echo_round_trip(daemon) -> None:
    frames = [bytes([i % 256]) * 640 for i in range(50)]
    with open_ws(daemon) as ws:
        recv_json(ws)
        ack = call(ws, "voice_start", {"codec": "pcm_s16le", "sample_rate": 16000, "frame_duration_ms": 20})
        assert ack["type"] == "voice_start"
        for f in frames:
            ws.send(f)
        end = call(ws, "voice_end", {}, "end")
        assert end["type"] == "voice_end" and end["data"]["frames"] == 50
        response = recv_json(ws)
        assert response["type"] == "voice_response" and response["data"]["audio"]["codec"] == "pcm_s16le"
        got = []
        while len(got) < len(frames):
            m = ws.recv(timeout=5)
            if isinstance(m, bytes):
                got.append(m)
        assert got == frames
        final = recv_json(ws)
        assert final["type"] == "voice_stream_chunk" and final["data"]["final"] is True


def test_json_chunks_and_base64_response(daemon) -> None:
    with open_ws(daemon) as ws:
        recv_json(ws)
        call(ws, "voice_start", {"codec": "mulaw", "sample_rate": 8000, "response_audio": "base64"})
        sent = [bytes([i]) * 160 for i in range(4)]
        for i, chunk in enumerate(sent):
            ws.send(json.dumps({"type": "voice_chunk", "data": {"audio": base64.b64encode(chunk).decode(), "sequence": i}}))
        call(ws, "voice_end")
        assert recv_json(ws)["type"] == "voice_response"
        chunks = [recv_json(ws) for _ in range(5)]
        assert [base64.b64decode(c["data"]["audio"]) for c in chunks[:4]] == sent
        assert chunks[4]["data"]["final"] is True


@pytest.mark.parametrize(
    "payload, code",
    [
        ("{broken", "invalid_json"),
        (json.dumps({"type": "teleport", "message_id": "x"}), "unknown_type"),
        (json.dumps({"type": "auth", "message_id": "x"}), "missing_field"),
        (json.dumps({"type": "voice_start", "data": {"sample_rate": "fast"}, "message_id": "x"}), "invalid_field"),
        (json.dumps({"type": "voice_start", "data": {"codec": "flac"}, "message_id": "x"}), "unsupported_codec"),
        (json.dumps({"type": "voice_end", "message_id": "x"}), "no_active_stream"),
        (b"\x00\x01", "no_active_stream"),
        (b"\x00" * (1048576 + 1), "message_too_large"),
        ("x" * (1048576 + 10), "message_too_large"),
    ],
)
def test_bad_input_gets_a_coded_error_and_the_session_survives(daemon, payload, code) -> None:
    with open_ws(daemon) as ws:
        recv_json(ws)
        ws.send(payload)
        err = recv_json(ws)
        assert err["type"] == "error" and err["data"]["code"] == code
        assert err["data"]["message"]
        if isinstance(payload, str) and '"message_id": "x"' in payload:
            assert err["data"]["message_id"] == "x"
        assert call(ws, "ping", message_id="still-here")["data"]["reply_to"] == "still-here"


def test_sessions_are_independent_under_abuse(daemon) -> None:
    """A client spraying garbage does not disturb a concurrent streaming session."""
    errors: list[BaseException] = []

    def abuser() -> None:
        try:
            with open_ws(daemon) as ws:
                recv_json(ws)
                for i in range(200):
                    ws.send("{" if i % 2 else b"\xde\xad")
                    assert recv_json(ws)["type"] == "error"
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=abuser)
    t.start()
    with open_ws(daemon) as ws:
        recv_json(ws)
        call(ws, "voice_start", {})
        frames = [bytes([i]) * 320 for i in range(100)]
        for f in frames:
            ws.send(f)
        call(ws, "voice_end")
        recv_json(ws)
        got = []
        while len(got) < len(frames):
            m = ws.recv(timeout=5)
            if isinstance(m, bytes):
                got.append(m)
        assert got == frames
    t.join(30)
    assert not errors, errors
