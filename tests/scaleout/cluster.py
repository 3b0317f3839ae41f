"""Several real txvoice daemons sharing one real Redis (and, for the LB tests, HAProxy in front)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import jwt

from daemons import Daemon, start_daemon
from voiceclient import VoiceClient

SECRET = "scaleout-secret-for-tests-only-0123456789"


def bearer(sub: str = "alice", scope: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + 600, **claims}
    if scope is not None:
        body["scope"] = scope
    return jwt.encode(body, SECRET, algorithm="HS256")


def http(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 10) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def health(base: str) -> dict:
    return http("GET", f"{base}/health")[1]


def redis_ok(h: dict) -> bool:
    """/health names no Redis trouble (other reasons, reactor lag on a busy machine, are not ours here)."""
    return h["status"] != "unhealthy" and not any(r.startswith("redis") for r in h["reasons"])


def wait_for(predicate, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def start_node(tmp_path: Path, redis_url: str, *extra: str) -> Daemon:
    """One daemon on ``redis_url``, reconnecting within 0.5 s (it does not wait for Redis: it may be down)."""
    return start_daemon(tmp_path, "--redis", redis_url, "--redis-reconnect-max-delay", "0.5", *extra)


def wait_connected(node: Daemon, timeout: float = 10) -> None:
    wait_for(lambda: redis_ok(health(node.http)), timeout, f"node {node.port} connected to Redis")


def start_nodes(tmp_path: Path, redis_url: str, count: int, *extra: str, prefix: str | None = None) -> list[Daemon]:
    """``count`` daemons on one Redis (a prefix of their own), JWT secret set, node ids n0, n1, ..."""
    prefix = prefix or f"t{uuid.uuid4().hex[:8]}:"
    nodes = []
    try:
        for i in range(count):
            nodes.append(start_node(tmp_path, redis_url, "--redis-prefix", prefix, "--node-id", f"n{i}",
                                    "--jwt-secret", SECRET, *extra))
        for node in nodes:
            wait_connected(node)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


def authed_client(url: str, sub: str = "alice") -> VoiceClient:
    """A native client authenticated in-protocol with a JWT (so broadcasts by user reach it)."""
    client = VoiceClient(url)
    client.send_json("auth", {"token": bearer(sub)}, message_id="auth-1")
    reply = client.until(lambda m: isinstance(m, dict) and m.get("type") in ("auth_success", "auth_failed"))[-1][1]
    assert reply["type"] == "auth_success", reply
    return client


def status_events(client: VoiceClient, event_type: str, timeout: float = 5.0) -> dict:
    return client.until(lambda m: isinstance(m, dict) and m.get("type") == "status"
                        and m["data"].get("event_type") == event_type, timeout)[-1][1]


def send_reliable(client: VoiceClient, msg_type: str, message_id: str, data: dict | None = None) -> dict:
    """Send one reliable message and return its ack's data."""
    client.ws.send(json.dumps({"type": msg_type, "data": data or {}, "message_id": message_id, "reliable": True}))
    return client.until(lambda m: isinstance(m, dict) and m.get("type") == "ack"
                        and m["data"].get("message_id") == message_id)[-1][1]["data"]


def send_reliable_reply(client: VoiceClient, msg_type: str, message_id: str, data: dict | None = None) -> tuple[dict, dict]:
    """Send one reliable request; (its answer's data, its ack's data), in whichever order they come."""
    client.ws.send(json.dumps({"type": msg_type, "data": data or {}, "message_id": message_id, "reliable": True}))
    reply = ack = None
    while reply is None or ack is None:
        _, msg = client.next()
        if not isinstance(msg, dict):
            continue
        if msg.get("type") == "ack" and msg["data"].get("message_id") == message_id:
            ack = msg["data"]
        elif msg.get("type") == msg_type and msg["data"].get("reply_to") == message_id:
            reply = msg["data"]
    return reply, ack
