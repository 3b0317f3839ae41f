"""The Vocal dialect (S2) at /ws/audio over a real socket."""

from __future__ import annotations

import json

import pytest
from websockets.sync.client import connect


def test_greeting_and_one_ack_per_chunk(daemon) -> None:
    with connect(f"ws://127.0.0.1:{daemon.port}/ws/audio?codec=pcm_s16le&sample_rate=16000", open_timeout=5) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["status"] == "connected" and hello["session_id"].startswith("sess_")
        assert hello["config"] == {"sample_rate": 16000, "channels": 1, "sample_width": 2,
                                   "max_message_size": 1048576, "codec": "pcm_s16le"}
        for _ in range(30):
            ws.send(b"\x00\x01" * 320)
        acks = [json.loads(ws.recv(timeout=5)) for _ in range(30)]
        assert acks == [{"status": "chunk_received"}] * 30
        ws.send("hello")
        err = json.loads(ws.recv(timeout=5))
        assert err["status"] == "error" and err["code"] == "unexpected_text" and err["message"]
        ws.send(b"\x00" * 640)
        assert json.loads(ws.recv(timeout=5)) == {"status": "chunk_received"}


def test_s2_defaults_are_webm_at_44100(daemon) -> None:
    with connect(f"ws://127.0.0.1:{daemon.port}/ws/audio", open_timeout=5) as ws:
        config = json.loads(ws.recv(timeout=5))["config"]
        assert (config["codec"], config["sample_rate"], config["channels"]) == ("webm_opus", 44100, 1)


def test_unsupported_format_is_refused_at_the_handshake(daemon) -> None:
    with pytest.raises(Exception) as info:
        connect(f"ws://127.0.0.1:{daemon.port}/ws/audio?codec=opus&sample_rate=44100", open_timeout=5)
    assert "400" in str(info.value)
