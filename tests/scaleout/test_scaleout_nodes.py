"""Two nodes on one real Redis, no load balancer: what each piece moved into Redis does across them."""

from __future__ import annotations

import signal
import time

import pytest

from cluster import (authed_client, bearer, health, http, send_reliable, send_reliable_reply, start_nodes, status_events,
                     wait_for)
from voiceclient import VoiceClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two(tmp_path_factory, shared_redis):
    # A long TTL: the refresh timers (a third of it) stay out of the per-frame command count.
    nodes = start_nodes(tmp_path_factory.mktemp("two"), shared_redis.url, 2, "--redis-session-ttl", "300")
    yield nodes
    for node in nodes:
        node.stop()


def base(node) -> str:
    return f"http://127.0.0.1:{node.port}"


def test_session_token_from_a_is_accepted_by_b_once(two):
    a, b = two
    status, body = http("POST", f"{base(a)}/auth/websocket", token=bearer("carol"))
    assert status == 200, body
    client = VoiceClient(f"{b.url}?token={body['token']}")
    try:
        assert client.greeting["data"]["authenticated"] is True
    finally:
        client.close()
    with pytest.raises(Exception):
        VoiceClient(f"{a.url}?token={body['token']}")  # used up, on every node


def test_post_events_reaches_a_user_on_every_node(two):
    a, b = two
    clients = [authed_client(a.url, "user_456"), authed_client(b.url, "user_456"), authed_client(b.url, "other")]
    try:
        status, body = http("POST", f"{base(a)}/events", {"event_type": "maintenance", "user_id": "user_456",
                                                         "data": {"message": "System maintenance in 5 minutes"}},
                            token=bearer("ops", scope="openid txvoice:broadcast"))
        assert (status, body["reached"]) == (202, 1), body
        for client in clients[:2]:
            event = status_events(client, "maintenance")
            assert event["data"]["message"] == "System maintenance in 5 minutes"
        with pytest.raises(Exception):
            status_events(clients[2], "maintenance", timeout=1.0)
    finally:
        for client in clients:
            client.close()


def test_post_events_refuses_without_token_or_scope(two):
    a, _ = two
    event = {"event_type": "x", "data": {}}
    assert http("POST", f"{base(a)}/events", event)[0] == 401
    assert http("POST", f"{base(a)}/events", event, token="not-a-jwt")[0] == 401
    assert http("POST", f"{base(a)}/events", event, token=bearer("ops", scope="openid"))[0] == 403
    assert http("POST", f"{base(a)}/events", {"data": {}}, token=bearer("ops", scope="txvoice:broadcast"))[0] == 400


def test_broadcast_to_a_conversation_on_both_nodes(two):
    a, b = two
    clients = [VoiceClient(a.url), VoiceClient(b.url)]
    try:
        for client in clients:
            assert send_reliable(client, "conversation_start", f"cs-{id(client)}", {"conversation_id": "conv-x"})["duplicate"] is False
        status, body = http("POST", f"{base(b)}/events", {"event_type": "note", "conversation_id": "conv-x", "data": {"n": 1}},
                            token=bearer("ops", scope="txvoice:broadcast"))
        assert (status, body["reached"]) == (202, 1)
        for client in clients:
            assert status_events(client, "note")["data"]["n"] == 1
    finally:
        for client in clients:
            client.close()


def test_resume_on_another_node_after_sigkill(tmp_path, redis_server):
    """Acked on A, A killed: the client resumes on B, a re-send of what A acked is a duplicate."""
    a, b = start_nodes(tmp_path, redis_server.url, 2, "--redis-session-ttl", "3")
    try:
        client = VoiceClient(a.url)
        token = client.greeting["data"]["resume_token"]
        acked = [send_reliable(client, "ping", f"m{i}") for i in range(20)]
        assert all(not ack["duplicate"] for ack in acked)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(5)
        client.close()
        again = VoiceClient(b.url)
        again.send_json("connect", {"resume_token": token}, message_id="resume-1")
        answer = again.until(lambda m: isinstance(m, dict) and m.get("type") == "connect")[-1][1]["data"]
        assert answer["resumed"] is True and answer["previous_session_id"] == client.greeting["data"]["session_id"]
        assert all(send_reliable(again, "ping", f"m{i}")["duplicate"] for i in range(20))
        assert send_reliable(again, "ping", "m20")["duplicate"] is False
        # A's registry entries expire (ttl 3 s); B's stays.
        wait_for(lambda: [k for k in redis_server.cli("KEYS", "*session:*").split()] and
                 all("n1" in redis_server.cli("HGET", k, "node") for k in redis_server.cli("KEYS", "*session:*").split()),
                 8, "A's sessions expired from the registry")
        again.close()
    finally:
        a.stop()
        b.stop()


def test_no_redis_command_per_audio_frame(two, shared_redis):
    a, _ = two
    client = VoiceClient(a.url)
    try:
        client.send_json("voice_start", {"codec": "pcm_s16le", "sample_rate": 16000, "mode": "push_to_talk"}, message_id="vs")
        client.until(lambda m: isinstance(m, dict) and m.get("type") == "voice_start")
        before = shared_redis.commandstats()
        frame = b"\x00\x01" * 320
        for _ in range(200):
            client.ws.send(frame)
        client.send_json("status", {}, message_id="st")
        status = client.until(lambda m: isinstance(m, dict) and m.get("type") == "status" and m["data"].get("reply_to") == "st")[-1][1]
        after = shared_redis.commandstats()
        assert status["data"]["session"]["counters"]["binary_in"] >= 200, status
        moved = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
        moved.pop("ping", None)  # the nodes' health probes (1/s each)
        moved.pop("info", None)  # ours
        assert moved == {}, moved
    finally:
        client.close()


def test_in_protocol_auth_shows_in_the_cluster_view_at_once(two, shared_redis):
    """The registry entry is re-written when auth makes the user known (the refresh is 100 s away here), once."""
    a, b = two
    client = VoiceClient(b.url)
    try:
        session_id = client.greeting["data"]["session_id"]

        def entry() -> dict | None:
            sessions = http("GET", f"{base(a)}/monitoring/cluster", token=bearer("ops"))[1]["sessions"]
            return next((s for s in sessions if s["session_id"] == session_id), None)

        assert wait_for(entry, 5, "the session in the cluster view")["user_id"] is None
        client.send_json("auth", {"token": bearer("dora", tenant="t-dora")}, message_id="auth-1")
        client.until(lambda m: isinstance(m, dict) and m.get("type") == "auth_success")
        seen = wait_for(lambda: (e := entry()) and e["user_id"] == "dora" and e, 3, "dora in the cluster view")
        assert (seen["node"], seen["tenant"]) == ("n1", "t-dora")
        before = shared_redis.commandstats()
        client.send_json("auth", {"token": bearer("dora", tenant="t-dora")}, message_id="auth-2")  # the same user again
        client.until(lambda m: isinstance(m, dict) and m.get("type") == "auth_success"
                     and m["data"].get("reply_to") == "auth-2")
        time.sleep(0.3)
        moved = {k: v - before.get(k, 0) for k, v in shared_redis.commandstats().items() if v != before.get(k, 0)}
        moved.pop("ping", None)
        moved.pop("info", None)
        assert moved.get("eval", 0) <= 1, moved  # the resume state's write; the registry entry is as it was
    finally:
        client.close()


def test_health_names_the_node(two):
    assert [health(base(n))["node_id"] for n in two] == ["n0", "n1"]


def test_conversation_started_on_a_continues_on_b(two):
    a, b = two
    first, second = VoiceClient(a.url), VoiceClient(b.url)
    try:
        reply, started = send_reliable_reply(first, "conversation_start", "c1",
                                             {"conversation_id": "conv-shared", "metadata": {"topic": "billing"}})
        assert started["duplicate"] is False
        # a turn on A (push to talk with the echo pipeline)
        first.send_json("voice_start", {"codec": "pcm_s16le", "sample_rate": 16000, "mode": "push_to_talk"}, message_id="vs")
        first.until(lambda m: isinstance(m, dict) and m.get("type") == "voice_start")
        for _ in range(25):
            first.ws.send(b"\x10\x00" * 320)
        first.send_json("voice_end", {}, message_id="ve")
        first.until(lambda m: isinstance(m, dict) and m.get("type") == "voice_end")
        second.send_json("conversation_start", {"conversation_id": "conv-shared", "metadata": {"agent": "b"}}, message_id="c2")
        joined = second.until(lambda m: isinstance(m, dict) and m.get("type") == "conversation_start")[-1][1]["data"]
        assert joined["started_at"] == reply["started_at"]
        assert joined["metadata"] == {"topic": "billing", "agent": "b"}

        def turns() -> int:
            second.send_json("conversation_state", {}, message_id=f"s{time.monotonic()}")
            return second.until(lambda m: isinstance(m, dict) and m.get("type") == "conversation_state")[-1][1]["data"]["turns"]

        assert wait_for(lambda: turns() >= 1, 10, "A's turn counted in the shared conversation")
    finally:
        first.close()
        second.close()


def test_resume_on_b_after_a_clean_close(two):
    a, b = two
    client = VoiceClient(a.url)
    token = client.greeting["data"]["resume_token"]
    send_reliable(client, "conversation_start", "k1", {"conversation_id": "conv-k"})
    client.close()
    time.sleep(0.3)
    again = VoiceClient(b.url)
    try:
        again.send_json("connect", {"resume_token": token}, message_id="r")
        answer = again.until(lambda m: isinstance(m, dict) and m.get("type") == "connect")[-1][1]
        assert answer["data"]["resumed"] is True and answer.get("conversation_id") == "conv-k", answer
        assert send_reliable(again, "conversation_start", "k1", {"conversation_id": "conv-k"})["duplicate"] is True
    finally:
        again.close()
