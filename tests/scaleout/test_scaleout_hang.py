"""
A Redis that hangs (SIGSTOP: its connections stay open, nothing answers), then goes on: commands
fail at once once it has not answered for STALLED seconds instead of piling up for --redis-timeout,
and the connection comes back.  txredisapi alone stopped reconnecting for good here: the SELECT of
a reconnection timed out against the hung server and it called stopTrying().
"""

from __future__ import annotations

import os
import signal
import time

import pytest_twisted
from twisted.internet import reactor, task

from inprocess import connected
from txvoice.scaleout.connection import STALLED


@pytest_twisted.inlineCallbacks
def test_a_hung_redis_fails_commands_fast_and_is_reconnected_when_it_goes_on(redis_server):
    conn = yield connected(redis_server.url, "hang:")
    outcomes: dict[str, int] = {}

    def count(kind: str) -> None:
        outcomes[kind] = outcomes.get(kind, 0) + 1

    def command() -> None:
        d = conn.call("INCR", conn.key("n"))
        d.addCallbacks(lambda _: count("ok"), lambda f: count(f.type.__name__))

    sender = task.LoopingCall(command)
    sender.start(0.01)  # 100 commands a second
    pid = redis_server.proc.pid
    try:
        yield task.deferLater(reactor, 0.5, lambda: None)
        assert set(outcomes) == {"ok"}
        outcomes.clear()
        os.kill(pid, signal.SIGSTOP)
        yield task.deferLater(reactor, 4.0, lambda: None)  # past --redis-timeout (2 s): the connections are dropped
        hung = dict(outcomes)
        assert conn.reason in ("redis_not_answering", "redis_down")
        # What was sent in the first STALLED seconds timed out; everything after failed at once.
        assert hung.get("TimeoutError", 0) <= 100 * (STALLED + 0.15), hung
        assert hung.get("RedisNotAnswering", 0) + hung.get("RedisUnavailable", 0) > 250, hung
        os.kill(pid, signal.SIGCONT)
        pid = 0
        for _ in range(100):  # reconnection backoff: 0.2 s growing to 5 s
            if conn.up:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        assert conn.up, f"not reconnected after Redis went on: {conn.reason}"
        outcomes.clear()
        yield task.deferLater(reactor, 0.3, lambda: None)
        assert outcomes.get("ok", 0) > 20, outcomes
        print(f"\nhung 4 s at 100 commands/s: {hung}; after: {outcomes}")
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)
        sender.stop()
        yield conn.stopService()



@pytest_twisted.inlineCallbacks
def test_a_node_whose_own_reactor_was_held_does_not_take_redis_for_hung(redis_server):
    """Answers that wait unread while this process holds its reactor past STALLED are not a stall."""
    conn = yield connected(redis_server.url, "held:")
    failures: list[str] = []

    def command() -> None:
        conn.call("INCR", conn.key("n")).addErrback(lambda f: failures.append(f.type.__name__))

    sender = task.LoopingCall(command)
    sender.start(0.01)
    try:
        def held(_: object) -> None:  # in an I/O callback (a reply): what arrives meanwhile is read a poll later
            command()  # in flight, its answer on the way
            time.sleep(3 * STALLED)  # the reactor held (a test's stand-in for a stall of the node's own)

        for _ in range(3):
            yield task.deferLater(reactor, 0.2, lambda: None)
            yield conn.call("PING").addCallback(held)
        yield task.deferLater(reactor, 0.5, lambda: None)
        assert failures == [] and conn.up
    finally:
        sender.stop()
        yield conn.stopService()
