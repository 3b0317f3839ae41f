"""A connection that drops while a resume drains the queue: what it held is queued as the offline path queues it."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.task import Clock

from txvoice.dialects.realtime_callsession import CallSession


class Store:
    def __init__(self) -> None:
        self.puts: list[tuple[bytes, bool]] = []

    def put(self, address: str, payload: bytes, is_binary: bool) -> None:
        self.puts.append((payload, is_binary))


def test_held_audio_is_queued_as_one_message_per_run_not_one_per_packet() -> None:
    store = Store()
    server = SimpleNamespace(config=SimpleNamespace(resume_ttl=30.0), clock=Clock())
    table = SimpleNamespace(server=server, store=store, call_store=None, remove=lambda call: None)
    call = CallSession(table, "call-1", "user-1", None)  # type: ignore[arg-type]
    connection = SimpleNamespace(state=1, STATE_OPEN=1, writeOut=lambda payload, is_binary: None)
    call.protocol = connection  # type: ignore[assignment]
    call._buffer = []  # the queue is being written to this connection: live output is held
    for payload, is_binary in [(b"a1", True), (b"a2", True), (b'{"type":"audio_end"}', False), (b"a3", True)]:
        call.write(payload, is_binary)
    assert store.puts == []
    call.detach(connection)  # type: ignore[arg-type]
    # With --redis each put is a Redis command: one per run of audio, never one per packet.
    assert store.puts == [(b"a1a2", True), (b'{"type":"audio_end"}', False)]
    call._flushAudio()
    assert store.puts[-1] == (b"a3", True) and len(store.puts) == 3
    assert call.protocol is None and server.clock.getDelayedCalls()  # parked for resume_ttl
