"""
Echo testee for the Autobahn testsuite's fuzzingserver, on the client's own WebSocket stack.

``wstest -m fuzzingserver`` tests a *client*: the client asks for the number of cases
(``/getCaseCount``), runs each one (``/runCase?case=N&agent=A``, echoing every message it gets
until the server closes), then asks for the reports (``/updateReports?agent=A``).  This module
does that with :class:`~txvoice.client.protocol.VoiceClientFactory` and
:class:`~txvoice.client.protocol.VoiceClientProtocol` — the classes the voice client uses — with
an echoing :class:`~txvoice.client.protocol.IClientHandler` in place of the voice client::

    python -m txvoice.client.testee ws://127.0.0.1:9001 --agent txvoice-client
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Generator, Sequence
from urllib.parse import quote

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from txvoice.client.protocol import IClientHandler, IVoiceLink, VoiceClientFactory

__all__ = ["EchoHandler", "main", "run_testee"]

log = Logger(namespace="txvoice.client.testee")


@implementer(IClientHandler)
class EchoHandler:
    """
    Echoes every message back as it came (text as text, binary as binary) and remembers the first;
    ``echo=False`` only listens (``/getCaseCount`` would take an echo for a command).
    """

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.first: bytes | None = None
        self.opened = False
        self.closed: Deferred[tuple[bool, int | None, str | None]] = Deferred()  # (clean, code, reason)

    def linkOpened(self, link: IVoiceLink) -> None:
        self.opened = True

    def linkMessage(self, link: IVoiceLink, payload: bytes, is_binary: bool) -> None:
        if self.first is None:
            self.first = payload
        if not self.echo:
            return
        if is_binary:
            link.sendBinary(payload)
        else:
            link.sendText(payload)

    def linkWritable(self, link: IVoiceLink, writable: bool) -> None:
        pass

    def linkClosed(self, link: IVoiceLink, was_clean: bool, code: int | None, reason: str | None) -> None:
        if not self.closed.called:
            self.closed.callback((was_clean, code, reason))


def testee_factory(url: str, handler: EchoHandler, reactor: Any) -> VoiceClientFactory:
    """The voice client's factory, set up as a conformance testee: no limits, deflate offered."""
    return VoiceClientFactory(url, handler, subprotocols=(), compression=True, max_message_size=0,
                              open_handshake_timeout=30.0, close_handshake_timeout=5.0, reactor=reactor)


@inlineCallbacks
def _session(reactor: Any, base: str, host: str, port: int, resource: str, timeout: float,
             echo: bool = True) -> Generator[Deferred[Any], Any, EchoHandler]:
    handler = EchoHandler(echo)
    factory = testee_factory(base.rstrip("/") + resource, handler, reactor)
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=10)
    proto = yield endpoint.connect(factory)
    timer = reactor.callLater(timeout, proto.abort)
    try:
        yield handler.closed
    finally:
        if timer.active():
            timer.cancel()
    return handler


@inlineCallbacks
def run_testee(reactor: Any, url: str, agent: str, case_timeout: float = 300.0,
               first: int = 1) -> Generator[Deferred[Any], Any, int]:
    """Run every case the fuzzingserver offers, then update its reports; returns the case count."""
    from autobahn.websocket.util import parse_url

    _secure, host, port, _resource, _path, _params = parse_url(url)
    counter = yield _session(reactor, url, host, port, "/getCaseCount", 30.0, echo=False)
    count = int(counter.first or b"0")
    log.info("fuzzingserver offers {count} cases", count=count)
    for case in range(first, count + 1):
        yield _session(reactor, url, host, port, f"/runCase?case={case}&agent={quote(agent)}", case_timeout)
        if case % 50 == 0 or case == count:
            print(f"ran case {case}/{count}", flush=True)
    yield _session(reactor, url, host, port, f"/updateReports?agent={quote(agent)}", 300.0, echo=False)
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m txvoice.client.testee URL --agent NAME``: exit 0 once the reports are updated."""
    from twisted.internet.task import react

    ap = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    ap.add_argument("url", help="the fuzzingserver, e.g. ws://127.0.0.1:9001")
    ap.add_argument("--agent", default="txvoice-client")
    ap.add_argument("--case-timeout", type=float, default=300.0)
    args = ap.parse_args(argv)

    def _main(reactor: Any) -> Deferred[None]:
        return run_testee(reactor, args.url, args.agent, args.case_timeout).addCallback(
            lambda n: print(f"done: {n} cases, reports updated for {args.agent}", flush=True))

    react(_main)
    return 0


if __name__ == "__main__":
    sys.exit(main())
