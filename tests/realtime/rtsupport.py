"""
Helpers of the realtime (S4) tests: a daemon with a JWT key, S4's token exchange, and an S4
client on the ``websockets`` library (its sync client: an independent implementation).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
from websockets.sync.client import connect

from daemons import ROOT, start_daemon

SECRET = "s4-realtime-test-secret-0123456789abcdef"

# The venv's installed txvoice ships its own twisted/plugins/txvoice_dialects.py, which shadows
# the working tree's (same module name, earlier on twisted.plugins.__path__): put the tree's first.
_OVERLAY = """
import twisted.plugins
twisted.plugins.__path__.insert(0, {path!r})
"""


def plugin_overlay(tmp_path: Path) -> str:
    overlay = tmp_path / "plugin-overlay"
    overlay.mkdir(exist_ok=True)
    (overlay / "sitecustomize.py").write_text(_OVERLAY.format(path=str(ROOT / "twisted" / "plugins")))
    return str(overlay)


def start_rt_daemon(tmp_path: Path, *args: str, secret: str | None = SECRET):
    env = {"PYTHONPATH": f"{ROOT}:{plugin_overlay(tmp_path)}"}
    if secret:
        env["TXVOICE_JWT_SECRET"] = secret
    return start_daemon(tmp_path, *args, env=env)


def user_jwt(user: str = "user-123", ttl: float = 300) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + ttl)}, SECRET, algorithm="HS256")


def session_token(daemon, user: str = "user-123", call: str = "call-456", jwt_user: str | None = None) -> str:
    """S4's exchange, as its client does it: POST /auth/websocket {token, userId, callId} -> sessionToken."""
    body = json.dumps({"token": user_jwt(jwt_user or user), "userId": user, "callId": call}).encode()
    req = urllib.request.Request(f"{daemon.http}/auth/websocket", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())["sessionToken"]


def s4(msg_type: str, call: str = "", **data) -> str:
    return json.dumps({"type": msg_type, "callId": call, "timestamp": int(time.time() * 1000), "data": data})


class S4Client:
    """One connection to ``/realtime/ws``: JSON messages and binary audio received, in order."""

    def __init__(self, daemon, answer_heartbeats: bool = True, path: str = "/realtime/ws",
                 headers: dict[str, str] | None = None) -> None:
        self._connection = connect(f"ws://127.0.0.1:{daemon.port}{path}", open_timeout=5, max_size=None,
                                   additional_headers=headers)
        self.ws = self._connection.__enter__()
        self.answer_heartbeats = answer_heartbeats
        self.received: list = []  # dicts (JSON) and bytes (binary), in arrival order
        self.heartbeats = 0
        self.closed: tuple[int | None, str] | None = None

    def send(self, msg_type: str, call: str = "", **data) -> None:
        self.ws.send(s4(msg_type, call, **data))

    def start(self, daemon, user: str = "user-123", call: str = "call-456", token: str | None = None, **data) -> dict:
        token = token if token is not None else session_token(daemon, user, call)
        self.send("session_start", call, userId=user, callId=call, authToken=token, **data)
        return self.until(lambda m: isinstance(m, dict) and m["type"] in ("connection_status", "error")
                          and (m["type"] == "error" or m["data"].get("status") == "session_started"))

    def recv_one(self, timeout: float):
        from websockets.exceptions import ConnectionClosed

        try:
            raw = self.ws.recv(timeout=timeout)
        except ConnectionClosed as e:
            self.closed = (e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else "")
            raise
        if isinstance(raw, bytes):
            self.received.append(raw)
            return raw
        message = json.loads(raw)
        self.received.append(message)
        if message["type"] == "heartbeat" and message["data"].get("ping"):
            self.heartbeats += 1
            if self.answer_heartbeats:
                self.send("heartbeat", "", pong=True, seq=message["data"].get("seq"))
        return message

    def until(self, predicate, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; received {[m if isinstance(m, dict) else len(m) for m in self.received][-30:]}")
            try:
                message = self.recv_one(left)
            except TimeoutError:
                continue
            if predicate(message):
                return message

    def of_type(self, msg_type: str) -> list[dict]:
        return [m for m in self.received if isinstance(m, dict) and m["type"] == msg_type]

    def pump(self, seconds: float) -> None:
        """Read (and answer heartbeats) in a thread for ``seconds`` or until ``join()``."""
        import threading

        self._stop = threading.Event()

        def run() -> None:
            deadline = time.monotonic() + seconds
            try:
                while time.monotonic() < deadline and not self._stop.is_set():
                    try:
                        self.recv_one(min(0.05, max(0.01, deadline - time.monotonic())))
                    except TimeoutError:
                        pass
            except Exception:
                pass

        self._pump = threading.Thread(target=run, daemon=True)
        self._pump.start()

    def join(self, stop: bool = False) -> None:
        if stop:
            self._stop.set()
        self._pump.join()

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


def is_type(msg_type: str, **fields):
    def predicate(m) -> bool:
        return isinstance(m, dict) and m["type"] == msg_type and all(m["data"].get(k) == v for k, v in fields.items())
    return predicate


def http_error(daemon, path: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(f"{daemon.http}{path}", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
