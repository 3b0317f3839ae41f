"""VoiceClient against an in-memory server, on a Clock: states, queue, reliable re-sends, resume, heartbeat."""

from __future__ import annotations

from twisted.python.failure import Failure

from client_fakes import make_client, open_client
from txvoice.client import (
    Backoff,
    ClientClosed,
    ConnectionFailed,
    ConnectionState,
    NotConnected,
    RequestTimeout,
    ServerError,
)


def test_states_open_only_after_the_greeting() -> None:
    client, endpoint, clock = make_client(resume=False)
    states: list[str] = []
    client.on("state", lambda old, new: states.append(new.value))
    opened: list = []
    client.connect().addCallback(opened.append)
    link = endpoint.accept().open()
    assert client.state is ConnectionState.CONNECTING and not opened
    link.greet(token="t1", session="s1")
    assert client.state is ConnectionState.OPEN and opened == [client]
    assert client.session_id == "s1" and client.resume_token == "t1"
    link.drop()
    clock.advance(0)
    assert client.state is ConnectionState.RECONNECTING
    clock.advance(1.0)
    endpoint.accept().open().greet(token="t2")
    assert states == ["connecting", "open", "reconnecting", "open"]


def test_reliable_messages_survive_a_drop_and_keep_their_ids() -> None:
    client, endpoint, clock, link = open_client(resume=False)
    acked: list = []
    d1 = client.send({"type": "ping", "data": {"seq": 1}}, reliable=True)
    d2 = client.send({"type": "ping", "data": {"seq": 2}}, reliable=True)
    d1.addCallback(acked.append)
    d2.addCallback(acked.append)
    p1, p2 = link.json_sent("ping")
    assert p1["reliable"] is True and p1["message_id"] and p1["message_id"] != p2["message_id"]
    link.ack(p1)
    assert acked == [{"message_id": p1["message_id"], "duplicate": False}]

    link.drop()
    clock.advance(0)
    # While disconnected: reliable queued, best-effort dropped at once.
    d3 = client.send({"type": "ping", "data": {"seq": 3}}, reliable=True)
    dropped: list = []
    client.send(b"\x00" * 640).addCallback(dropped.append)
    client.send({"type": "ping", "data": {"seq": 99}}).addCallback(dropped.append)
    assert dropped == [False, False] and client.stats.dropped_disconnected == 2
    clock.advance(1.0)
    link2 = endpoint.accept().open()
    assert link2.sent == []  # nothing before the greeting
    link2.greet(token="t2")
    resent = link2.json_sent("ping")
    # p1 was acknowledged: never again; p2 (in flight) and p3 (queued) once each, in order.
    assert [m["data"]["seq"] for m in resent] == [2, 3]
    assert resent[0]["message_id"] == p2["message_id"] and resent[0] == p2
    assert all(m["reliable"] for m in resent)
    for m in resent:
        link2.ack(m)
    d3.addCallback(acked.append)
    assert [a["message_id"] for a in acked] == [p1["message_id"], p2["message_id"], resent[1]["message_id"]]
    assert client.queue.reliable_pending == 0 and client.stats.resent == 1


def test_resume_presents_the_old_token_and_opens_on_the_answer() -> None:
    client, endpoint, clock, link = open_client()
    link.receive({"type": "conversation_start", "data": {"conversation_id": "conv-9"}, "conversation_id": "conv-9"})
    r = client.send({"type": "ping", "data": {"seq": 1}}, reliable=True)
    (ping,) = link.json_sent("ping")
    link.drop()
    clock.advance(0)
    clock.advance(1.0)
    link2 = endpoint.accept().open()
    link2.greet(token="tok-2", session="sess-2")
    (hello,) = link2.json_sent()
    assert hello["type"] == "connect" and hello["data"]["resume_token"] == "tok-1"
    assert client.state is ConnectionState.RECONNECTING  # not open until the server says
    resumed: list = []
    client.on("resumed", resumed.append)
    link2.reply(hello, "connect", {"resumed": True, "previous_session_id": "sess-1", "session_id": "sess-2",
                                    "resume_token": "tok-2"}, conversation_id="conv-9")
    assert client.state is ConnectionState.OPEN and client.resumed is True and resumed
    assert client.conversation_id == "conv-9"
    # The ping is re-sent after the resume; the server had handled it: a duplicate ack.
    (again,) = link2.json_sent("ping")
    assert again["message_id"] == ping["message_id"]
    link2.ack(again, duplicate=True)
    got: list = []
    r.addCallback(got.append)
    assert got == [{"message_id": ping["message_id"], "duplicate": True}]
    assert client.stats.duplicate_acks == 1 and client.resume_token == "tok-2"


def test_failed_resume_restarts_the_conversation_before_anything_else() -> None:
    client, endpoint, clock, link = open_client()
    link.receive({"type": "status", "data": {"event_type": "x"}, "conversation_id": "conv-1"})
    link.drop()
    clock.advance(0)
    client.send({"type": "ping", "data": {"seq": 5}}, reliable=True)
    clock.advance(1.0)
    link2 = endpoint.accept().open()
    link2.greet(token="tok-new")
    (hello,) = link2.json_sent()
    link2.reply(hello, "connect", {"resumed": False, "resume_error": "unknown_or_expired_token"})
    sent = link2.json_sent()[1:]
    assert [m["type"] for m in sent] == ["conversation_start", "ping"]
    assert sent[0]["data"] == {"conversation_id": "conv-1"} and sent[0]["reliable"] is True
    assert client.resumed is False and client.stats.resume_failures == 1


def test_a_server_error_fails_a_reliable_message_which_is_not_resent() -> None:
    client, endpoint, clock, link = open_client(resume=False)
    errors: list[Failure] = []
    client.send({"type": "conversation_end"}, reliable=True).addErrback(errors.append)
    (msg,) = link.json_sent("conversation_end")
    link.receive({"type": "error", "data": {"code": "no_active_conversation", "message": "none",
                                            "message_id": msg["message_id"]}})
    assert errors[0].check(ServerError) and errors[0].value.code == "no_active_conversation"
    link.drop()
    clock.advance(0)
    clock.advance(1.0)
    link2 = endpoint.accept().open()
    link2.greet()
    assert link2.json_sent("conversation_end") == []


def test_requests_get_their_answer_or_fail() -> None:
    client, endpoint, clock, link = open_client()
    answers: list = []
    client.ping({"n": 1}).addCallback(answers.append)
    (ping,) = link.json_sent("ping")
    link.reply(ping, "pong", {"n": 1})
    assert answers[0]["type"] == "pong" and answers[0]["data"]["n"] == 1
    timeouts: list[Failure] = []
    client.request("status", timeout=2.0).addErrback(timeouts.append)
    clock.advance(2.0)
    assert timeouts[0].check(RequestTimeout)
    lost: list[Failure] = []
    client.request("status").addErrback(lost.append)
    link.drop()
    clock.advance(0)
    assert lost[0].check(NotConnected)
    offline: list[Failure] = []
    client.request("status").addErrback(offline.append)
    assert offline[0].check(NotConnected)


def test_heartbeat_answered_then_unanswered_drops_and_reconnects() -> None:
    client, endpoint, clock, link = open_client(heartbeat_interval=5.0, heartbeat_timeout=2.0)
    rtts: list[float] = []
    client.on("heartbeat", rtts.append)
    clock.advance(5.0)
    (hb,) = link.json_sent("heartbeat")
    clock.advance(0.5)
    link.reply(hb, "heartbeat", {"server_time": 1.0})
    assert rtts == [0.5]
    clock.advance(4.5)
    assert len(link.json_sent("heartbeat")) == 2
    timeouts: list = []
    client.on("heartbeat_timeout", lambda: timeouts.append(clock.seconds()))
    clock.advance(2.0)  # unanswered
    assert timeouts == [12.0] and link.aborted
    assert client.state is ConnectionState.RECONNECTING
    clock.advance(0)
    clock.advance(1.0)
    assert len(endpoint.pending) == 1
    assert client.stats.heartbeats == 2 and client.stats.heartbeat_timeouts == 1


def test_writes_wait_for_a_writable_link_and_go_by_priority() -> None:
    client, endpoint, clock, link = open_client()
    link.writable = False
    client.send({"type": "ping", "data": {"n": "late"}}, priority=9)
    client.send({"type": "ping", "data": {"n": "urgent"}}, priority=1)
    client.send(b"audio", priority=2)
    assert link.sent == []
    link.writable = True
    client.linkWritable(link, True)
    assert [m if isinstance(m, bytes) else m["data"]["n"] for m in link.sent] == ["urgent", b"audio", "late"]


def test_close_says_disconnect_and_fails_what_is_pending() -> None:
    client, endpoint, clock, link = open_client()
    pending: list[Failure] = []
    client.send({"type": "ping"}, reliable=True).addErrback(pending.append)
    closed: list = []
    client.close("bye").addCallback(closed.append)
    assert link.json_sent()[-1]["type"] == "disconnect" and link.closed_with == (1000, "bye")
    clock.advance(0)
    clock.advance(0)
    assert client.state is ConnectionState.CLOSED and closed == [None]
    assert pending[0].check(ClientClosed)
    clock.advance(100)
    assert not endpoint.pending  # no reconnection


def test_a_policy_close_code_is_final() -> None:
    client, endpoint, clock, link = open_client()
    failed: list = []
    client.on("failed", failed.append)
    link.drop(code=4003)
    clock.advance(0)
    clock.advance(0)
    assert client.state is ConnectionState.FAILED and isinstance(failed[0], ConnectionFailed)
    clock.advance(100)
    assert not endpoint.pending


def test_no_auto_reconnect_closes_after_a_drop() -> None:
    client, endpoint, clock, link = open_client(auto_reconnect=False)
    link.drop()
    clock.advance(0)
    clock.advance(0)
    assert client.state is ConnectionState.CLOSED
    clock.advance(100)
    assert not endpoint.pending


def test_when_waits_for_a_state() -> None:
    client, endpoint, clock = make_client(backoff=Backoff(jitter=0, max_attempts=0))
    seen: list = []
    client.when(ConnectionState.FAILED).addCallback(seen.append)
    client.connect().addErrback(lambda f: seen.append(f.type))
    endpoint.refuse()
    clock.advance(0)
    assert sorted(map(str, seen)) == sorted(map(str, [ConnectionFailed, ConnectionState.FAILED]))


def test_a_rate_limited_reliable_message_is_held_back_and_sent_again() -> None:
    client, endpoint, clock, link = open_client(rate_limit_pause=2.0)
    acks: list = []
    client.send({"type": "ping", "data": {"seq": 1}}, reliable=True).addCallback(acks.append)
    (first,) = link.json_sent("ping")
    link.receive({"type": "error", "data": {"code": "rate_limited", "message": "slow down",
                                            "message_id": first["message_id"]}})
    client.send({"type": "ping", "data": {"seq": 2}}, reliable=True)
    assert len(link.json_sent("ping")) == 1  # held back
    clock.advance(2.0)
    again = link.json_sent("ping")[1:]
    assert [m["data"]["seq"] for m in again] == [1, 2] and again[0]["message_id"] == first["message_id"]
    link.ack(again[0])
    assert acks == [{"message_id": first["message_id"], "duplicate": False}]
    assert client.stats.rate_limited == 1
