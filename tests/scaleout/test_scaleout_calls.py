"""
S4 call sessions (``/realtime/ws``) across real nodes on one real Redis, driven with S4's own
message flow from Python ``websockets``: a call started on A whose connection drops resumes on B
with its queued reply once and in order; a second connection on B takes a live call over from A
(4005 on A); another user cannot take it; A killed with SIGKILL: its call resumes on B; nothing
per audio frame touches Redis.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "realtime"))

from cluster import SECRET, start_nodes, wait_for  # noqa: E402
from rtsupport import S4Client, is_type  # noqa: E402
from signal_speech import speak  # noqa: E402

pytestmark = pytest.mark.slow

PHRASE = "what time is it"


@pytest.fixture(scope="module")
def two(tmp_path_factory, shared_redis):
    # A long registry TTL: its refresh timers stay out of the per-frame command count.
    nodes = start_nodes(tmp_path_factory.mktemp("calls"), shared_redis.url, 2, "--redis-session-ttl", "300")
    yield nodes
    for node in nodes:
        node.stop()


def token(node, user: str, call: str) -> str:
    """S4's exchange on ``node``: POST /auth/websocket {token, userId, callId} -> sessionToken."""
    now = int(time.time())
    body = json.dumps({"token": jwt.encode({"sub": user, "iat": now, "exp": now + 300}, SECRET, algorithm="HS256"),
                       "userId": user, "callId": call}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{node.port}/auth/websocket", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())["sessionToken"]


def start(client: S4Client, node, user: str, call: str, issuer=None) -> tuple[dict, float]:
    """session_start with a token from ``issuer`` (another node, by default the same); (answer, seconds)."""
    tok = token(issuer or node, user, call)
    t0 = time.monotonic()
    answer = client.start(node, user=user, call=call, token=tok)
    return answer, time.monotonic() - t0


def drop_mid_turn(node, user: str, call: str) -> S4Client:
    """A call on ``node`` whose caller speaks and drops while the turn is still open (it ends offline)."""
    first = S4Client(node)
    answer, _ = start(first, node, user, call)
    assert answer["data"]["status"] == "session_started" and answer["data"]["resumed"] is False, answer
    first.ws.send(speak(PHRASE, 16000, pad_ms=(200, 0)).tobytes())
    first.until(is_type("processing_status", status="speech_start"), timeout=5)
    first.close()
    return first


def call_record(redis, call_id: str) -> dict | None:
    """The call's record in Redis (``<prefix>call:<id>``, not its offline queue), or None."""
    keys = [k for k in redis.cli("--raw", "KEYS", f"*call:{call_id}").split() if "offline" not in k]
    return json.loads(redis.cli("--raw", "GET", keys[0])) if keys else None


def reply_kinds(client: S4Client, after: dict) -> list[str]:
    got = client.received[client.received.index(after) + 1:]
    kinds = []
    for m in got:
        if isinstance(m, bytes):
            kinds.append("binary")
        elif m["type"] == "audio_response":
            kinds.append("audio_" + m["data"]["status"])
        elif m["type"] != "heartbeat":
            kinds.append(m["type"] + ":" + str(m["data"].get("status")))
    return kinds


def test_dropped_call_resumes_on_the_other_node_with_its_reply_once(two, shared_redis):
    a, b = two
    drop_mid_turn(a, "ann", "call-x1")
    # At once, through "the load balancer" to B: the reply is still being made on A.
    second = S4Client(b)
    try:
        started, elapsed = start(second, b, "ann", "call-x1", issuer=a)
        data = started["data"]
        assert data["status"] == "session_started" and data["resumed"] is True, started
        assert data["queued"] >= 4, started  # turn_end, audio_response start, audio, audio_response end
        second.until(is_type("audio_response", status="end"), timeout=10)
        time.sleep(0.3)
        second.ws.send(json.dumps({"type": "heartbeat", "callId": "", "timestamp": 0, "data": {"ping": True}}))
        second.until(is_type("heartbeat", pong=True))
        kinds = reply_kinds(second, started)
        assert kinds.count("audio_start") == 1 and kinds.count("audio_end") == 1, kinds
        assert kinds.index("processing_status:turn_end") < kinds.index("audio_start") < kinds.index("binary") \
            < kinds.index("audio_end"), kinds
        audio = b"".join(m for m in second.received if isinstance(m, bytes))
        end = next(m for m in second.of_type("audio_response") if m["data"]["status"] == "end")
        assert end["data"]["cancelled"] is False, end  # the whole reply, not cut at the hand-over
        assert len(audio) == int(end["data"]["duration_ms"] * 32), (len(audio), end)  # every packet it sent
        assert len(audio) > 16000  # the echo of more than half a second of speech
        print(f"reply: {len(audio)} bytes, {end['data']['duration_ms']} ms")
        print(f"cross-node resume with the reply in progress: session_started after {elapsed * 1000:.0f} ms")
        record = call_record(shared_redis, "call-x1")
        assert record is not None and record["node"] == "n1" and record["resumes"] == 1 and record["user_id"] == "ann", record
    finally:
        second.close()
    # Delivered once: a third start (on A again) finds the call, and nothing left to deliver.
    third = S4Client(a)
    try:
        again, elapsed = start(third, a, "ann", "call-x1")
        assert again["data"]["resumed"] is True and again["data"]["queued"] == 0, again
        print(f"cross-node resume of an idle call: session_started after {elapsed * 1000:.0f} ms")
        third.send("session_end", "call-x1")
        third.until(is_type("connection_status", status="session_ended"))
    finally:
        third.close()
    wait_for(lambda: call_record(shared_redis, "call-x1") is None, 5, "the ended call's record dropped")


def test_live_call_taken_over_from_the_other_node_closes_4005(two):
    a, b = two
    first = S4Client(a)
    second = S4Client(b)
    try:
        start(first, a, "bob", "call-x2")
        started, elapsed = start(second, b, "bob", "call-x2")
        assert started["data"]["resumed"] is True and started["data"]["queued"] == 0, started
        first.until(is_type("connection_status", status="taken_over"), timeout=5)
        from websockets.exceptions import ConnectionClosed

        with pytest.raises(ConnectionClosed):
            first.until(lambda m: False, timeout=5)
        assert first.closed is not None and first.closed[0] == 4005, first.closed
        print(f"cross-node take-over: session_started after {elapsed * 1000:.0f} ms")
        # The call is B's now: audio on it is answered there.
        second.ws.send(speak(PHRASE, 16000, pad_ms=(200, 800)).tobytes())
        second.until(is_type("audio_response", status="end"), timeout=10)
    finally:
        first.close()
        second.close()


def test_another_users_call_is_refused_on_the_other_node(two):
    a, b = two
    owner = S4Client(a)
    intruder = S4Client(b)
    try:
        start(owner, a, "carl", "call-x3")
        answer, _ = start(intruder, b, "mallory", "call-x3")
        assert answer["type"] == "error" and answer["data"]["code"] == "call_in_use", answer
        assert owner.ws.state.name == "OPEN"
        owner.send("connection_status", "call-x3")
        assert owner.until(is_type("connection_status", status="connected"))
    finally:
        owner.close()
        intruder.close()


def test_no_redis_command_per_audio_frame_on_a_resumed_call(two, shared_redis):
    a, b = two
    first = S4Client(a)
    start(first, a, "dora", "call-x4")
    first.close()
    second = S4Client(b)
    try:
        started, _ = start(second, b, "dora", "call-x4")
        assert started["data"]["resumed"] is True
        before = shared_redis.commandstats()
        for _ in range(200):
            second.ws.send(b"\x00\x01" * 320)
        second.send("metrics", "call-x4")
        metrics = second.until(is_type("metrics"))
        assert metrics["data"]["processing"]["audioChunksProcessed"] >= 0
        after = shared_redis.commandstats()
        moved = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        moved.pop("ping", None)  # the nodes' health probes
        moved.pop("info", None)  # ours
        assert moved == {}, moved
    finally:
        second.close()


def test_call_of_a_killed_node_resumes_on_the_other(tmp_path, redis_server):
    a, b = start_nodes(tmp_path, redis_server.url, 2, "--redis-session-ttl", "3")
    try:
        drop_mid_turn(a, "eve", "call-x5")
        # The reply is queued in Redis from A (offline) ...
        wait_for(lambda: int(redis_server.cli("EVAL", "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do "
                                              "n = n + redis.call('LLEN', k) end return n", "0", "*offline:call:call-x5")
                             .strip() or 0) >= 4, 10, "the reply queued on A")
        a.proc.send_signal(signal.SIGKILL)  # ... then A dies
        a.proc.wait(5)
        second = S4Client(b)
        try:
            started, elapsed = start(second, b, "eve", "call-x5")
            assert started["data"]["resumed"] is True and started["data"]["queued"] >= 4, started
            second.until(is_type("audio_response", status="end"), timeout=10)
            kinds = reply_kinds(second, started)
            assert kinds.count("audio_start") == 1 and kinds.index("audio_start") < kinds.index("binary"), kinds
            # No waiting for a dead node: PUBLISH reached nobody.
            assert elapsed < 2.0, elapsed
            print(f"resume of a killed node's call: session_started after {elapsed * 1000:.0f} ms")
        finally:
            second.close()
    finally:
        a.stop()
        b.stop()


def test_through_haproxy_resumed_on_another_node_and_after_its_node_is_killed(tmp_path, redis_server):
    """examples/haproxy.cfg in front of three nodes: the sticky cookie picks the node, as a browser's would."""
    from haproxyd import SOURCE, start_haproxy

    nodes = start_nodes(tmp_path, redis_server.url, 3, "--redis-session-ttl", "3", "--trusted-proxies", f"{SOURCE}/32")
    lb = None
    try:
        lb = start_haproxy(tmp_path, [n.port for n in nodes])

        def via(node_name: str) -> S4Client:
            return S4Client(lb, headers={"Cookie": f"TXVOICE_NODE={node_name}"})

        first = via("n0")
        start(first, lb, "fay", "call-lb")
        assert call_record(redis_server, "call-lb")["node"] == "n0"
        first.ws.send(speak(PHRASE, 16000, pad_ms=(200, 0)).tobytes())
        first.until(is_type("processing_status", status="speech_start"), timeout=5)
        first.close()
        second = via("n1")  # the reconnect lands on another node
        started, elapsed = start(second, lb, "fay", "call-lb")
        assert started["data"]["resumed"] is True and started["data"]["queued"] >= 4, started
        second.until(is_type("audio_response", status="end"), timeout=10)
        kinds = reply_kinds(second, started)
        assert kinds.count("audio_start") == 1 and kinds.index("audio_start") < kinds.index("binary"), kinds
        assert call_record(redis_server, "call-lb")["node"] == "n1"
        print(f"through HAProxy, resumed on n1 after a drop mid-reply on n0: {elapsed * 1000:.0f} ms")
        # n1 dies under the live call; the client comes back with its cookie and is sent elsewhere.
        nodes[1].proc.send_signal(signal.SIGKILL)
        nodes[1].proc.wait(5)
        second.close()
        third = wait_for(lambda: _try(lambda: via("n1")), 10, "HAProxy routes around the dead node")
        again, elapsed = start(third, lb, "fay", "call-lb")
        assert again["data"]["resumed"] is True and again["data"]["queued"] == 0, again
        assert call_record(redis_server, "call-lb")["node"] in ("n0", "n2")
        print(f"through HAProxy, resumed after its node was killed: {elapsed * 1000:.0f} ms")
        third.close()
    finally:
        if lb is not None:
            lb.stop()
        for n in nodes:
            n.stop()


def _try(make):
    try:
        return make()
    except Exception:
        return None
