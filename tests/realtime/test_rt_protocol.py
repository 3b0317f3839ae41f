"""
The realtime dialect's heartbeats, offline-queue bounds and bad input, against a real daemon
(echo pipeline, JWT key, fast heartbeats) with ``websockets`` clients.
"""

from __future__ import annotations

import re
import time
import urllib.request

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from rtsupport import S4Client, http_error, is_type, session_token, user_jwt, start_rt_daemon
from signal_speech import speak


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    d = start_rt_daemon(tmp_path_factory.mktemp("rt"), "--realtime-heartbeat-interval", "0.2",
                        "--realtime-heartbeat-timeout", "0.2", "--offline-queue-max-messages", "2",
                        "--max-message-size", "65536")
    yield d
    d.stop()


def metric(daemon, name: str, **labels) -> float:
    with urllib.request.urlopen(f"{daemon.http}/metrics", timeout=5) as r:
        text = r.read().decode()
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}\{{{selector}\}} (\S+)$" if labels else rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def closed_code(client: S4Client, timeout: float) -> int | None:
    try:
        client.until(lambda m: False, timeout=timeout)
    except ConnectionClosed:
        return client.closed[0]
    return None


def test_unanswered_heartbeats_close_with_4004_answered_ones_stay(rt):
    silent = S4Client(rt, answer_heartbeats=False)
    alive = S4Client(rt)
    alive.pump(2.0)  # answers every heartbeat meanwhile
    t0 = time.monotonic()
    assert closed_code(silent, 5) == 4004
    elapsed = time.monotonic() - t0
    # Three beats (0.2 s apart) each unanswered for 0.2 s: closed at the 4th tick, ~0.8 s.
    assert 0.5 < elapsed < 2.0, elapsed
    errors = silent.of_type("error")
    assert errors and errors[-1]["data"]["code"] == "heartbeat_timeout"
    assert silent.heartbeats == 3
    alive.join()
    assert alive.heartbeats >= 8 and alive.closed is None  # 2 s at 0.2 s: well past 3 missed
    alive.send("heartbeat", "", ping=True)  # a client's own ping is answered too
    assert alive.until(is_type("heartbeat", pong=True))
    assert alive.ws.state.name == "OPEN"
    alive.close()


def test_session_start_sets_the_heartbeat_s4_style(rt):
    client = S4Client(rt, answer_heartbeats=False)
    started = client.start(rt, call="call-hb", heartbeat={"interval": 100, "timeout": 100, "maxMissed": 2})
    assert started["data"]["heartbeat"] == {"interval": 100, "timeout": 100, "maxMissed": 2, "enabled": True}
    t0 = time.monotonic()
    assert closed_code(client, 5) == 4004
    assert time.monotonic() - t0 < 1.0


def test_offline_overflow_drops_oldest_and_is_counted(rt):
    before = metric(rt, "txvoice_offline_messages_dropped_total", reason="count")
    first = S4Client(rt)
    first.start(rt, call="call-over")
    first.ws.send(speak("what time is it", 16000, pad_ms=(200, 0)).tobytes())  # a turn still open
    first.until(is_type("processing_status", status="speech_start"), timeout=5)
    first.close()  # the turn ends offline: turn_end, audio_response start, audio, audio_response end
    time.sleep(1.5)
    second = S4Client(rt)
    started = second.start(rt, call="call-over")
    assert started["data"]["resumed"] is True and started["data"]["queued"] == 2
    second.until(is_type("audio_response", status="end"), timeout=5)
    after_status = second.received[second.received.index(started) + 1:]
    # The newest two, in order: the audio and the response's end.
    assert isinstance(after_status[0], bytes) and after_status[1]["data"]["status"] == "end"
    assert metric(rt, "txvoice_offline_messages_dropped_total", reason="count") >= before + 2
    second.close()


def test_bad_input_gets_structured_errors_and_spares_other_sessions(rt):
    bystander = S4Client(rt)
    bystander.start(rt, user="user-b", call="call-b")
    bystander.pump(30)  # answers its heartbeats while the other one misbehaves
    bad = S4Client(rt)

    def error_for(send) -> dict:
        send()
        return bad.until(is_type("error"), timeout=5)["data"]

    assert error_for(lambda: bad.ws.send(b"\x00" * 640))["code"] == "session_required"
    assert error_for(lambda: bad.send("metrics"))["code"] == "session_required"
    assert error_for(lambda: bad.ws.send("not json"))["code"] == "invalid_json"
    assert error_for(lambda: bad.ws.send("[1, 2]"))["code"] == "invalid_message"
    assert error_for(lambda: bad.send("no_such_type"))["code"] == "unknown_type"
    assert error_for(lambda: bad.send("session_start", "c1", userId="user-123", callId="c1"))["code"] == "auth_required"
    wrong = error_for(lambda: bad.send("session_start", "c1", userId="user-123", callId="c1", authToken="bogus"))
    assert wrong["code"] == "auth_failed" and wrong["category"] == "auth"
    token = session_token(rt, "user-123", "call-A")
    mismatch = error_for(lambda: bad.send("session_start", "call-B", userId="user-123", callId="call-B",
                                          authToken=token))
    assert mismatch["code"] == "call_mismatch"
    reused = error_for(lambda: bad.send("session_start", "call-A", userId="user-123", callId="call-A",
                                        authToken=token))
    assert reused["code"] == "auth_failed"  # single use: consumed by the refused attempt
    other_user = error_for(lambda: bad.send("session_start", "call-C", userId="user-x", callId="call-C",
                                            authToken=user_jwt("user-123")))
    assert other_user["code"] == "user_mismatch"
    status, body = http_error(rt, "/auth/websocket", b'{"token": "%s", "userId": "mallory", "callId": "c"}'
                              % user_jwt("user-123").encode())
    assert status == 403 and body["error"]["code"] == "user_mismatch"
    # Now a proper start, then oversize chunks and a second session_start.
    assert bad.start(rt, call="call-bad")["data"]["status"] == "session_started"
    assert error_for(lambda: bad.ws.send(b"\x01" * 70000))["code"] == "message_too_large"
    assert error_for(lambda: bad.send("session_start", "call-bad", userId="user-123", callId="call-bad",
                                      authToken="x"))["code"] == "session_already_started"
    assert bad.ws.state.name == "OPEN"
    # The bystander was never disturbed: its audio is answered (echo) and it saw no error.
    bystander.join(stop=True)
    pcm = speak("what time is it", 16000, pad_ms=(200, 900))
    for i in range(0, len(pcm), 1600):
        bystander.ws.send(pcm[i:i + 1600].tobytes())
    bystander.until(is_type("audio_response", status="end"), timeout=10)
    assert not bystander.of_type("error")
    with urllib.request.urlopen(f"{rt.http}/health", timeout=5) as r:
        assert r.status == 200
    bad.close()
    bystander.close()


def test_small_max_chunk_size_from_audio_options(rt):
    client = S4Client(rt)
    client.start(rt, call="call-chunk", maxChunkSize=1024, sampleRate=16000, enableVAD=True)
    client.ws.send(np.zeros(1000, dtype=np.int16).tobytes())
    assert client.until(is_type("error"))["data"]["code"] == "chunk_too_large"
    client.close()
