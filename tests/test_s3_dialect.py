"""
Seed S3 against a real daemon: its own Node snippets (npm ``ws`` and ``socket.io-client``) run
unchanged but for the URL, the raw ``/voice-ws`` protocol, 401s, bad input, and Socket.IO over
both transports.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import jwt
import pytest
from websockets.sync.client import connect

from daemons import start_daemon
from nodejs import json_lines, run_node, seed_script, start_node

SECRET = "s3-test-secret-0123456789abcdef0123456789"
ROOT = Path(__file__).resolve().parent.parent
#: shared/ lies beside the checkout (CI, main) or beside its worktree folder.
SEEDS = [base / "shared" / "seeds" / "003_7b7d0b95efae2a66.txt" for base in (ROOT.parent, ROOT.parent.parent)]


def token(expires_in: float = 3600, secret: str = SECRET, **claims) -> str:
    body = {"sub": "user-1", "tenant": "tenant-1", "siteId": "test-site", "exp": int(time.time() + expires_in), **claims}
    return jwt.encode(body, secret, algorithm="HS256")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("s3"), env={"TXVOICE_JWT_SECRET": SECRET})
    yield d
    d.stop()


def messages(stdout: str, label: str) -> list:
    return [args[1] for args in json_lines(stdout) if args and args[0] == label]


def test_snippets_are_the_seeds_own() -> None:
    """tests/node holds the seed's snippets verbatim (checked when the seed is beside the repo)."""
    found = [p for p in SEEDS if p.exists()]
    assert found, f"seed S3 not found at {SEEDS}"
    seed = found[0].read_text()
    for name in ("seed_voice_ws.mjs", "seed_socketio.mjs"):
        assert (Path(__file__).parent / "node" / name).read_text() in seed, name


def test_seed_ws_snippet_bearer_upgrade_and_1920_byte_frame_answered(s3) -> None:
    done = run_node(seed_script("seed_voice_ws.mjs", s3.port, "testVoiceWebSocket();\n"),
                    {"JWT_TOKEN": token(), "RUN_MS": "1500"})
    assert done.returncode == 0, done.stderr
    assert ["Voice WebSocket connected"] in json_lines(done.stdout)
    got = messages(done.stdout, "Received message:")
    ready = got[0]
    assert ready["type"] == "ready" and ready["metadata"]["sessionId"].startswith("sess_")
    assert ready["metadata"]["sequence"] == 1 and ready["metadata"]["timestamp"] > 1.7e12
    # The frame (no voice_start: 48 kHz PCM by default) opens a stream: answered with its VAD state.
    vad = got[1]
    assert vad["type"] == "vad" and vad["metadata"]["vadActive"] is False
    assert vad["metadata"]["sampleRate"] == 48000 and vad["metadata"]["sequence"] == 2
    assert not [m for m in got if m["type"] == "error"]


@pytest.mark.parametrize("bad", ["malformed", "expired", "wrong_key"])
def test_seed_ws_snippet_gets_401_for_a_bad_token(s3, bad) -> None:
    value = {"malformed": "not.a.jwt", "expired": token(expires_in=-3600),
             "wrong_key": token(secret="another-secret-0123456789abcdef0123")}[bad]
    done = run_node(seed_script("seed_voice_ws.mjs", s3.port, "testVoiceWebSocket();\n"),
                    {"JWT_TOKEN": value, "RUN_MS": "1500"})
    # The snippet has no error handler: ws throws on the refused upgrade, before any frame.
    assert done.returncode != 0 and "Unexpected server response: 401" in done.stderr
    assert "Voice WebSocket connected" not in done.stdout


def test_no_token_is_401_and_query_token_works(s3) -> None:
    with pytest.raises(Exception) as info:
        connect(f"ws://127.0.0.1:{s3.port}/voice-ws", open_timeout=5)
    assert "401" in str(info.value)
    with connect(f"ws://127.0.0.1:{s3.port}/voice-ws?token={token()}", open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "ready"


def test_deflate_is_negotiated_as_s3_configures_it(s3) -> None:
    with connect(f"ws://127.0.0.1:{s3.port}/voice-ws?token={token()}", open_timeout=5) as ws:
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")


def test_bad_input_gets_structured_errors_and_the_connection_survives(s3) -> None:
    url = f"ws://127.0.0.1:{s3.port}/voice-ws?token={token()}"
    with connect(url, open_timeout=5, compression=None) as ws, connect(url, open_timeout=5) as other:
        assert json.loads(ws.recv(timeout=5))["type"] == "ready"
        assert json.loads(other.recv(timeout=5))["type"] == "ready"
        cases = [
            ("not json", "invalid_json"),
            ("[1, 2]", "invalid_message"),
            (json.dumps({"type": "voice_launch"}), "unknown_type"),
            (json.dumps({"data": "x"}), "invalid_message"),
            (json.dumps({"type": "voice_data", "data": "***"}), "invalid_audio"),
            (json.dumps({"type": "voice_start", "metadata": {"codec": "mp9"}}), None),
            (json.dumps({"type": "voice_start", "metadata": {"sampleRate": -1}}), None),
            (b"\x00" * (1048576 + 10), "message_too_large"),
        ]
        for payload, code in cases:
            ws.send(payload)
            err = json.loads(ws.recv(timeout=5))
            assert err["type"] == "error" and err["metadata"]["error"], payload[:40]
            if code is not None:
                assert err["metadata"]["code"] == code, (payload[:40], err)
        # Still serving: a valid voice_start (Opus at 48 kHz) and a frame.
        ws.send(json.dumps({"type": "voice_start", "metadata": {"codec": "opus", "sampleRate": 48000, "channels": 1}}))
        vad = json.loads(ws.recv(timeout=5))
        assert vad["type"] == "vad" and vad["metadata"]["codec"] == "opus"
        other.send(b"\x00" * 1920)
        assert json.loads(other.recv(timeout=5))["type"] == "vad"


SOCKETIO_CLIENT = """
import { io } from 'socket.io-client';
const opts = { auth: { token: process.env.JWT_TOKEN } };
if (process.env.TRANSPORTS) opts.transports = process.env.TRANSPORTS.split(',');
const socket = io(process.env.URL + '/voice', opts);
const log = (...a) => console.log(JSON.stringify(a));
setTimeout(() => { log('timeout'); process.exit(3); }, 8000);
socket.io.engine.on('upgrade', (t) => log('upgrade', t.name));
socket.on('connect_error', (e) => { log('connect_error', e.message, e.data); process.exit(0); });
socket.onAny((event, ...args) => log('event', event, args[0]));
socket.on('connect', () => {
  socket.emit('voice:start', { siteId: 'test-site', locale: 'en-US', sessionId: process.env.JOIN || undefined },
    (ack) => log('start_ack', ack));
});
socket.on('voice:session_ready', (data) => {
  log('ready', data, socket.io.engine.transport.name);
  socket.emit('voice:audio_data', new ArrayBuffer(1920), (ack) => {
    log('audio_ack', ack);
    socket.emit('voice:nonsense', 1, (ack) => {
      log('nonsense_ack', ack);
      if (process.env.HOLD) return;
      setTimeout(() => socket.emit('voice:end', (ack) => { log('end_ack', ack, socket.io.engine.transport.name); process.exit(0); }), 300);
    });
  });
});
"""


def test_seed_socketio_snippet_gets_session_ready(s3) -> None:
    done = run_node(seed_script("seed_socketio.mjs", s3.port), {"JWT_TOKEN": token(), "RUN_MS": "1500"})
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)
    assert ["Socket.IO voice connected"] in lines
    ready = [args for args in lines if args[0] == "Voice session ready:"]
    assert ready and ready[0][1].startswith("sess_")


@pytest.mark.parametrize("transports", ["polling", "websocket", ""])
def test_socketio_transports_acks_and_events(s3, transports) -> None:
    done = run_node(SOCKETIO_CLIENT, {"JWT_TOKEN": token(), "URL": s3.http, "TRANSPORTS": transports})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = json_lines(done.stdout)
    by = {line[0]: line[1:] for line in reversed(lines)}
    ready, transport = by["ready"]
    assert ready["sessionId"].startswith("sess_") and ready["joined"] is False
    assert by["start_ack"][0]["ok"] is True and by["start_ack"][0]["sessionId"] == ready["sessionId"]
    assert by["audio_ack"][0] == {"ok": True, "bytes": 1920}
    assert by["nonsense_ack"][0]["code"] == "unknown_type"
    events = [line[1] for line in lines if line[0] == "event"]
    assert "voice:vad" in events and "voice:error" in events
    end_ack, final_transport = by["end_ack"]
    assert end_ack == {"ok": True, "sessionId": ready["sessionId"]}
    expected = {"polling": "polling", "websocket": "websocket", "": "websocket"}[transports]
    assert final_transport == expected
    if transports == "":
        assert by["upgrade"] == ["websocket"]  # polling first, then the upgrade, as socket.io-client does


@pytest.mark.parametrize("value", ["", "garbage", "expired"])
def test_socketio_refuses_bad_tokens(s3, value) -> None:
    bad = token(expires_in=-3600) if value == "expired" else value
    done = run_node(SOCKETIO_CLIENT, {"JWT_TOKEN": bad, "URL": s3.http, "TRANSPORTS": "polling"})
    lines = json_lines(done.stdout)
    refused = [line for line in lines if line[0] == "connect_error"]
    assert refused and refused[0][2] == {"code": 401}, lines
    assert not [line for line in lines if line[0] == "ready"]


def sessions(daemon) -> list[dict]:
    request = urllib.request.Request(f"{daemon.http}/monitoring/sessions", headers={"Authorization": f"Bearer {token()}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())["sessions"]


def test_one_session_across_both_transports(s3) -> None:
    """Socket.IO joins a /voice-ws session by its id: one session, one monitoring entry, events on both."""
    with connect(f"ws://127.0.0.1:{s3.port}/voice-ws?token={token()}", open_timeout=5) as ws:
        session_id = json.loads(ws.recv(timeout=5))["metadata"]["sessionId"]
        before = len(sessions(s3))
        proc, path = start_node(SOCKETIO_CLIENT, {"JWT_TOKEN": token(), "URL": s3.http, "JOIN": session_id,
                                                  "HOLD": "1"})
        try:
            deadline = time.monotonic() + 10
            entry = None
            while time.monotonic() < deadline:
                entry = next((s for s in sessions(s3) if s["session_id"] == session_id), None)
                if entry and entry.get("transports") == ["socketio", "voicews"]:
                    break
                time.sleep(0.1)
            assert entry and entry["transports"] == ["socketio", "voicews"] and entry["site_id"] == "test-site"
            assert len(sessions(s3)) == before  # the join added no entry
            # Audio in on the raw socket; the VAD answer goes out on both.
            ws.send(b"\x00" * 1920)
            raw = json.loads(ws.recv(timeout=5))
            assert raw["type"] == "vad"
            time.sleep(0.5)
        finally:
            proc.kill()
            out, err = proc.communicate(timeout=5)
            path.unlink(missing_ok=True)
        lines = json_lines(out)
        ready = next(line for line in lines if line[0] == "ready")[1]
        assert ready == {"sessionId": session_id, "joined": True, "transports": ["socketio", "voicews"]}
        vads = [line[2] for line in lines if line[0] == "event" and line[1] == "voice:vad"]
        assert vads and vads[-1]["metadata"]["sequence"] == raw["metadata"]["sequence"]
    # Per-transport counters carry a `transport` label.
    request = urllib.request.Request(f"{s3.http}/metrics", headers={"Authorization": f"Bearer {token()}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        metrics = r.read().decode()
    for transport in ("voicews", "socketio"):
        assert f'txvoice_s3_messages_total{{direction="out",kind="text",transport="{transport}"}}' in metrics, metrics[-3000:]
    assert 'txvoice_s3_connections{transport="voicews"}' in metrics
