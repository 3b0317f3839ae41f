"""
The acknowledgements of one audio batch leave a connection in one write, and never after a
message written later (txvoice.audio.workers.afterBatch, txvoice.server.framing.holdFrame).

Deterministic: the audio worker is a real thread, but its results come back through a fake
reactor's ``callFromThread`` queue that the test runs by hand, on a ``MemoryReactorClock``.
"""

from __future__ import annotations

import json
import threading

import pytest
from twisted.internet.testing import MemoryReactorClock

from txvoice.audio.workers import AudioWorkers
from txvoice.config import VoiceConfig
from txvoice.dialects.vocal import CHUNK_RECEIVED, VocalProtocol
from txvoice.errors import VoiceError
from txvoice.pipeline.echo import EchoPipeline
from txvoice.server.context import VoiceServer
from txvoice.testing import MemoryClient

PCM16K = "/ws/audio?codec=pcm_s16le&sample_rate=16000&channels=1"
FRAME = b"\x00\x01" * 320  # 20 ms of 16 kHz PCM


class HandReactor(MemoryReactorClock):
    """A fake clock whose callFromThread queues the call until the test runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list = []
        self.arrived = threading.Condition()

    def callFromThread(self, f, *args, **kwargs) -> None:
        with self.arrived:
            self.from_threads.append((f, args, kwargs))
            self.arrived.notify_all()

    def run_from_threads(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait for ``count`` calls from the worker threads, then run them in order (one reactor turn each)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.from_threads) >= count, timeout):
                raise AssertionError(f"{count} calls from the audio thread did not come within {timeout} s")
            calls, self.from_threads = self.from_threads[:count], self.from_threads[count:]
        for f, args, kwargs in calls:
            f(*args, **kwargs)


@pytest.fixture
def hand():
    reactor = HandReactor()
    workers = AudioWorkers(reactor, threads=1)
    workers.startService()
    server = VoiceServer(VoiceConfig(open_handshake_timeout=0), EchoPipeline(), workers, reactor)
    server.pacer.startService()
    yield reactor, workers, server
    for shard in workers._shards:
        shard.jobs.put(None)
    for thread in workers._threads:
        thread.join(5)


def counting_writes(client: MemoryClient) -> list[bytes]:
    writes: list[bytes] = []
    write = client.transport.write

    def counted(data: bytes) -> None:
        writes.append(data)
        write(data)

    client.transport.write = counted  # type: ignore[method-assign]
    return writes


def test_after_batch_runs_once_after_every_result_of_the_batch() -> None:
    reactor = HandReactor()
    workers = AudioWorkers(reactor, threads=1)
    workers.startService()
    try:
        seen: list = []
        registered = []

        def deliver(n: int) -> None:
            seen.append(n)
            if not registered:
                registered.append(n)
                workers.afterBatch(lambda: seen.append("after"))

        for n in range(5):
            workers.submit(7, lambda x: x, n, deliver)
        reactor.advance(0)  # the reactor turn's flush: one batch of five to the thread
        reactor.run_from_threads(1)
        assert seen == [0, 1, 2, 3, 4, "after"]
        assert (workers.batches, workers.items) == (1, 5)
        # Outside a delivery there is no batch to wait for: at once.
        workers.afterBatch(lambda: seen.append("now"))
        assert seen[-1] == "now"
    finally:
        for shard in workers._shards:
            shard.jobs.put(None)


def test_after_batch_runs_even_when_a_result_raises() -> None:
    reactor = HandReactor()
    workers = AudioWorkers(reactor, threads=1)
    workers.startService()
    try:
        seen: list = []

        def deliver(n: int) -> None:
            workers.afterBatch(lambda: seen.append(("after", n)))
            if n == 0:
                raise RuntimeError("a broken callback")
            seen.append(n)

        workers.submit(1, lambda x: x, 0, deliver)
        workers.submit(1, lambda x: x, 1, deliver)
        reactor.advance(0)
        reactor.run_from_threads(1)
        assert seen == [1, ("after", 0), ("after", 1)]
    finally:
        for shard in workers._shards:
            shard.jobs.put(None)


def test_inline_workers_write_each_ack_at_once() -> None:
    from txvoice.testing import memory_server

    client = MemoryClient(memory_server(), VocalProtocol, subprotocol=None, path=PCM16K)
    assert client.messages()[0]["status"] == "connected"
    writes = counting_writes(client)
    for _ in range(3):
        client.send_binary(FRAME)
    assert client.messages() == [{"status": "chunk_received"}] * 3
    assert len(writes) == 3  # inline: every chunk is a batch of its own


def test_the_acks_of_one_batch_are_one_write(hand) -> None:
    reactor, workers, server = hand
    client = MemoryClient(server, VocalProtocol, subprotocol=None, path=PCM16K)
    assert client.messages()[0]["status"] == "connected"
    writes = counting_writes(client)
    for _ in range(12):
        client.send_binary(FRAME)  # twelve frames in one reactor turn
    assert writes == []
    reactor.advance(0)
    reactor.run_from_threads(1)
    assert workers.batches == 1
    assert len(writes) == 1
    assert client.messages() == [{"status": "chunk_received"}] * 12
    assert client.session.counters.text_out == 13  # the greeting and every ack are counted
    # The next batch's acks are a write of their own.
    client.send_binary(FRAME)
    client.send_binary(FRAME)
    reactor.advance(0)
    reactor.run_from_threads(1)
    assert len(writes) == 2 and writes[1].count(CHUNK_RECEIVED) == 2


def test_an_ack_is_never_later_than_a_message_written_after_it(hand) -> None:
    """Chunk 4 of 8 fails: its error goes out after the acks of chunks 1-3 and before those of 5-8."""
    reactor, workers, server = hand
    client = MemoryClient(server, VocalProtocol, subprotocol=None, path=PCM16K)
    client.messages()
    writes = counting_writes(client)
    stream = client.protocol.channel.stream
    process = stream.ingest.process
    calls = [0]

    def flaky(item):
        calls[0] += 1
        if calls[0] == 4:
            raise VoiceError("chunk 4 is broken", code="invalid_audio")
        return process(item)

    stream.ingest.process = flaky
    for _ in range(8):
        client.send_binary(FRAME)
    reactor.advance(0)
    reactor.run_from_threads(1)
    statuses = [m["status"] for m in client.messages()]
    assert statuses == ["chunk_received"] * 3 + ["error"] + ["chunk_received"] * 4
    # Acks 1-3 went out with the error (one write), acks 5-8 at the batch's end.
    assert len(writes) == 2
    assert writes[0].count(CHUNK_RECEIVED) == 3 and b'"error"' in writes[0]
    assert writes[1].count(CHUNK_RECEIVED) == 4


def test_a_close_written_during_the_batch_follows_its_acks(hand) -> None:
    reactor, workers, server = hand
    client = MemoryClient(server, VocalProtocol, subprotocol=None, path=PCM16K)
    client.messages()
    protocol = client.protocol
    acknowledge = protocol.chunkProcessed
    acked = [0]

    def then_close(result):
        acknowledge(result)
        acked[0] += 1
        if acked[0] == 2:
            protocol.sendClose(1000, "enough")

    protocol.chunkProcessed = then_close  # the channel's observer is the protocol
    for _ in range(3):
        client.send_binary(FRAME)
    reactor.advance(0)
    reactor.run_from_threads(1)
    frames = client.frames()
    # Two acks, then the close; the third chunk's ack is not sent on a closing connection.
    assert [op for op, _ in frames] == [0x1, 0x1, 0x8]
    assert [json.loads(p) for op, p in frames if op == 0x1] == [{"status": "chunk_received"}] * 2
    assert client.closes and client.closes[0][0] == 1000
