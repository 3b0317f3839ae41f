"""
In-memory stand-ins for the client's network: an endpoint whose attempts the test accepts or
refuses, and a link (protocol) the test plays the server on.  Time is a ``Clock``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.client import Backoff, CircuitBreaker, VoiceClient
from txvoice.client.protocol import IVoiceLink


class FakeTransport(StringTransport):
    """Closing happens on the next clock tick, as with a real reactor."""

    def __init__(self, clock: Clock, proxy: Any) -> None:
        super().__init__()
        self.clock = clock
        self.proxy = proxy
        self.lost = False

    def loseConnection(self) -> None:
        if not self.lost:
            self.lost = True
            self.clock.callLater(0, self.proxy.connectionLost, Failure(ConnectionDone()))

    abortConnection = loseConnection


@implementer(IVoiceLink)
class FakeLink(Protocol):
    """The client's side of one connection; the test speaks for the server with ``greet``/``receive``."""

    peer = "fake:1"
    subprotocol = "txvoice.v1"

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.writable = True
        self.aborted = False
        self.closed_with: tuple[int, str | None] | None = None
        self.close_code: int | None = 1006

    def connectionMade(self) -> None:
        self.transport.link = self

    @property
    def handler(self):
        return self.factory.handler

    # the server's side

    def open(self) -> "FakeLink":
        self.handler.linkOpened(self)
        return self

    def receive(self, msg: dict | bytes) -> None:
        if isinstance(msg, bytes):
            self.handler.linkMessage(self, msg, True)
        else:
            self.handler.linkMessage(self, json.dumps(msg).encode(), False)

    def greet(self, token: str = "tok-1", session: str = "sess-1", conversation_id: str | None = None) -> None:
        self.receive({"type": "connect", "data": {"status": "connected", "session_id": session, "resume_token": token,
                                                  "pipeline": "echo"}, "conversation_id": conversation_id})

    def reply(self, request: dict, msg_type: str | None = None, data: dict | None = None, **env: Any) -> None:
        self.receive({"type": msg_type or request["type"], "data": {**(data or {}), "reply_to": request["message_id"]},
                      **env})

    def ack(self, request: dict, duplicate: bool = False) -> None:
        self.receive({"type": "ack", "data": {"message_id": request["message_id"], "duplicate": duplicate}})

    def drop(self, code: int = 1006) -> None:
        """The server side goes away."""
        self.close_code = code
        self.transport.loseConnection()

    def json_sent(self, msg_type: str | None = None) -> list[dict]:
        return [m for m in self.sent if isinstance(m, dict) and (msg_type is None or m["type"] == msg_type)]

    # IVoiceLink

    def sendText(self, text: str | bytes) -> bool:
        self.sent.append(json.loads(text))
        return True

    def sendBinary(self, data: bytes) -> bool:
        self.sent.append(bytes(data))
        return True

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed_with = (code, reason)
        self.close_code = code
        self.transport.loseConnection()

    def abort(self) -> None:
        self.aborted = True
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.handler.linkClosed(self, False, self.close_code, reason.getErrorMessage())


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Records connection attempts; ``accept()`` makes one succeed with a :class:`FakeLink`."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pending: list[tuple[Any, Deferred]] = []
        self.links: list[FakeLink] = []
        self.attempt_times: list[float] = []

    def connect(self, factory: Any) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append((factory, d))
        self.attempt_times.append(self.clock.seconds())
        return d

    def accept(self) -> FakeLink:
        factory, d = self.pending.pop(0)
        proxy = factory.buildProtocol(None)
        transport = FakeTransport(self.clock, proxy)
        proxy.makeConnection(transport)
        d.callback(proxy)
        link = transport.link
        self.links.append(link)
        return link

    def refuse(self) -> None:
        _, d = self.pending.pop(0)
        d.errback(ConnectionRefusedError("refused"))


def make_client(clock: Clock | None = None, **kw: Any) -> tuple[VoiceClient, FakeEndpoint, Clock]:
    """A VoiceClient on a fake endpoint and a Clock; jitter off unless asked for."""
    clock = clock or Clock()
    endpoint = FakeEndpoint(clock)
    kw.setdefault("backoff", Backoff(jitter=0.0))
    kw.setdefault("breaker", CircuitBreaker(clock, failure_threshold=100))
    client = VoiceClient("ws://fake:1/", reactor=clock, clock=clock, endpoint=endpoint, protocol=FakeLink, **kw)
    return client, endpoint, clock


def open_client(**kw: Any) -> tuple[VoiceClient, FakeEndpoint, Clock, FakeLink]:
    """A client that is already open on its first link."""
    client, endpoint, clock = make_client(**kw)
    client.connect()
    link = endpoint.accept().open()
    link.greet()
    return client, endpoint, clock, link
