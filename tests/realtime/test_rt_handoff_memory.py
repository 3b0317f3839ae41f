"""
S4 calls handed between two nodes, deterministic: two in-memory servers (fake clocks, inline audio
work) sharing one offline store and an in-process :class:`ICallStore` that plays the part of
Redis.  The Redis store itself is tested against a real Redis in tests/scaleout/test_scaleout_calls.py.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from signal_speech import speak
from txvoice.dialects.realtime import RealtimeProtocol, call_table
from txvoice.session.calls import CallInUse, CallRecord, ICallStore, MemoryCallStore, TakeoverHandler
from txvoice.session.offline import MemoryOfflineStore
from wsmemory import MemoryClient, memory_server


class Cluster:
    """What the nodes share: call records by id, and each node's store (its pub/sub channel)."""

    def __init__(self) -> None:
        self.records: dict[str, CallRecord] = {}
        self.nodes: dict[str, "ClusterCallStore"] = {}


@implementer(ICallStore)
class ClusterCallStore:
    handoff_timeout = 10.0

    def __init__(self, cluster: Cluster, node_id: str) -> None:
        self.cluster, self.node_id = cluster, node_id
        self.handler: TakeoverHandler | None = None
        self.queued_handler: Callable[[str], None] | None = None
        cluster.nodes[node_id] = self

    def claim(self, record: CallRecord) -> defer.Deferred[CallRecord | None]:
        previous = self.cluster.records.get(record.call_id)
        if previous is not None and (previous.user_id, previous.tenant) != (record.user_id, record.tenant):
            return defer.fail(CallInUse("this call belongs to another user"))
        self.cluster.records[record.call_id] = record
        return defer.succeed(previous)

    def handoff(self, previous: CallRecord, epoch: str) -> defer.Deferred[bool]:
        other = self.cluster.nodes.get(previous.node)
        if other is None or other.handler is None:
            return defer.succeed(False)
        return other.handler(previous.call_id, self.node_id).addCallback(lambda _: True)

    def forget(self, call_id: str, epoch: str) -> defer.Deferred[bool]:
        record = self.cluster.records.get(call_id)
        if record is not None and record.epoch == epoch:
            del self.cluster.records[call_id]
            return defer.succeed(True)
        return defer.succeed(False)

    def serve(self, handler: TakeoverHandler) -> None:
        self.handler = handler

    def queued(self, address: str) -> None:
        for name, other in list(self.cluster.nodes.items()):
            if name != self.node_id and other.queued_handler is not None:
                other.queued_handler(address)

    def on_queued(self, handler: Callable[[str], None]) -> None:
        self.queued_handler = handler

    def holder(self, call_id: str) -> defer.Deferred[str | None]:
        record = self.cluster.records.get(call_id)
        return defer.succeed(record.node if record is not None else None)


def node(cluster: Cluster, name: str, offline: MemoryOfflineStore) -> Any:
    server = memory_server()
    server.call_store = ClusterCallStore(cluster, name)
    server.offline_store = offline
    call_table(server)  # made now, with the cluster's stores
    return server


def connect(server, port: int) -> MemoryClient:
    client = MemoryClient(server, RealtimeProtocol, subprotocol=None, port=port)
    client.messages()  # connection_status connected
    return client


def start(client: MemoryClient, call: str = "c1", user: str = "u1") -> None:
    client.send_json({"type": "session_start", "callId": call, "timestamp": 0,
                      "data": {"userId": user, "callId": call, "authToken": "dev"}})


def kinds(frames: list[tuple[int, bytes]]) -> list[str]:
    out = []
    for opcode, payload in frames:
        if opcode == 0x2:
            out.append("binary")
        elif opcode == 0x1:
            m = json.loads(payload)
            if m["type"] == "audio_response":
                out.append("audio_" + m["data"]["status"])
            elif m["type"] != "heartbeat":
                out.append(f"{m['type']}:{m['data'].get('status')}")
    return out


def settle(*servers, seconds: float = 1.0, step: float = 0.01) -> None:
    for _ in range(int(seconds / step)):
        for server in servers:
            server.clock.advance(step)


def test_stores_provide_the_interface():
    assert verifyObject(ICallStore, MemoryCallStore())
    assert verifyObject(ICallStore, ClusterCallStore(Cluster(), "x"))


def test_a_call_dropped_mid_reply_on_a_resumes_on_b_with_the_whole_reply_once():
    cluster, offline = Cluster(), MemoryOfflineStore(lambda: 0.0)
    a, b = node(cluster, "A", offline), node(cluster, "B", offline)
    first = connect(a, 40000)
    start(first)
    assert first.messages()[0]["data"]["resumed"] is False
    assert cluster.records["c1"].node == "A"
    first.send_binary(speak("what time is it", 16000, pad_ms=(200, 0)).tobytes())  # the turn stays open
    assert "processing_status:speech_start" in kinds(first.frames())
    first.protocol.connectionLost(Failure(ConnectionDone()))  # dropped: the turn ends, its reply is paced offline
    a.clock.advance(0.05)  # a little of the reply is out (into the queue) ...
    second = connect(b, 40001)
    start(second)  # ... when the caller is back, on B
    assert second.frames() == []  # B waits for A to let the call go
    settle(a, seconds=0.2)  # A sends the rest unpaced, then lets go (within a few of its polls)
    got = second.frames()
    names = kinds(got)
    started = json.loads(got[0][1])
    assert started["data"]["status"] == "session_started" and started["data"]["resumed"] is True, started
    assert started["data"]["queued"] == len(got) - 1, (started, names)
    assert names.count("audio_start") == 1 and names.count("audio_end") == 1, names
    assert names.index("audio_start") < names.index("binary") < names.index("audio_end"), names
    end = json.loads(next(p for op, p in got if op == 0x1 and b'"status":"end"' in p))
    audio = b"".join(p for op, p in got if op == 0x2)
    assert end["data"]["cancelled"] is False and len(audio) == int(end["data"]["duration_ms"] * 32), end
    assert call_table(a).get("c1") is None and "c1" not in call_table(a).calls
    assert call_table(b).get("c1") is not None and cluster.records["c1"].node == "B"
    assert call_table(a).handed_over == 1 and call_table(b).resumed_from_other_nodes == 1
    # Once: back on A, nothing is left; B's live connection is taken over with 4005.
    third = connect(a, 40002)
    start(third)
    settle(b, seconds=0.2)
    again = third.messages()
    assert again[0]["data"]["resumed"] is True and again[0]["data"]["queued"] == 0, again
    assert kinds(second.frames())[-1] == "connection_status:taken_over" and second.closes[-1][0] == 4005
    # Ended on A: the record goes.
    third.send_json({"type": "session_end", "callId": "c1", "timestamp": 0, "data": {}})
    assert "c1" not in cluster.records


def test_another_users_call_is_refused_across_nodes():
    cluster, offline = Cluster(), MemoryOfflineStore(lambda: 0.0)
    a, b = node(cluster, "A", offline), node(cluster, "B", offline)
    owner = connect(a, 40000)
    start(owner)
    owner.messages()
    intruder = connect(b, 40001)
    start(intruder, user="u2")
    refused = intruder.messages()
    assert refused[-1]["type"] == "error" and refused[-1]["data"]["code"] == "call_in_use"
    assert cluster.records["c1"].node == "A" and owner.closes == []


def test_a_node_that_is_gone_is_not_waited_for():
    cluster, offline = Cluster(), MemoryOfflineStore(lambda: 0.0)
    a, b = node(cluster, "A", offline), node(cluster, "B", offline)
    first = connect(a, 40000)
    start(first)
    first.messages()
    offline.put("call:c1", b'{"type":"note"}', False)
    del cluster.nodes["A"]  # killed
    second = connect(b, 40001)
    start(second)
    got = second.messages()
    assert got[0]["data"]["resumed"] is True and got[0]["data"]["queued"] == 1 and got[1]["type"] == "note"
