"""
``--processes N``: one server per core on one port (txvoice.service.processes).

Unit tests drive the parent's worker supervision on a fake clock with a fake spawner; the
loopback tests start a real ``twistd txvoice --processes 2`` on 127.0.0.1 and look at which
process holds each accepted connection in /proc.  Only processes these tests start are signalled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, eventAsJSON
from twisted.python.failure import Failure
from websockets.exceptions import ConnectionClosed

from daemons import TWISTD, source_env, start_daemon
from voiceclient import connected
from txvoice.config import VoiceConfig
from txvoice.service.processes import (
    KILL_WAIT,
    STOP_GRACE,
    WORKER_ENV,
    ParentWatchService,
    RestartBackoff,
    ReusePortListeners,
    WorkerProcesses,
    WorkerProtocol,
    parse_tcp_listen,
    process_count,
    worker_environment,
)

# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "description, expected",
    [
        ("tcp:8765:interface=127.0.0.1", (8765, "127.0.0.1", 50, socket.AF_INET)),
        ("tcp:port=0:backlog=128", (0, "", 128, socket.AF_INET)),
        ("tcp:9000:127.0.0.1:200", (9000, "127.0.0.1", 200, socket.AF_INET)),
        (r"tcp:8765:interface=\:\:1", (8765, "::1", 50, socket.AF_INET6)),
        ("tcp6:8765", (8765, "::", 50, socket.AF_INET6)),
        (r"tcp6:8765:64:\:\:1", (8765, "::1", 64, socket.AF_INET6)),
    ],
)
def test_tcp_descriptions_parse(description, expected) -> None:
    spec = parse_tcp_listen(description)
    assert (spec.port, spec.interface, spec.backlog, spec.family) == expected


@pytest.mark.parametrize(
    "description, message",
    [
        ("ssl:8765:privateKey=k.pem", "tcp: or tcp6:"),
        ("unix:/tmp/txvoice.sock", "tcp: or tcp6:"),
        ("systemd:domain=INET:index=0", "tcp: or tcp6:"),
        ("tcp:", "port"),
        ("tcp:http", "integers"),
        ("tcp:8765:mode=666", "unknown parameter"),
    ],
)
def test_other_descriptions_are_refused(description, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tcp_listen(description)


def test_process_count() -> None:
    assert process_count(1) == 1 and process_count(3) == 3
    assert process_count(0) == len(os.sched_getaffinity(0))
    for bad in (-1, 10_000):
        with pytest.raises(ValueError, match="between 0"):
            process_count(bad)


def test_worker_environment_carries_every_setting_and_no_file() -> None:
    config = VoiceConfig(max_connections=7, compression=True, ping_interval=2.5, allowed_origins="https://a,https://b",
                         processes=2)
    env = worker_environment(config, 1, {"PATH": "/bin", "TXVOICE_CONFIG": "/gone.toml", "TXVOICE_MAX_CONNECTIONS": "9"})
    assert env["PATH"] == "/bin" and "TXVOICE_CONFIG" not in env and env[WORKER_ENV] == "1"
    assert VoiceConfig.from_env(env) == config


# ------------------------------------------------------------------------------ restarts, on a fake clock


def test_backoff_doubles_is_bounded_resets_and_gives_up() -> None:
    b = RestartBackoff(initial=1.0, factor=2.0, maximum=30.0, stable_after=30.0, max_failures=9)
    assert [b.next_delay(0.5) for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert b.next_delay(0.5) is None  # the ninth quick failure in a row: given up
    b = RestartBackoff()
    assert [b.next_delay(1.0) for _ in range(3)] == [1, 2, 4]
    assert b.next_delay(31.0) == 1  # it had run long enough: a fresh start


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class Supervised:
    """A WorkerProcesses on a MemoryReactorClock, spawning FakeProcesses (3 processes: 2 workers)."""

    def __init__(self, count: int = 3, shutdown_timeout: float = 5.0) -> None:
        self.reactor = MemoryReactorClock()
        self.listeners = ReusePortListeners(parse_tcp_listen("tcp:0:interface=127.0.0.1"), count)
        self.spawned: list[tuple[int, FakeProcess, WorkerProtocol, int]] = []
        self.events: list[dict] = []
        self.service = WorkerProcesses(self.reactor, VoiceConfig(shutdown_timeout=shutdown_timeout), self.listeners,
                                       site=object(), spawner=self.spawn, publish=self.events.append)

    def spawn(self, protocol: WorkerProtocol, index: int, sock: socket.socket) -> FakeProcess:
        process = FakeProcess(1000 + len(self.spawned))
        protocol.makeConnection(process)
        self.spawned.append((index, process, protocol, sock.fileno()))
        return process

    def latest(self, index: int) -> tuple[FakeProcess, WorkerProtocol]:
        _, process, protocol, _ = [s for s in self.spawned if s[0] == index][-1]
        return process, protocol

    def end(self, index: int, reason: Exception | None = None) -> None:
        _, protocol = self.latest(index)
        protocol.processEnded(Failure(reason or ProcessTerminated(signal=9)))

    def covered(self) -> set[int]:
        return {slot.index for slot in self.service.slots if slot.covering is not None}

    def close(self) -> None:
        self.listeners.close()


@pytest.fixture
def supervised():
    s = Supervised()
    yield s
    s.close()


def test_workers_get_their_own_socket_and_the_parent_covers_until_they_listen(supervised) -> None:
    s = supervised
    s.service.startService()
    assert [(index, fd) for index, _, _, fd in s.spawned] == [(1, s.listeners.sockets[1].fileno()), (2, s.listeners.sockets[2].fileno())]
    ports = {sock.getsockname()[1] for sock in s.listeners.sockets}
    assert len(ports) == 1 and ports != {0}  # one port, picked once
    # Until a worker says it listens, the parent accepts on its socket too.
    assert [fd for fd, _, _ in s.reactor.adoptedPorts] == [s.listeners.sockets[1].fileno(), s.listeners.sockets[2].fileno()]
    assert s.covered() == {1, 2}
    s.latest(1)[1].childDataReceived(4, b"listen")
    assert s.covered() == {1, 2}
    s.latest(1)[1].childDataReceived(4, b"ing\n")
    assert s.covered() == {2}


def test_a_dead_worker_is_restarted_with_backoff_and_covered_meanwhile(supervised) -> None:
    s = supervised
    s.service.startService()
    s.latest(1)[1].childDataReceived(4, b"listening\n")
    s.reactor.advance(100)  # ran long: its first failure waits the initial delay
    s.end(1)
    assert 1 in s.covered() and len(s.spawned) == 2
    s.reactor.advance(0.99)
    assert len(s.spawned) == 2
    s.reactor.advance(0.01)
    assert len(s.spawned) == 3 and s.spawned[-1][0] == 1
    # Quick failures double the delay: 2 s, then 4 s.
    for delay in (2.0, 4.0):
        s.end(1)
        s.reactor.advance(delay - 0.01)
        count = len(s.spawned)
        s.reactor.advance(0.01)
        assert len(s.spawned) == count + 1
    # The other worker was never touched.
    assert [index for index, *_ in s.spawned].count(2) == 1


def test_a_worker_failing_every_time_is_given_up_and_stays_covered() -> None:
    s = Supervised(count=2)
    s.service.slots[0].backoff = RestartBackoff(max_failures=3)
    try:
        s.service.startService()
        for _ in range(2):
            s.end(1)
            s.reactor.advance(29)
        assert len(s.spawned) == 3
        s.end(1)  # the third quick failure in a row
        s.reactor.advance(3600)
        assert len(s.spawned) == 3 and s.service.slots[0].given_up and s.covered() == {1}
    finally:
        s.close()


def test_stop_terms_then_kills_and_waits_boundedly(supervised) -> None:
    s = supervised
    s.service.startService()
    s.end(2)  # one worker is waiting for its restart when the stop comes
    done = s.service.stopService()
    p1, _ = s.latest(1)
    assert p1.signals == ["TERM"] and not done.called
    assert s.covered() == set() and s.listeners.sockets == []  # the parent's copies are closed
    s.reactor.advance(5.0 + STOP_GRACE - 0.01)
    assert p1.signals == ["TERM"]
    s.reactor.advance(0.01)
    assert p1.signals == ["TERM", "KILL"] and not done.called
    s.end(1)
    assert done.called
    s.reactor.advance(3600)
    assert len(s.spawned) == 2  # no restart after the stop, not even the pending one


def test_stop_fires_when_workers_exit_in_time_and_gives_up_after_kill(supervised) -> None:
    s = supervised
    s.service.startService()
    done = s.service.stopService()
    s.end(1, ProcessDone(0))
    assert not done.called
    s.end(2, ProcessDone(0))
    assert done.called and not s.reactor.getDelayedCalls()

    t = Supervised(count=2)
    try:
        t.service.startService()
        done = t.service.stopService()
        t.reactor.advance(5.0 + STOP_GRACE)
        t.reactor.advance(KILL_WAIT - 0.01)
        assert not done.called
        t.reactor.advance(0.01)
        assert done.called and t.latest(1)[0].signals == ["TERM", "KILL"]  # a worker that never ends
    finally:
        t.close()


def test_worker_events_are_relayed_with_the_worker_marked(supervised) -> None:
    s = supervised
    s.service.startService()
    _, protocol = s.latest(2)
    line = eventAsJSON({"log_format": "listening on {port}", "port": 8765, "log_level": LogLevel.info,
                        "log_namespace": "txvoice.network", "log_time": 1.0}).encode() + b"\n"
    protocol.childDataReceived(1, line[:10])
    assert s.events == []
    protocol.childDataReceived(1, line[10:])
    (event,) = s.events
    assert event["worker"] == 2 and event["worker_pid"] == protocol.pid and event["port"] == 8765
    assert event["log_level"] is LogLevel.info and event["log_system"] == "txvoice.network#info worker 2"
    protocol.childDataReceived(1, b"not json\n")
    assert len(s.events) == 1  # logged in this process's own namespace instead


def test_parent_watch_stops_the_worker_when_the_pipe_closes() -> None:
    reactor = MemoryReactorClock()
    reactor.running = True
    r, w = os.pipe()
    try:
        watch = ParentWatchService(reactor, fd=r, signals=False)
        watch.startService()
        os.close(w)
        why = watch._pipe.doRead()
        assert why is not None  # end of file
        watch._pipe.connectionLost(Failure(why))
        assert reactor.hasStopped
    finally:
        os.close(r)


# ------------------------------------------------------------------------------ the real daemon


def health(d) -> dict:
    with urllib.request.urlopen(d.http + "/health", timeout=5) as r:
        return json.load(r)


def processes_seen(d, want: int = 2, timeout: float = 20.0) -> dict[int, int]:
    """``{index: pid}`` from /health (each request is a new connection) until ``want`` are seen."""
    seen: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        p = health(d)["process"]
        seen[p["index"]] = p["pid"]
        time.sleep(0.02)
    return seen


def ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def owner(client: socket.socket, server_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server end of the TCP connection ``client`` (from /proc)."""
    client_port = client.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{server_port:04X}") and fields[2].endswith(f":{client_port:04X}"):
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def recv_json(ws) -> dict:
    while True:
        msg = ws.recv(timeout=10)
        assert isinstance(msg, str)
        obj = json.loads(msg)
        if not (obj["type"] == "status" and obj["data"].get("event_type") in {"vad", "turn_start", "turn_end"}):
            return obj


def call(ws, msg_type: str, data=None) -> dict:
    ws.send(json.dumps({"type": msg_type, "data": data or {}, "message_id": msg_type}))
    return recv_json(ws)


def echo_turn(ws) -> None:
    """One push-to-talk turn through the echo pipeline: the audio comes back, byte for byte."""
    frames = [bytes([i]) * 640 for i in range(25)]
    assert call(ws, "voice_start", {"codec": "pcm_s16le", "sample_rate": 16000})["type"] == "voice_start"
    for f in frames:
        ws.send(f)
    assert call(ws, "voice_end")["data"]["frames"] == len(frames)
    assert recv_json(ws)["type"] == "voice_response"
    got = []
    while len(got) < len(frames):
        m = ws.recv(timeout=10)
        if isinstance(m, bytes):
            got.append(m)
    assert got == frames


@pytest.fixture
def two(tmp_path):
    d = start_daemon(tmp_path, "--processes", "2", "--shutdown-timeout", "3")
    try:
        seen = processes_seen(d)
        assert set(seen) == {0, 1}, f"only {seen} answered /health:\n{d.log()}"
        assert seen[0] == d.proc.pid and ppid(seen[1]) == d.proc.pid
        yield d, seen
    finally:
        worker = seen.get(1) if "seen" in locals() else None
        d.stop()
        # Belt and braces: never leave a worker of ours behind (only ever our own daemon's child).
        if worker and alive(worker) and ppid(worker) in (d.proc.pid, 1):
            os.kill(worker, signal.SIGKILL)


def test_two_processes_serve_sessions_and_audio_on_one_port(two) -> None:
    d, seen = two
    pids = [seen[0], seen[1]]
    clients = [connected(d.url, subprotocols=["txvoice.v1"], open_timeout=5, close_timeout=3, max_size=None)
               for _ in range(24)]
    try:
        owners = [owner(ws.socket, d.port, pids) for ws in clients]
        assert None not in owners
        count = {pid: owners.count(pid) for pid in pids}
        assert min(count.values()) >= 3, count  # SO_REUSEPORT spreads them (P(< 3 of 24) ~ 2e-5)
        for ws in clients:
            assert recv_json(ws)["type"] == "connect"
        # Audio end to end on a session of each process.
        for pid in pids:
            echo_turn(clients[owners.index(pid)])
        # Each process counts its own sessions (/health is answered by the one that accepted it).
        for _ in range(20):
            h = health(d)
            assert h["active_sessions"] == count[h["process"]["pid"]]
    finally:
        for ws in clients:
            ws.close()
    log = d.log()
    assert "worker 1 (pid" in log and "is listening" in log
    assert "txvoice listening" in log.split("worker 1 started")[1]  # the worker's own events, relayed


def test_a_killed_worker_is_restarted(two) -> None:
    d, seen = two
    old = seen[1]
    assert ppid(old) == d.proc.pid  # ours: a child of the daemon we started
    os.kill(old, signal.SIGKILL)
    assert wait_gone(old, 5)
    deadline = time.monotonic() + 20
    new = None
    while time.monotonic() < deadline:
        p = health(d)["process"]  # meanwhile the parent answers for the dead worker's socket too
        if p["index"] == 1 and p["pid"] != old:
            new = p["pid"]
            break
        time.sleep(0.05)
    assert new is not None and ppid(new) == d.proc.pid, d.log()
    assert "ended after" in d.log() and "starting worker 1 again in 1.0 s" in d.log()


def test_sigterm_on_the_parent_stops_every_worker_gracefully(two) -> None:
    d, seen = two
    worker = seen[1]
    clients = [connected(d.url, subprotocols=["txvoice.v1"], open_timeout=5, close_timeout=3) for _ in range(12)]
    on_worker = [ws for ws in clients if owner(ws.socket, d.port, [worker]) == worker]
    assert on_worker
    ws = on_worker[0]
    recv_json(ws)
    assert d.stop() in (0, -15)
    assert not alive(worker)  # the parent waited for it
    # The worker's session was told and closed with 1001, as in a single process.
    assert recv_json(ws)["data"]["reason"] == "server_shutdown"
    with pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=5)
    assert info.value.rcvd.code == 1001
    for c in clients:
        c.close()
    log = d.log()
    assert "stopping worker 1: received SIGTERM" in log and "worker 1 (pid" in log and "stopped: exited normally" in log
    assert "Traceback" not in log


def test_a_worker_stops_when_its_parent_dies(two) -> None:
    d, seen = two
    worker = seen[1]
    d.proc.kill()  # SIGKILL to our own daemon: no chance to stop its workers
    d.proc.wait(5)
    assert wait_gone(worker, 10), "the worker outlived its parent"


@pytest.mark.parametrize("listen", ["unix:/tmp/txvoice-test.sock", "ssl:0:privateKey=k.pem"])
def test_processes_need_a_tcp_listener(tmp_path, listen) -> None:
    out = subprocess.run([TWISTD, "-n", "--pidfile=", "txvoice", "--pipeline", "echo", "--processes", "2",
                          "--listen", listen], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=source_env())
    assert out.returncode != 0
    assert "needs a tcp: or tcp6: --listen description" in out.stdout + out.stderr


def test_one_process_reports_itself(daemon) -> None:
    p = health(daemon)["process"]
    assert p == {"pid": daemon.proc.pid, "index": 0, "count": 1}
