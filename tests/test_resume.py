"""Resuming a dropped session, and reliable messages acknowledged exactly once."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from wsmemory import MemoryClient, memory_server


def drop(client: MemoryClient) -> None:
    client.protocol.connectionLost(Failure(ConnectionDone()))


def test_resume_reattaches_user_conversation_and_acks() -> None:
    server = memory_server(resume_ttl=60)
    first = MemoryClient(server, port=1)
    token = first.messages()[0]["data"]["resume_token"]
    first.send_json({"type": "auth", "data": {"token": "t", "user_id": "bob"}})
    first.send_json({"type": "conversation_start", "data": {"conversation_id": "c-5"}, "message_id": "r1",
                     "reliable": True})
    out = first.messages()
    assert {"type": "ack", "message_id": "r1", "duplicate": False} == {
        "type": out[-1]["type"], **{k: out[-1]["data"][k] for k in ("message_id", "duplicate")}}
    drop(first)

    second = MemoryClient(server, port=2)
    second.messages()
    second.send_json({"type": "connect", "data": {"resume_token": token}, "message_id": "hello"})
    (greeting,) = second.messages()
    assert greeting["data"]["resumed"] is True
    assert greeting["data"]["previous_session_id"] == first.session.id
    assert second.session.user_id == "bob" and second.session.conversation_id == "c-5"
    # The same reliable message again (its ack was "lost"): acknowledged, not run again.
    second.send_json({"type": "conversation_start", "data": {"conversation_id": "c-other"}, "message_id": "r1",
                      "reliable": True})
    (ack,) = second.messages()
    assert ack["type"] == "ack" and ack["data"] == {"message_id": "r1", "duplicate": True}
    assert second.session.conversation_id == "c-5"
    assert server.stats.resumes == 1


def resume(server, token: str, port: int) -> dict:
    client = MemoryClient(server, port=port)
    client.messages()
    client.send_json({"type": "connect", "data": {"resume_token": token}})
    return client.messages()[0]["data"]


def test_a_token_resumes_once() -> None:
    server = memory_server(resume_ttl=30)
    a = MemoryClient(server, port=1)
    token = a.messages()[0]["data"]["resume_token"]
    drop(a)
    assert resume(server, token, 2)["resumed"] is True
    again = resume(server, token, 3)
    assert again["resumed"] is False and again["resume_error"] == "unknown_or_expired_token"


def test_a_token_expires() -> None:
    server = memory_server(resume_ttl=30)
    a = MemoryClient(server, port=1)
    token = a.messages()[0]["data"]["resume_token"]
    drop(a)
    server.clock.advance(31)
    assert resume(server, token, 2)["resumed"] is False


def test_reliable_needs_a_message_id() -> None:
    client = MemoryClient(memory_server())
    client.messages()
    client.send_json({"type": "ping", "reliable": True})
    (err,) = client.messages()
    assert err["type"] == "error" and err["data"]["code"] == "missing_field" and err["data"]["field"] == "message_id"
