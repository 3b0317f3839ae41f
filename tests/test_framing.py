"""
The fast lane through Autobahn's frame parsing (txvoice.server.framing): it must behave exactly
as Autobahn does on any byte stream, split anywhere, and actually take the common frames.
"""

from __future__ import annotations

import os
import struct

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.xormasker import create_xor_masker
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address

from tests.wsmemory import HANDSHAKE, MemoryTransport
from txvoice.server.framing import FastFraming, PreparedText, unmask

LIMIT = 1500  # maxMessagePayloadSize of the connections below: above it Autobahn fails with 1009


class Recording(WebSocketServerProtocol):
    """Autobahn as it is: records what reaches the application."""

    def onConnect(self, request):
        self.received = []
        self.fast = 0

    def onMessage(self, payload, isBinary):
        self.received.append((bytes(payload), isBinary))


class FastRecording(FastFraming, Recording):
    fastFrameLimit = 1000  # frames above this go through Autobahn's path

    def fastMessage(self, payload):
        self.fast += 1
        super().fastMessage(payload)


def connect(protocol_class):
    factory = WebSocketServerFactory()
    factory.protocol = protocol_class
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0,
                               maxMessagePayloadSize=LIMIT, maxFramePayloadSize=LIMIT)
    addr = IPv4Address("TCP", "127.0.0.1", 40000)
    protocol = factory.buildProtocol(addr)
    transport = MemoryTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 8765))
    protocol.makeConnection(transport)
    protocol.dataReceived(HANDSHAKE + b"\r\n")
    assert protocol.state == protocol.STATE_OPEN
    transport.clear()
    return protocol, transport


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True, rsv: int = 0,
          long_length: bool = False) -> bytes:
    """A client frame; ``long_length`` writes a small length in the 16-bit form (not minimal)."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    flag = 0x80 if masked else 0
    if n < 126 and not long_length:
        head += bytes([flag | n])
    elif n < 65536:
        head += bytes([flag | 126]) + struct.pack("!H", n)
    else:
        head += bytes([flag | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + (create_xor_masker(mask, n).process(payload) if n else b"")


def stats(protocol) -> dict:
    return dict(protocol.trafficStats.__json__())


def test_unmask_matches_autobahn_at_every_size_class():
    for n in [0, 1, 2, 3, 4, 5, 7, 125, 126, 127, 511, 512, 513, 640, 1920, 4096, 65536]:
        payload, mask = os.urandom(n), os.urandom(4)
        expected = create_xor_masker(mask, n).process(payload) if n else b""
        assert unmask(payload, mask) == expected, n


def test_whole_binary_frames_take_the_fast_lane_in_order():
    protocol, transport = connect(FastRecording)
    chunks = [os.urandom(n) for n in (0, 1, 60, 125, 126, 640, 1000)]
    protocol.dataReceived(b"".join(frame(0x2, c) for c in chunks))
    assert protocol.received == [(c, True) for c in chunks]
    assert protocol.fast == len(chunks)
    assert stats(protocol)["incomingWebSocketMessages"] == len(chunks)
    assert transport.value() == b""


def test_other_frames_take_autobahns_path_and_still_arrive():
    protocol, transport = connect(FastRecording)
    big = os.urandom(1200)  # above fastFrameLimit, within LIMIT
    data = (frame(0x1, "héllo".encode()) + frame(0x2, b"ab", fin=False) + frame(0x0, b"cd")
            + frame(0x9, b"ping!") + frame(0x2, big))
    split = data[:3], data[3:40], data[40:]
    for part in split:
        protocol.dataReceived(part)
    assert protocol.received == [("héllo".encode(), False), (b"abcd", True), (big, True)]
    assert protocol.fast == 0
    assert b"\x8a\x05ping!" in transport.value()  # the pong


def test_a_frame_split_across_reads_arrives_once():
    protocol, _ = connect(FastRecording)
    payload = os.urandom(640)
    data = frame(0x2, payload) + frame(0x2, b"next")
    for i in range(len(data)):
        protocol.dataReceived(data[i : i + 1])
    assert protocol.received == [(payload, True), (b"next", True)]


def test_violations_fail_the_connection_as_autobahn_does():
    for bad in [frame(0x2, b"x" * 10, masked=False), frame(0x2, b"x" * 10, long_length=True),
                frame(0x2, b"x", rsv=1), frame(0x3, b"x"), frame(0x2, os.urandom(LIMIT + 1))]:
        results = []
        for cls in (Recording, FastRecording):
            protocol, transport = connect(cls)
            protocol.dataReceived(frame(0x2, b"before") + bad + frame(0x2, b"after"))
            results.append((protocol.received, protocol.state, transport.value(), stats(protocol)))
        assert results[0] == results[1]
        assert results[1][0] == [(b"before", True)]
        assert results[1][1] != Recording.STATE_OPEN


_frames = st.one_of(
    st.binary(max_size=200).map(lambda p: frame(0x2, p)),
    st.binary(min_size=126, max_size=1300).map(lambda p: frame(0x2, p)),
    st.text(max_size=40).map(lambda t: frame(0x1, t.encode())),
    st.binary(max_size=20).map(lambda p: frame(0x9, p)),
    st.tuples(st.binary(max_size=50), st.binary(max_size=50)).map(
        lambda ab: frame(0x2, ab[0], fin=False) + frame(0x0, ab[1])),
    st.sampled_from([frame(0x2, b"raw", masked=False), frame(0x2, b"short", long_length=True),
                     frame(0x2, b"rsv", rsv=2), frame(0xB, b""), frame(0x1, b"\xff\xfe"),
                     frame(0x2, bytes(LIMIT + 1)), frame(0x0, b"orphan")]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_frames, max_size=12), st.lists(st.integers(min_value=1, max_value=4000), max_size=8))
def test_any_stream_split_anywhere_behaves_exactly_like_autobahn(frames, cuts):
    data = b"".join(frames)
    points = sorted({c for c in cuts if c < len(data)})
    parts = [data[i:j] for i, j in zip([0, *points], [*points, len(data)])]
    outcome = []
    for cls in (Recording, FastRecording):
        protocol, transport = connect(cls)
        for part in parts:
            if protocol.state == protocol.STATE_CLOSED:
                break
            protocol.dataReceived(part)
        outcome.append((protocol.received, protocol.state, transport.value(), stats(protocol)))
    assert outcome[0] == outcome[1]


def test_a_prepared_text_is_the_frame_sendMessage_writes():
    protocol, transport = connect(FastRecording)
    protocol.sendMessage(b'{"status":"chunk_received"}', isBinary=False)
    written = transport.value()
    transport.clear()
    protocol.sendPreparedMessage(PreparedText(b'{"status":"chunk_received"}').message)
    assert transport.value() == written
