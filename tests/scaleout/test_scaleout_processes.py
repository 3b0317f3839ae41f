"""
``twistd -n txvoice --processes 2 --redis URL``: each process is a node of the cluster (``<node-id>.0``
the parent, ``<node-id>.1`` the worker) and the two act as one service on their one port: a session
token issued by one is accepted on the other, ``POST /events`` reaches sessions on both, and
``/monitoring/cluster`` lists both processes' sessions.  Which process a connection lands on is the
kernel's (SO_REUSEPORT); the tests find out from /health (a request on a kept-alive HTTP connection
is answered by the process that accepted it) and from the registry (the node of each session).
"""

from __future__ import annotations

from http.client import HTTPConnection
import json

import pytest

from cluster import SECRET, authed_client, bearer, health, http, redis_ok, start_node, status_events, wait_for
from voiceclient import VoiceClient

pytestmark = pytest.mark.slow

NODES = {"p.0", "p.1"}


@pytest.fixture
def two_processes(tmp_path, redis_server):
    d = start_node(tmp_path, redis_server.url, "--processes", "2", "--node-id", "p", "--jwt-secret", SECRET,
                   "--redis-prefix", "procs:", "--shutdown-timeout", "3")
    try:
        seen: dict[str, dict] = {}

        def both_connected() -> bool:
            h = health(d.http)  # a new connection each time: either process answers
            if redis_ok(h):
                seen[h["node_id"]] = h["process"]
            return set(seen) == NODES

        wait_for(both_connected, 20, f"both processes on Redis as nodes p.0 and p.1 (seen {seen})")
        assert {p["index"] for p in seen.values()} == {0, 1} and seen["p.0"]["pid"] == d.proc.pid
        yield d
    finally:
        d.stop()
    assert "session tokens (POST /auth/websocket) are kept per process" not in d.log()  # Redis shares them


def cluster_view(d) -> dict:
    status, body = http("GET", f"{d.http}/monitoring/cluster", token=bearer("ops"))
    assert status == 200, body
    return body


def node_of(d, session_id: str) -> str:
    return wait_for(lambda: {s["session_id"]: s["node"] for s in cluster_view(d)["sessions"]}.get(session_id),
                    5, f"session {session_id} in the registry")


def test_a_session_token_from_one_process_is_accepted_by_the_other_once(two_processes):
    d = two_processes
    issuer = HTTPConnection("127.0.0.1", d.port, timeout=10)  # kept alive: one process answers all
    try:
        issuer.request("GET", "/health")
        issued_by = json.loads(issuer.getresponse().read())["node_id"]
        landed: list[str] = []
        crossed = None
        for _ in range(30):
            issuer.request("POST", "/auth/websocket", body=b"", headers={"Authorization": f"Bearer {bearer('carol')}"})
            response = issuer.getresponse()
            body = json.loads(response.read())
            assert response.status == 200, body
            client = VoiceClient(f"{d.url}?token={body['token']}")
            try:
                assert client.greeting["data"]["authenticated"] is True  # wherever it landed
                landed.append(node_of(d, client.greeting["data"]["session_id"]))
            finally:
                client.close()
            if landed[-1] != issued_by:
                crossed = body["token"]
                break
        assert crossed is not None, f"every connection landed on {issued_by}: {landed}"
    finally:
        issuer.close()
    # Single use across the processes: redeemed on the other one, refused on either.
    for _ in range(4):
        with pytest.raises(Exception):
            VoiceClient(f"{d.url}?token={crossed}")


def test_post_events_and_the_cluster_view_cover_both_processes(two_processes):
    d = two_processes
    clients: list[VoiceClient] = []
    try:
        nodes: dict[str, list[VoiceClient]] = {}
        for _ in range(30):  # until the kernel has put sessions of user_456 on both processes
            client = authed_client(d.url, "user_456")
            clients.append(client)
            nodes.setdefault(node_of(d, client.greeting["data"]["session_id"]), []).append(client)
            if set(nodes) == NODES and len(clients) >= 4:
                break
        assert set(nodes) == NODES, {n: len(c) for n, c in nodes.items()}
        view = cluster_view(d)
        assert view["nodes"] == {n: len(c) for n, c in nodes.items()}  # any process answers for both
        assert {s["session_id"] for s in view["sessions"]} == {c.greeting["data"]["session_id"] for c in clients}
        status, body = http("POST", f"{d.http}/events", {"event_type": "maintenance", "user_id": "user_456",
                                                        "data": {"message": "System maintenance in 5 minutes"}},
                            token=bearer("ops", scope="txvoice:broadcast"))
        assert status == 202 and body["node_id"] in NODES, body
        assert body["reached"] == len(nodes[body["node_id"]])  # the process that took the request counts its own
        for client in clients:  # and every session of the user, on both processes, gets it
            assert status_events(client, "maintenance")["data"]["message"] == "System maintenance in 5 minutes"
    finally:
        for client in clients:
            client.close()
