"""The write-through path: idle sends go out at once, anything queued keeps its order."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from txvoice.server.writepath import install_write_through


class Collect(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.connected.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)


@pytest_twisted.inlineCallbacks
def test_idle_writes_go_out_without_waiting_for_the_reactor_and_order_holds():
    factory = protocol.ServerFactory()
    factory.protocol = Collect
    factory.connected, factory.received = Deferred(), []
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    peer = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        server = yield factory.connected
        assert install_write_through(server.transport)
        server.transport.write(b"first")
        # Sent synchronously: the peer can read it before the reactor runs again.
        peer.settimeout(2)
        assert peer.recv(100) == b"first"
        # A burst larger than the socket buffer: the rest queues, and order is kept.
        payload = bytes(range(256)) * 40000  # 10 MB
        server.transport.write(payload)
        server.transport.write(b"tail")
        got = bytearray()
        while len(got) < len(payload) + 4:
            yield deferLater(reactor, 0.001, lambda: None)
            try:
                peer.setblocking(False)
                while True:
                    chunk = peer.recv(1 << 20)
                    if not chunk:
                        break
                    got += chunk
            except BlockingIOError:
                pass
        assert bytes(got) == payload + b"tail"
    finally:
        peer.close()
        yield port.stopListening()


def test_only_plain_tcp_transports_are_changed():
    assert install_write_through(object()) is False


def test_on_by_default_and_off_with_no_write_through():
    """Every loopback test of the daemon (and the Autobahn testsuite run) goes through it."""
    from txvoice.tap import Options

    default, off = Options(), Options()
    default.parseOptions([])
    off.parseOptions(["--no-write-through"])
    assert default.config.write_through is True
    assert off.config.write_through is False
