"""
The client against the real daemon: reconnection after the server process is SIGKILLed and
restarted on the same port, and session resume after a dropped connection.

What "exactly once" can honestly mean here.  The server keeps its resume state (and so the ids of
the reliable messages it handled) in its process memory:

- while the server process lives, a reliable message re-sent after a reconnect is recognised
  (the session is resumed) and acknowledged as a duplicate without being handled again: exactly
  once (``test_resume_after_a_drop_is_exactly_once``);
- a message acknowledged before the server died is never sent again, and a message queued while
  the server was down is sent once after the reconnect: exactly once;
- a message in flight when the server died is re-sent to the new process, which cannot know
  whether the dead one handled it: at least once.  It is handled twice only if the old process
  handled it and its ack was lost with it.  The in-flight phase below checks exactly that bound.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

from daemons import TWISTD, free_port, source_env
from txvoice.client import Backoff, ConnectionState, VoiceClient

pytestmark = pytest.mark.slow


def launch(tmp_path: Path, port: int, tag: str) -> subprocess.Popen:
    """Start ``twistd -n txvoice`` (echo pipeline) on 127.0.0.1:``port`` without waiting for it."""
    log = tmp_path / f"twistd-{tag}.log"
    cmd = [TWISTD, "--nodaemon", "--pidfile=", "--logfile", str(log), "txvoice",
           "--listen", f"tcp:{port}:interface=127.0.0.1", "--pipeline", "echo"]
    env = source_env()
    env.pop("TXVOICE_LISTEN", None)
    return subprocess.Popen(cmd, env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            kill(proc)


def ping(seq: int) -> dict:
    return {"type": "ping", "data": {"seq": seq}}


def within(d, seconds: float, what: str):
    return d.addTimeout(seconds, reactor, onTimeoutCancel=lambda *_: pytest.fail(f"timed out: {what}"))


@pytest_twisted.inlineCallbacks
def test_reliable_messages_across_a_server_kill_and_restart(tmp_path: Path) -> None:
    port = free_port()
    servers = [launch(tmp_path, port, "1")]
    client = VoiceClient(f"ws://127.0.0.1:{port}/", heartbeat_interval=5.0,
                         backoff=Backoff(base=0.1, factor=2.0, max_delay=0.5, jitter=0.1, max_attempts=80))
    pongs: list[tuple[str, int]] = []  # (session that answered, seq)
    client.on("message:pong", lambda env: pongs.append((client.session_id, env["data"]["seq"])))
    try:
        yield within(client.connect(), 60, "first connection")  # retries while the daemon starts (20 s was too short once, under load)
        first_session = client.session_id

        # A: acknowledged before the kill.
        acks = yield gatherResults([client.send(ping(i), reliable=True) for i in range(10)])
        assert [a["duplicate"] for a in acks] == [False] * 10
        assert pongs == [(first_session, i) for i in range(10)]
        assert client.queue.reliable_pending == 0

        # The server dies without a word.
        kill(servers[0])
        yield within(client.when(ConnectionState.RECONNECTING), 10, "noticing the kill")

        # B: queued while the server is down; best-effort messages are dropped.
        queued = [client.send(ping(i), reliable=True) for i in range(10, 20)]
        best_effort = yield gatherResults([client.send(ping(100 + i)) for i in range(5)])
        assert best_effort == [False] * 5
        yield deferLater(reactor, 0.3, lambda: None)  # a few refused attempts
        servers.append(launch(tmp_path, port, "2"))
        yield within(client.whenConnected(), 30, "reconnecting to the restarted server")
        second_session = client.session_id
        assert client.resumed is False  # the resume state died with the old process
        acks = yield within(gatherResults(queued), 10, "acks of the queued messages")
        assert [a["duplicate"] for a in acks] == [False] * 10
        after_restart = [seq for session, seq in pongs if session == second_session]
        assert after_restart == list(range(10, 20))  # each exactly once, in order; nothing from A again
        assert not any(seq >= 100 for _, seq in pongs)

        # C: in flight when the server dies.  Twenty pings go out; on the answer to the last of
        # them the server is killed, and forty more are written at once, before the client can
        # notice the dead connection.  (A burst stays under the server's rate-limit bucket.)
        acked_in: dict[int, str] = {}
        burst = list(range(200, 260))
        sends = []

        def send(seq: int) -> None:
            d = client.send(ping(seq), reliable=True)
            d.addCallback(lambda ack, seq=seq: acked_in.setdefault(seq, client.session_id))
            sends.append(d)

        def on_pong(env: dict) -> None:
            if env["data"]["seq"] == 219 and servers[1].poll() is None:
                kill(servers[1])
                for seq in burst[20:]:
                    send(seq)

        off = client.on("message:pong", on_pong)
        for seq in burst[:20]:
            send(seq)
        yield within(client.when(ConnectionState.RECONNECTING), 10, "noticing the second kill")
        off()
        servers.append(launch(tmp_path, port, "3"))
        yield within(gatherResults(sends), 40, "every burst message acknowledged")
        third_session = client.session_id
        assert third_session not in (first_session, second_session)

        old_pongs = [seq for session, seq in pongs if session == second_session and seq >= 200]
        new_pongs = [seq for session, seq in pongs if session == third_session]
        acked_before = {seq for seq, session in acked_in.items() if session == second_session}
        assert old_pongs == sorted(old_pongs) and new_pongs == sorted(new_pongs)
        assert acked_before and len(acked_before) < len(burst)
        # Everything not acknowledged by the dead process was sent again, once, in order ...
        assert new_pongs == [seq for seq in burst if seq not in acked_before]
        # ... and nothing it had acknowledged.
        assert not acked_before & set(new_pongs)
        # At least once: a message answered twice is one the dead process handled but whose ack was lost.
        assert set(old_pongs) & set(new_pongs) <= set(old_pongs) - acked_before
        assert set(old_pongs) | set(new_pongs) == set(burst)
        assert client.stats.acks == 10 + 10 + len(burst)
    finally:
        yield client.close()
        for proc in servers:
            stop(proc)


@pytest_twisted.inlineCallbacks
def test_resume_after_a_drop_is_exactly_once(daemon) -> None:
    client = VoiceClient(daemon.url, backoff=Backoff(base=0.1, jitter=0.0))
    pongs: list[int] = []
    dropped: list[int] = []

    def on_pong(env: dict) -> None:
        seq = env["data"]["seq"]
        pongs.append(seq)
        if seq == 3 and not dropped:
            dropped.append(seq)
            client.reconnect()  # the ack right behind this pong is lost with the connection

    client.on("message:pong", on_pong)
    try:
        yield within(client.connect(), 10, "connecting")
        conversation = yield client.start_conversation(metadata={"topic": "resume"})
        first_session = client.session_id
        acks = []
        for seq in range(6):
            ack = yield within(client.send(ping(seq), reliable=True), 10, f"ack of {seq}")
            acks.append(ack)
        assert pongs == [0, 1, 2, 3, 4, 5]  # ping 3 was re-sent, but handled only once
        assert [a["duplicate"] for a in acks] == [False, False, False, True, False, False]
        assert client.resumed is True and client.stats.resumes == 1
        assert client.session_id != first_session
        state = yield client.request("conversation_state")
        assert state["data"]["conversation_id"] == conversation and state["data"]["state"] == "active"
    finally:
        yield client.close()
