"""Heartbeat, reaper and graceful shutdown, driven by a fake clock."""

from __future__ import annotations

import json

import pytest

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from txvoice.config import VoiceConfig
from txvoice.service.heartbeat import HeartbeatService
from txvoice.service.reaper import ReaperService
from txvoice.service.voice import STOP_LIMIT_EXTRA, VoiceService, makeVoiceService
from wsmemory import MemoryClient, client_frame, memory_server

PING, PONG, CLOSE = 0x9, 0xA, 0x8


def lose(client: MemoryClient) -> None:
    """What the reactor does once the transport is closed."""
    client.protocol.connectionLost(Failure(ConnectionDone()))


def test_heartbeat_pings_and_drops_a_silent_peer() -> None:
    server = memory_server(ping_interval=30, ping_timeout=10, heartbeat_max_missed=1)
    quiet, lively = MemoryClient(server, port=1), MemoryClient(server, port=2)
    quiet.frames(), lively.frames()
    heartbeat = HeartbeatService(server)
    heartbeat.startService()
    clock = server.clock
    for _ in range(6):
        clock.advance(5)  # 30 s: due for a ping
    assert [op for op, _ in quiet.frames()] == [PING]
    (op, payload), = lively.frames()
    assert op == PING
    lively.protocol.dataReceived(client_frame(PONG, payload))
    clock.advance(5)
    assert not quiet.transport.disconnecting
    clock.advance(5)
    clock.advance(1)  # 11 s without a pong
    clock.advance(5)
    assert quiet.transport.disconnecting or quiet.transport.disconnected
    assert server.stats.heartbeat_drops == 1
    assert not lively.transport.disconnecting
    heartbeat.stopService()
    assert not clock.getDelayedCalls()


def test_a_peer_is_dropped_after_max_missed_pings() -> None:
    server = memory_server(ping_interval=30, ping_timeout=10, heartbeat_max_missed=3)
    client = MemoryClient(server)
    client.frames()
    heartbeat = HeartbeatService(server)
    heartbeat.startService()
    pings = 0
    for _ in range(18):  # 90 s: first ping at 30 s, then one per missed timeout (~15 s each)
        server.clock.advance(5)
        pings += sum(1 for op, _ in client.frames() if op == PING)
        if client.transport.disconnecting or client.transport.disconnected:
            break
    assert pings == 3
    assert client.transport.disconnecting or client.transport.disconnected
    assert server.stats.heartbeat_drops == 1
    heartbeat.stopService()


def test_an_application_heartbeat_keeps_a_peer_alive() -> None:
    server = memory_server(ping_interval=30, ping_timeout=10, heartbeat_max_missed=1)
    client = MemoryClient(server)
    client.frames()
    heartbeat = HeartbeatService(server)
    heartbeat.startService()
    answers = 0
    for _ in range(24):  # two minutes, answering with S4's application heartbeat only
        server.clock.advance(5)
        frames = client.frames()
        answers += sum(1 for op, p in frames if op == 0x1 and b'"type":"heartbeat"' in p)
        if any(op == PING for op, _ in frames):
            client.send_json({"type": "heartbeat", "message_id": "h"})
    assert not (client.transport.disconnecting or client.transport.disconnected)
    assert answers >= 3
    heartbeat.stopService()


def test_reaper_closes_idle_sessions_only() -> None:
    server = memory_server(idle_timeout=60, reaper_interval=5)
    idle, busy = MemoryClient(server, port=1), MemoryClient(server, port=2)
    idle.frames(), busy.frames()
    reaper = ReaperService(server)
    reaper.startService()
    for _ in range(13):  # 65 s, the busy one talks every 5 s
        server.clock.advance(5)
        busy.send_json({"type": "ping"})
    idle.frames(), busy.frames()
    assert idle.closes == [(4001, "idle timeout")]
    assert busy.closes == []
    assert server.stats.reaped == {"idle": 1}
    reaper.stopService()


def test_reaper_expires_old_sessions() -> None:
    server = memory_server(idle_timeout=0, max_session_age=20, reaper_interval=5)
    client = MemoryClient(server)
    reaper = ReaperService(server)
    reaper.startService()
    for _ in range(5):
        server.clock.advance(5)
        client.send_json({"type": "ping"})
    client.frames()
    assert client.closes == [(4002, "session expired")]


def running_service(sessions: int) -> tuple[MemoryReactorClock, VoiceService, list[MemoryClient]]:
    """A started server (shutdown_timeout 5 s) on a fake clock with ``sessions`` open sessions."""
    clock = MemoryReactorClock()
    service = makeVoiceService(
        VoiceConfig(listen="tcp:0", audio_threads=0, open_handshake_timeout=0, shutdown_timeout=5, gc_freeze=False),
        reactor=clock,
    )
    service.startService()
    clients = [MemoryClient(service.server, port=p) for p in range(1, sessions + 1)]
    for c in clients:
        c.frames()
    return clock, service, clients


def test_stop_sends_1001_to_every_session_and_waits() -> None:
    clock, service, clients = running_service(3)
    stopped = []
    service.stopService().addCallback(stopped.append)
    for c in clients:
        msgs = [json.loads(p) for op, p in c.frames() if op == 0x1]
        assert msgs[-1]["type"] == "disconnect" and msgs[-1]["data"]["reason"] == "server_shutdown"
        assert c.closes == [(1001, "server shutting down")]
    # Two answer the close handshake; the third never does and is dropped after shutdown_timeout.
    for c in clients[:2]:
        c.protocol.dataReceived(client_frame(CLOSE, b"\x03\xe9"))
        lose(c)
    assert not stopped
    clock.advance(5)
    assert clients[2].transport.disconnecting or clients[2].transport.disconnected
    lose(clients[2])
    assert stopped
    assert len(service.server.registry) == 0
    assert service.server.shutting_down


def test_stop_finishes_when_a_session_teardown_raises() -> None:
    # A dialect whose teardown fails must not keep the graceful stop waiting for ever.
    clock, service, clients = running_service(2)

    def broken_teardown() -> None:
        raise RuntimeError("teardown bug")

    clients[0].protocol.sessionClosing = broken_teardown
    stopped = []
    service.stopService().addCallback(stopped.append)
    for c in clients:
        c.protocol.dataReceived(client_frame(CLOSE, b"\x03\xe9"))
    with pytest.raises(RuntimeError):
        lose(clients[0])  # on a real reactor, Twisted logs it
    lose(clients[1])
    assert stopped
    assert len(service.server.registry) == 0


def test_a_stop_that_cannot_finish_gives_up_and_says_where() -> None:
    # A connection that is dropped but never reported lost (a bug somewhere): SIGTERM still ends
    # the daemon, shutdown_timeout + STOP_LIMIT_EXTRA after it came, with an error naming the step.
    clock, service, (client,) = running_service(1)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        stopped = []
        service.stopService().addCallback(stopped.append)
        clock.advance(5)
        assert client.transport.disconnecting or client.transport.disconnected  # dropped...
        clock.advance(STOP_LIMIT_EXTRA - 0.1)
        assert not stopped  # ...but never lost
        clock.advance(0.1)
        assert stopped
    finally:
        globalLogPublisher.removeObserver(events.append)
    errors = [e for e in events if e.get("log_level") == LogLevel.error and e.get("log_namespace") == "txvoice.service"]
    assert [formatEvent(e) for e in errors] == ["still closing sessions 20 s after the stop began: stopping without it"]
    assert not [e for e in events if e.get("log_format") == "txvoice stopped"]
