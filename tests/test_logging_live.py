"""The daemon's own log output: per-namespace levels, JSON lines, and no secrets."""

from __future__ import annotations

import json
import time

import jwt
from websockets.sync.client import connect

from daemons import start_daemon

SECRET = "log-test-secret-0123456789abcdefghijkl"


def test_json_log_lines_never_contain_a_token(tmp_path) -> None:
    d = start_daemon(
        tmp_path, "--log-format", "json", "--log-levels", "txvoice=debug", "--jwt-secret", SECRET,
        twistd_args=("--logger", "txvoice.logging.twistd_observer"),
    )
    token = jwt.encode({"sub": "erin", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    try:
        with connect(f"ws://127.0.0.1:{d.port}/?token={token}", open_timeout=5) as ws:
            ws.recv(timeout=5)
            ws.send(json.dumps({"type": "auth", "data": {"token": token}, "message_id": "a"}))
            ws.recv(timeout=5)
            ws.send(json.dumps({"type": "error", "data": {"code": "x", "message": f"Bearer {token}"}}))
            ws.send(json.dumps({"type": "ping", "message_id": "p"}))
            ws.recv(timeout=5)
    finally:
        d.stop()
    out = d.log()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(line.get("namespace", "").startswith("txvoice") for line in lines)
    assert any("session" in line.get("message", "") for line in lines)
    assert token not in out and token.split(".")[2] not in out


def test_levels_filter_by_namespace(tmp_path) -> None:
    d = start_daemon(
        tmp_path, "--log-levels", "txvoice=warn", twistd_args=("--logger", "txvoice.logging.twistd_observer"),
    )
    try:
        with connect(f"ws://127.0.0.1:{d.port}/", open_timeout=5) as ws:
            ws.recv(timeout=5)
            ws.send(json.dumps({"type": "error", "data": {"code": "client_oops", "message": "reported"}}))
            ws.send(json.dumps({"type": "ping", "message_id": "p"}))
            ws.recv(timeout=5)
    finally:
        d.stop()
    out = d.log()
    assert "client_oops" in out  # a warning
    assert "opened from" not in out  # session open is info: filtered out


def test_documented_namespaces_and_their_levels(tmp_path) -> None:
    # The namespaces in doc/operations.md are what the lines carry, so a level per namespace works.
    d = start_daemon(
        tmp_path, "--log-format", "json", "--log-levels", "txvoice.network.websocket=warn,txvoice=info",
        twistd_args=("--logger", "txvoice.logging.twistd_observer"),
    )
    try:
        with connect(f"ws://127.0.0.1:{d.port}/", open_timeout=5) as ws:
            ws.recv(timeout=5)
    finally:
        d.stop()
    lines = [json.loads(line) for line in d.log().splitlines() if line.strip()]
    namespaces = {line["message"].split(" on ")[0]: line["namespace"] for line in lines}
    assert namespaces["txvoice listening"] == "txvoice.network"
    assert namespaces["txvoice stopped"] == "txvoice.service"
    assert not [line for line in lines if "opened from" in line["message"]]  # txvoice.network.websocket info
