"""The priority send queue: order, byte bound, reliable messages kept until acknowledged."""

from __future__ import annotations

import pytest

from txvoice.client.queue import Outgoing, QueueFull, SendQueue


def item(name: str, priority: int = 5, size: int = 10, reliable: bool = False) -> Outgoing:
    return Outgoing(name.encode().ljust(size, b"."), False, priority, reliable, name if reliable else None)


def drain(q: SendQueue) -> list[str]:
    out = []
    while (it := q.pop()) is not None:
        q.written(it)
        out.append(it.payload.rstrip(b".").decode())
    return out


def test_lower_priority_number_first_fifo_within_a_priority() -> None:
    q = SendQueue()
    for name, prio in [("a", 5), ("b", 1), ("c", 5), ("d", 9), ("e", 1)]:
        q.push(item(name, prio))
    assert drain(q) == ["b", "e", "a", "c", "d"]


def test_reliable_items_wait_for_their_ack_and_come_back_in_their_old_place() -> None:
    q = SendQueue()
    for name in ["r1", "r2", "r3"]:
        q.push(item(name, reliable=True))
    assert drain(q) == ["r1", "r2", "r3"]
    assert list(q.unacked) == ["r1", "r2", "r3"] and q.bytes == 30
    assert q.ack("r1").message_id == "r1"
    assert q.ack("r1") is None
    q.push(item("r4", reliable=True))  # queued while "disconnected"
    assert q.requeue_unacked() == 2
    assert drain(q) == ["r2", "r3", "r4"]  # the re-sent ones first, in order, then the new one
    assert q.reliable_pending == 3
    for name in ["r2", "r3", "r4"]:
        q.ack(name)
    assert q.bytes == 0 and q.reliable_pending == 0


def test_the_byte_bound_evicts_best_effort_oldest_least_urgent_first() -> None:
    q = SendQueue(max_bytes=40)
    for name, prio in [("low1", 9), ("a1", 2), ("low2", 9), ("a2", 2)]:
        assert q.push(item(name, prio))
    assert q.push(item("a3", 2))  # evicts low1 (largest number, oldest)
    assert q.push(item("r", 5, reliable=True))  # evicts low2
    assert not q.push(item("low3", 9))  # cannot evict more urgent audio for it
    assert q.dropped == 3
    assert drain(q) == ["a1", "a2", "a3", "r"]


def test_reliable_messages_are_never_dropped_silently() -> None:
    q = SendQueue(max_bytes=25)
    q.push(item("r1", size=10, reliable=True))
    q.push(item("r2", size=10, reliable=True))
    with pytest.raises(QueueFull):
        q.push(item("r3", size=10, reliable=True))
    assert [i.message_id for i in q] == ["r1", "r2"]


def test_dropping_best_effort_on_disconnect_keeps_reliable() -> None:
    q = SendQueue()
    audio = item("audio")
    q.push(audio)
    q.push(item("r", reliable=True))
    gone = q.drop_best_effort()
    assert gone == [audio] and audio.deferred.called and audio.deferred.result is False
    assert drain(q) == ["r"] and q.dropped == 0


def test_discard_forgets_a_reliable_message_wherever_it_is() -> None:
    q = SendQueue()
    q.push(item("r1", reliable=True))
    q.push(item("r2", reliable=True))
    first = q.pop()
    q.written(first)
    assert q.discard("r1") is first
    assert q.discard("r2").message_id == "r2"
    assert q.pop() is None and q.bytes == 0
