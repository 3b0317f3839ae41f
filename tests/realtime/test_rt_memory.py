"""The realtime dialect's parts, deterministic: heartbeat timing, offline store bounds, sniffing, calls in memory."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from txvoice.audio.sniff import sniff_container
from txvoice.dialects.realtime import RealtimeProtocol
from txvoice.errors import ProtocolError
from txvoice.session.appheartbeat import CLOSE_HEARTBEAT_MISSED, AppHeartbeat, HeartbeatConfig
from txvoice.session.offline import IOfflineStore, MemoryOfflineStore
from wsmemory import MemoryClient, memory_server


def beat(config: HeartbeatConfig):
    clock = Clock()
    sent, expired = [], []
    hb = AppHeartbeat(clock, config, lambda seq, cfg: sent.append((clock.seconds(), seq)), expired.append)
    hb.start()
    return clock, hb, sent, expired


def test_heartbeat_closes_after_max_missed_unanswered():
    clock, hb, sent, expired = beat(HeartbeatConfig(interval=30, timeout=60, max_missed=3))
    for _ in range(20):
        clock.advance(30)
        if expired:
            break
    # Beats at 30, 60, 90, ...; the one sent at t is missed at t + 60: the third miss is at 150.
    assert [t for t, _ in sent] == [30, 60, 90, 120]
    assert expired == [3] and clock.seconds() == 150 and not hb.running


def test_answered_heartbeats_never_expire_and_reconfigure_applies():
    clock, hb, sent, expired = beat(HeartbeatConfig(interval=1, timeout=1, max_missed=2))
    for _ in range(50):
        clock.advance(1)
        hb.answered()
    assert not expired and len(sent) == 50
    hb.reconfigure(hb.config.updated({"interval": 5000, "maxMissed": 1}))
    clock.advance(5)
    clock.advance(5)
    assert expired == [1] and sent[-1][0] == 55


def test_disabled_heartbeat_sends_nothing():
    clock, hb, sent, expired = beat(HeartbeatConfig(enabled=False))
    clock.advance(1000)
    assert not sent and not hb.running


@pytest.mark.parametrize("bad", [{"interval": 1}, {"interval": "x"}, {"maxMissed": 0}, {"enabled": "yes"},
                                 {"timeout": True}])
def test_s4_heartbeat_config_is_validated(bad):
    with pytest.raises(ProtocolError):
        HeartbeatConfig().updated(bad)


def test_offline_store_bounds_order_and_single_delivery():
    now = [0.0]
    drops = []
    store = MemoryOfflineStore(lambda: now[0], max_messages=3, max_bytes=10, max_age=60,
                               on_drop=lambda reason, n: drops.append((reason, n)))
    assert IOfflineStore.providedBy(store)
    for i in range(5):
        store.put("call:a", b"%d" % i, False)
    assert store.dropped["count"] == 2 and store.pending("call:a") == 3
    store.put("call:a", b"xxxxxxxx", True)  # over the count (2 goes): 3, 4, xxxxxxxx = 10 bytes, within
    store.put("call:a", b"yy", False)  # over the count (3 goes), then over the bytes (4 goes)
    got = []
    store.take("call:a").addCallback(got.append)
    assert [m.payload for m in got[0]] == [b"xxxxxxxx", b"yy"] and got[0][0].is_binary
    assert store.dropped["count"] == 4 and store.dropped["bytes"] == 1
    store.take("call:a").addCallback(got.append)
    assert got[1] == []  # once
    store.put("call:b", b"old", False)
    now[0] = 61
    store.put("call:b", b"new", False)
    store.take("call:b").addCallback(got.append)
    assert [m.payload for m in got[2]] == [b"new"] and store.dropped["expired"] == 1
    store.put("call:c", b"x" * 11, False)
    assert store.dropped["bytes"] >= 1 and store.pending("call:c") == 0
    assert ("count", 1) in drops and sum(n for _, n in drops) == sum(store.dropped.values())


@pytest.mark.parametrize("head, kind", [(b"\x1a\x45\xdf\xa3\x9f", "webm"), (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
                                        (b"OggS\x00\x02", "ogg"), (b"\x00\x01\x02\x03", None), (b"", None)])
def test_container_sniffing(head, kind):
    assert sniff_container(head) == kind


def realtime_client(server, port=40000) -> MemoryClient:
    client = MemoryClient(server, RealtimeProtocol, subprotocol=None, port=port)
    (hello,) = client.messages()
    assert hello["type"] == "connection_status" and hello["data"]["status"] == "connected"
    return client


def start(client, call="c1", user="u1", **data):
    client.send_json({"type": "session_start", "callId": call, "timestamp": 0,
                      "data": {"userId": user, "callId": call, "authToken": "dev", **data}})
    return client.messages()


def test_user_messages_wait_for_the_user_and_come_after_session_started():
    server = memory_server()
    first = realtime_client(server)
    table = first.protocol.calls
    assert table.sendToUser("u1", "notice", {"n": 1}) == 0  # nobody connected: queued
    table.sendToUser("u1", "notice", {"n": 2})
    got = start(first)
    assert [m["type"] for m in got] == ["connection_status", "notice", "notice"]
    assert [m["data"]["n"] for m in got[1:]] == [1, 2]
    assert table.sendToUser("u1", "notice", {"n": 3}) == 1
    assert first.messages()[0]["data"]["n"] == 3


def test_a_new_connection_takes_the_call_over():
    server = memory_server()
    first = realtime_client(server)
    start(first)
    second = realtime_client(server, port=40001)
    got = start(second)
    assert got[0]["data"]["resumed"] is True
    first_msgs = first.messages()
    assert first_msgs[-1]["data"]["status"] == "taken_over" and first.closes[-1][0] == 4005
    other = realtime_client(server, port=40002)
    refused = start(other, user="u2")
    assert refused[-1]["type"] == "error" and refused[-1]["data"]["code"] == "call_in_use"


def test_realtime_heartbeat_in_memory_closes_with_4004():
    server = memory_server(realtime_heartbeat_interval=10.0, realtime_heartbeat_timeout=10.0,
                           realtime_heartbeat_max_missed=2)
    client = realtime_client(server)
    for _ in range(3):
        server.clock.advance(10)
    assert [m["type"] for m in client.messages()][-1] == "error" and client.closes[-1][0] == CLOSE_HEARTBEAT_MISSED
    assert server.stats.heartbeat_drops == 1


def test_native_heartbeat_is_opt_in():
    off = MemoryClient(memory_server(realtime_heartbeat_interval=1.0))
    off.messages()
    off.server.clock.advance(5)
    assert not [m for m in off.messages() if m["type"] == "heartbeat"]

    server = memory_server(native_heartbeat=True, realtime_heartbeat_interval=1.0, realtime_heartbeat_timeout=1.0,
                           realtime_heartbeat_max_missed=2)
    alive, silent = MemoryClient(server), MemoryClient(server, port=40001)
    alive.messages(), silent.messages()
    for _ in range(5):
        server.clock.advance(1)
        for m in alive.messages():
            if m["type"] == "heartbeat" and m["data"].get("ping"):
                alive.send_json({"type": "heartbeat", "data": {"pong": True}})
    assert not alive.closes
    seen = json_frames(silent)
    assert [m["type"] for m in seen] == ["heartbeat", "heartbeat", "error"]
    assert seen[0]["data"]["ping"] is True and seen[-1]["data"]["code"] == "heartbeat_timeout"
    assert silent.closes and silent.closes[-1][0] == CLOSE_HEARTBEAT_MISSED


def json_frames(client):
    return [json.loads(p) for op, p in client.frames() if op == 1]
