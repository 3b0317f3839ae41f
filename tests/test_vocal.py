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


def _speak_turn(ws, respond: bool) -> list:
    import numpy as np

    from signal_speech import silence, speak
    from voiceclient import pcm_frames

    audio = np.concatenate([speak("Hello.", 16000), silence(900)])
    frames = pcm_frames(audio)
    for f in frames:
        ws.send(f)
    got, acks = [], 0
    while acks < len(frames) or (respond and not any(isinstance(m, dict) and m.get("status") == "response_end" for m in got)):
        msg = ws.recv(timeout=10)
        msg = json.loads(msg) if isinstance(msg, str) else msg
        if msg == {"status": "chunk_received"}:
            acks += 1
        else:
            got.append(msg)
    return got


def test_turns_are_reported_but_not_answered_by_default(daemon) -> None:
    with connect(f"ws://127.0.0.1:{daemon.port}/ws/audio?codec=pcm_s16le&sample_rate=16000", open_timeout=5) as ws:
        json.loads(ws.recv(timeout=5))
        got = _speak_turn(ws, respond=False)
        statuses = [m["status"] for m in got if isinstance(m, dict)]
        assert "turn_end" in statuses and "response" not in statuses
        assert not [m for m in got if isinstance(m, bytes)]


def test_respond_1_answers_each_turn(daemon) -> None:
    url = f"ws://127.0.0.1:{daemon.port}/ws/audio?codec=pcm_s16le&sample_rate=16000&respond=1"
    with connect(url, open_timeout=5) as ws:
        json.loads(ws.recv(timeout=5))
        got = _speak_turn(ws, respond=True)
        statuses = [m["status"] for m in got if isinstance(m, dict)]
        assert statuses.index("turn_end") < statuses.index("response") < statuses.index("response_end")
        audio = b"".join(m for m in got if isinstance(m, bytes))
        assert len(audio) > 16000  # the echoed turn, over half a second of 16 kHz PCM
