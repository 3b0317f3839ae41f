"""The lean epoll dispatch: same events handled, same error handling, without the per-event log context."""

from __future__ import annotations

import socket

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python import log

from txvoice.service.poll import after_dispatch, install_lean_poll


class _Reader:
    """A readable end of a socket pair, recording what happens to it."""

    def __init__(self, sock: socket.socket, name: str, fail_read: bool = False, fail_lost: bool = False) -> None:
        self.sock = sock
        self.name = name
        self.fail_read = fail_read
        self.fail_lost = fail_lost
        self.read: list[bytes] = []
        self.lost: list[object] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return self.name

    def doRead(self):
        self.read.append(self.sock.recv(100))
        log.msg("legacy line while reading")  # records the legacy context's system
        if self.fail_read:
            raise ValueError("doRead broke")
        return None

    def connectionLost(self, reason) -> None:
        self.lost.append(reason)
        if self.fail_lost:
            raise RuntimeError("connectionLost broke")


@pytest.fixture
def reactor():
    r = EPollReactor()
    yield r
    r._poller.close()


@pytest.fixture
def pairs(reactor):
    made: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        made.extend((a, b))
        return a, b

    yield make
    for reader in list(reactor.getReaders()):
        reactor.removeReader(reader)  # before the sockets close under it
    for s in made:
        s.close()


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_installs_on_the_stock_epoll_reactor_once(reactor) -> None:
    assert install_lean_poll(reactor) is True
    assert reactor.doIteration.__func__.__module__ == "txvoice.service.poll"
    assert install_lean_poll(reactor) is False  # already replaced: left alone


def test_other_reactors_are_left_alone() -> None:
    assert install_lean_poll(Clock()) is False
    select = SelectReactor()
    assert install_lean_poll(select) is False
    assert "doIteration" not in vars(select)

    class Custom(EPollReactor):
        def doPoll(self, timeout):  # a subclass with its own poll keeps it
            return super().doPoll(timeout)

    custom = Custom()
    try:
        assert install_lean_poll(custom) is False
    finally:
        custom._poller.close()


def test_ready_descriptors_are_read(reactor, pairs, logged) -> None:
    install_lean_poll(reactor)
    (a1, b1), (a2, b2) = pairs(), pairs()
    one, two = _Reader(a1, "one"), _Reader(a2, "two")
    reactor.addReader(one)
    reactor.addReader(two)
    b1.send(b"first")
    b2.send(b"second")
    reactor.doIteration(1)
    assert one.read == [b"first"] and two.read == [b"second"]
    lines = [e for e in logged if e.get("message") == ("legacy line while reading",)]
    # Legacy log lines written while handling an event no longer carry the descriptor's prefix.
    assert len(lines) == 2 and all(e["system"] == "-" for e in lines)


def test_a_failing_read_disconnects_that_descriptor_only(reactor, pairs, logged) -> None:
    install_lean_poll(reactor)
    (a1, b1), (a2, b2) = pairs(), pairs()
    bad, good = _Reader(a1, "bad", fail_read=True), _Reader(a2, "good")
    reactor.addReader(bad)
    reactor.addReader(good)
    b1.send(b"x")
    b2.send(b"y")
    reactor.doIteration(1)
    assert len(bad.lost) == 1 and bad.lost[0].check(ValueError)
    assert good.read == [b"y"] and good.lost == []
    assert bad not in reactor.getReaders() and good in reactor.getReaders()
    assert any(e.get("isError") and "doRead broke" in str(e.get("failure")) for e in logged)


def test_an_error_escaping_the_handler_is_logged_with_the_prefix_and_polling_goes_on(reactor, pairs, logged) -> None:
    install_lean_poll(reactor)
    (a1, b1), (a2, b2) = pairs(), pairs()
    bad = _Reader(a1, "the-bad-one", fail_read=True, fail_lost=True)
    good = _Reader(a2, "good")
    reactor.addReader(bad)
    reactor.addReader(good)
    b1.send(b"x")
    b2.send(b"y")
    reactor.doIteration(1)  # connectionLost raises out of _doReadOrWrite: must not escape
    assert good.read == [b"y"]
    escaped = [e for e in logged if e.get("isError") and "connectionLost broke" in str(e.get("failure"))]
    assert escaped and escaped[0].get("system") == "the-bad-one"



class _Asking(_Reader):
    """A reader that asks for a call after the dispatch while it reads, recording the order."""

    def __init__(self, sock: socket.socket, name: str, order: list[str], after) -> None:
        super().__init__(sock, name)
        self.order = order
        self.after = after

    def doRead(self):
        self.order.append(f"read {self.name} dispatching={self.after.dispatching}")
        self.after.calls.append(lambda: self.order.append(f"after {self.name}"))
        return super().doRead()


def test_calls_asked_while_reading_run_once_every_event_is_handled(reactor, pairs) -> None:
    assert after_dispatch(reactor) is None  # not installed: nothing to ask
    install_lean_poll(reactor)
    after = after_dispatch(reactor)
    assert after is not None and not after.dispatching
    order: list[str] = []
    (a1, b1), (a2, b2) = pairs(), pairs()
    reactor.addReader(_Asking(a1, "one", order, after))
    reactor.addReader(_Asking(a2, "two", order, after))
    b1.send(b"x")
    b2.send(b"y")
    reactor.doIteration(1)
    reads = sorted(o for o in order if o.startswith("read"))
    assert reads == ["read one dispatching=True", "read two dispatching=True"]
    assert order[:2] == [o for o in order if o.startswith("read")]  # both reads first ...
    assert sorted(order[2:]) == ["after one", "after two"]  # ... then each call once
    assert not after.dispatching and after.calls == []
    reactor.doIteration(0)  # nothing ready: nothing runs again
    assert len(order) == 4


def test_a_failing_after_call_is_logged_and_the_others_still_run(reactor, pairs, logged) -> None:
    install_lean_poll(reactor)
    after = after_dispatch(reactor)
    ran: list[str] = []

    def fail() -> None:
        raise ZeroDivisionError("after call broke")

    def chained() -> None:  # a call asking for another: it runs in the same pass
        ran.append("first")
        after.calls.append(lambda: ran.append("second"))

    after.calls.extend([fail, chained])
    reactor.doIteration(0)
    assert ran == ["first", "second"]
    assert any(e.get("isError") and "after call broke" in str(e.get("failure")) for e in logged)
