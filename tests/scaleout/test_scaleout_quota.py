"""
``--session-tokens-per-user`` across the cluster: counted in a real Redis, so the limit holds
whatever node issues a user's tokens; places come back when a token is used (on any node) or
expires (a killed node's too); with Redis unreachable each node counts alone, without waiting.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from cluster import bearer, http, start_nodes
from test_scaleout_offline import connected
from txvoice.scaleout.quota import RedisTokenQuota
from voiceclient import VoiceClient

pytestmark = pytest.mark.slow


def issue(node, sub: str, tenant: str | None = None) -> tuple[int, dict]:
    claims = {"tenant": tenant} if tenant else {}
    return http("POST", f"http://127.0.0.1:{node.port}/auth/websocket", token=bearer(sub, **claims))


def test_tokens_per_user_are_limited_across_two_nodes(tmp_path, redis_server):
    a, b = start_nodes(tmp_path, redis_server.url, 2, "--session-tokens-per-user", "3")
    try:
        tokens = []
        for node in (a, b, a):
            status, body = issue(node, "quota-user")
            assert status == 200, body
            tokens.append(body["token"])
        for node in (a, b):  # the fourth is refused on both nodes (each issued fewer than 3 itself)
            status, body = issue(node, "quota-user")
            assert status == 429 and body["error"]["code"] == "too_many_session_tokens", body
        # Another user, and the same name in another tenant, have their own allowance.
        assert issue(b, "someone-else")[0] == 200
        assert issue(b, "quota-user", tenant="other-tenant")[0] == 200
        # A token issued by A and used on B gives its place back, cluster-wide.
        client = VoiceClient(f"{b.url}?token={tokens[0]}")
        try:
            assert client.greeting["data"]["authenticated"] is True
        finally:
            client.close()
        status, body = issue(a, "quota-user")
        assert status == 200, body
        assert issue(b, "quota-user")[0] == 429
    finally:
        a.stop()
        b.stop()


@pytest_twisted.inlineCallbacks
def test_redis_quota_counts_across_connections_and_ages_out(redis_server):
    one = yield connected(redis_server.url, "q:")
    two = yield connected(redis_server.url, "q:")
    try:
        qa, qb = RedisTokenQuota(one), RedisTokenQuota(two)
        who = ("u", "t")
        now = time.time()
        assert (yield qa.reserve(who, "d1", 0.4, 2, now)) is None
        assert (yield qb.reserve(who, "d2", 30, 2, now)) is None
        retry = yield qa.reserve(who, "d3", 30, 2, now)
        assert retry is not None and 0 < retry <= 0.4  # the soonest of the two expires first
        yield task.deferLater(reactor, 0.5, lambda: None)  # d1 ages out (as a killed node's tokens do)
        assert (yield qb.reserve(who, "d3", 30, 2, time.time())) is None
        assert (yield qa.reserve(who, "d4", 30, 2, time.time())) is not None
        qa.release(who, "d2")  # redeemed: the place is free on every node
        yield task.deferLater(reactor, 0.1, lambda: None)
        assert (yield qa.reserve(who, "d4", 30, 2, time.time())) is None
        assert qa.fallbacks == qb.fallbacks == 0
    finally:
        yield one.stopService()
        yield two.stopService()


@pytest_twisted.inlineCallbacks
def test_redis_down_falls_back_to_this_nodes_count_without_waiting(redis_server):
    conn = yield connected(redis_server.url, "qd:")
    try:
        quota = RedisTokenQuota(conn)
        who = ("v", None)
        assert (yield quota.reserve(who, "x1", 30, 2, time.time())) is None  # counted in Redis and here
        redis_server.stop()
        for _ in range(100):
            if conn._factory.size == 0:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        t0 = time.monotonic()
        assert (yield quota.reserve(who, "x2", 30, 2, time.time())) is None  # this node's count: 1 < 2
        refused = yield quota.reserve(who, "x3", 30, 2, time.time())
        assert refused is not None and refused > 29
        assert time.monotonic() - t0 < 0.5 and quota.fallbacks == 2
        quota.release(who, "x1")
        assert (yield quota.reserve(who, "x3", 30, 2, time.time())) is None
    finally:
        yield conn.stopService()
        redis_server.start()


def test_a_killed_nodes_tokens_stop_counting_when_they_expire(tmp_path, redis_server):
    import signal

    a, b = start_nodes(tmp_path, redis_server.url, 2, "--session-tokens-per-user", "2", "--session-token-ttl", "2")
    try:
        assert [issue(a, "kill-user")[0] for _ in range(2)] == [200, 200]
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(5)
        status, body = issue(b, "kill-user")
        assert status == 429 and body["error"]["code"] == "too_many_session_tokens", body  # A's still count
        time.sleep(2.2)
        assert issue(b, "kill-user")[0] == 200  # ... until they expire
    finally:
        a.stop()
        b.stop()
