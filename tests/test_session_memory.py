"""
What one streaming ``/ws/audio`` session keeps in Python objects (issue 26: RSS per session), in
memory: Autobahn's handshake copies let go once open, nothing made for replies a session that
answers no turns never plays, and a bound on the whole session over several sessions
(:mod:`tracemalloc`; the C states -- the Opus decoder's 18 KB, webrtcvad's -- are not traced).
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from txvoice.audio import native
from txvoice.audio.codecs.opus import OpusEncoder
from txvoice.audio.format import AudioFormat
from txvoice.dialects.vocal import VocalProtocol
from txvoice.server.factory import VoiceServerFactory
from txvoice.testing import MemoryClient, memory_server

OPUS48K = "/ws/audio?codec=opus&sample_rate=48000&channels=1"
SESSIONS = 8
#: Python bytes one streaming session may keep in memory (measured 16.2 KB: Autobahn's protocol
#: and its 64-attribute dict, the session, the channel and the ingest; 17.9 KB with Autobahn's
#: options copied into every protocol's dict, 20 KB before the handshake was let go too).
BOUND = 17_000


def _packets(count: int) -> list[bytes]:
    rng = np.random.default_rng(5)
    t = np.arange(48000 * count // 50) / 48000.0
    tone = (6000 * np.sin(2 * np.pi * 180 * t) * (rng.random(len(t)) * 0.2 + 0.8)).astype(np.int16)
    return OpusEncoder(AudioFormat("opus", 48000, 1), bitrate=24000).encode(tone)


def test_autobahn_s_copies_of_the_handshake_are_let_go_once_open() -> None:
    client = MemoryClient(memory_server(), VocalProtocol, subprotocol=None, path=OPUS48K)
    assert client.messages()[0]["status"] == "connected"
    for name in VocalProtocol.HANDSHAKE_ATTRIBUTES:
        assert getattr(client.protocol, name) is None, name
    for packet in _packets(3):
        client.send_binary(packet)
    assert client.messages().count({"status": "chunk_received"}) == 3


@pytest.mark.skipif(not native.available(), reason="the native batch ingest is not built")
def test_a_streaming_session_keeps_little() -> None:
    server = memory_server()
    factory = VoiceServerFactory(server, VocalProtocol)  # one, as a listener has
    packets = _packets(100)

    def session() -> MemoryClient:
        client = MemoryClient(server, VocalProtocol, subprotocol=None, path=OPUS48K, factory=factory)
        for packet in packets:
            client.send_binary(packet)
        assert client.messages().count({"status": "chunk_received"}) == len(packets)
        return client

    kept = [session()]  # warm: what is made once for every session is not one session's
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [session() for _ in range(SESSIONS)]
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert len(kept) == SESSIONS
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown / SESSIONS < BOUND, f"{grown / SESSIONS:.0f} bytes per session"


def test_autobahn_s_options_live_on_the_protocol_class() -> None:
    """Not copied into each protocol's __dict__ (98 attributes and 3.3 KB, against 64 and 1.6 KB)."""
    server = memory_server(max_message_hard_limit=123_456)
    factory = VoiceServerFactory(server, VocalProtocol)
    one, two = (MemoryClient(server, VocalProtocol, subprotocol=None, path=OPUS48K, factory=factory) for _ in range(2))
    assert type(one.protocol) is type(two.protocol) and isinstance(one.protocol, VocalProtocol)
    for name in VocalProtocol.CONFIG_ATTRS:
        assert name not in vars(one.protocol), name
        assert getattr(one.protocol, name) == getattr(factory, name), name
    assert one.protocol.maxMessagePayloadSize == 123_456
    assert len(vars(one.protocol)) <= 85
    factory.setProtocolOptions(maxMessagePayloadSize=654_321)  # later options: a protocol made after has them
    three = MemoryClient(server, VocalProtocol, subprotocol=None, path=OPUS48K, factory=factory)
    assert three.protocol.maxMessagePayloadSize == 654_321 and one.protocol.maxMessagePayloadSize == 123_456


def test_autobahn_s_send_queue_is_a_list_that_keeps_its_order() -> None:
    """Autobahn appends (bytes, sync) pairs, pops the left end and asks the length: a list does all three."""
    from txvoice.server.base import SendQueue

    client = MemoryClient(memory_server(), VocalProtocol, subprotocol=None, path=OPUS48K)
    queue = client.protocol.send_queue
    assert type(queue) is SendQueue and not queue and len(queue) == 0
    for item in [(b"a", True), (b"b", False), (b"c", True)]:
        queue.append(item)
    assert len(queue) == 3
    assert [queue.popleft() for _ in range(3)] == [(b"a", True), (b"b", False), (b"c", True)]
    assert not queue


def test_a_channel_holds_its_ready_responses_in_a_list() -> None:
    """A list, not a deque: an empty deque costs 0.7 KB and most sessions never queue a reply."""
    client = MemoryClient(memory_server(), VocalProtocol, subprotocol=None, path=OPUS48K)
    channel = client.protocol.channel
    assert type(channel.responses) is list and not channel.responses
