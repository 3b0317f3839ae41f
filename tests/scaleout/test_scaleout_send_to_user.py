"""
S4's ``sendToUser`` and ``sendToCall`` across nodes on a real redis-server: a message for a user
(or a call) served by another node reaches them live (over ``calls:queued``), not only at their
next ``session_start``; a user served nowhere finds it in the queue, a call that exists nowhere gets
nothing queued.  The two nodes here are two
servers in the test's process (in-memory WebSockets, the S4 dialect), each with a Redis connection
and node id of its own: ``sendToUser`` is embedding API, with no HTTP route a twistd node could be
driven through.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, reactor, task

from inprocess import connected
from txvoice.dialects.realtime import RealtimeProtocol, call_table
from txvoice.scaleout.calls import RedisCallStore
from txvoice.scaleout.offline import RedisOfflineStore
from wsmemory import MemoryClient, memory_server


@defer.inlineCallbacks
def node(url: str, prefix: str, node_id: str):
    conn = yield connected(url, prefix, node_id)
    server = memory_server()
    server.offline_store = RedisOfflineStore(conn)
    server.call_store = RedisCallStore(conn, 30)
    return conn, server


@defer.inlineCallbacks
def until(client: MemoryClient, seen: list, predicate, timeout: float = 5.0):
    for _ in range(int(timeout / 0.02)):
        seen += client.messages()
        if any(predicate(m) for m in seen):
            return seen
        yield task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"not within {timeout} s; got {[m.get('type') for m in seen]}")


@pytest_twisted.inlineCallbacks
def test_send_to_user_and_to_call_reach_a_call_on_another_node_live(redis_server):
    conn_a, server_a = yield node(redis_server.url, "stu:", "na")
    conn_b, server_b = yield node(redis_server.url, "stu:", "nb")
    try:
        client = MemoryClient(server_b, RealtimeProtocol, subprotocol=None, port=40100)
        client.send_json({"type": "session_start", "callId": "c1", "timestamp": 0,
                          "data": {"userId": "u1", "callId": "c1", "authToken": "dev"}})
        seen: list = []
        yield until(client, seen, lambda m: m["type"] == "connection_status"
                    and m["data"].get("status") == "session_started")
        table_a = call_table(server_a)
        assert table_a.sendToUser("u1", "notice", {"n": 1}) == 0  # nobody of u1's on node a
        assert table_a.sendToUser("u1", "notice", {"n": 2}) == 0
        yield until(client, seen, lambda m: m["type"] == "notice" and m["data"]["n"] == 2)
        assert [m["data"]["n"] for m in seen if m["type"] == "notice"] == [1, 2]  # in order, once
        assert call_table(server_b).queued_delivered >= 2
        assert int((yield conn_a.call("LLEN", conn_a.key("offline", "user:u1")))) == 0  # taken

        # sendToCall for the call node b holds: False (not here), forwarded, delivered live there.
        assert table_a.sendToCall("c1", "notice", {"n": 10}) is False
        yield until(client, seen, lambda m: m["type"] == "notice" and m["data"]["n"] == 10)
        assert [m.get("callId") for m in seen if m["type"] == "notice" and m["data"]["n"] == 10] == ["c1"]
        assert table_a.sendToCall("nope", "notice", {"n": 11}) is False  # no such call anywhere: not queued
        yield task.deferLater(reactor, 0.3, lambda: None)
        assert int((yield conn_a.call("EXISTS", conn_a.key("offline", "call:nope")))) == 0

        # A user served by no node: the message waits in the queue for their next session_start.
        assert table_a.sendToUser("u2", "notice", {"n": 3}) == 0
        yield task.deferLater(reactor, 0.3, lambda: None)
        assert int((yield conn_a.call("LLEN", conn_a.key("offline", "user:u2")))) == 1
    finally:
        yield conn_a.stopService()
        yield conn_b.stopService()
