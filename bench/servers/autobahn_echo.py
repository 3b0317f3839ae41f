"""
The floor txvoice stands on: a plain Autobahn WebSocket echo on Twisted's epoll reactor.

Every message is sent back as it came (binary stays binary); no greeting, no session bookkeeping,
the request path and query are ignored.  Listens on 127.0.0.1 only.

Usage: python bench/servers/autobahn_echo.py --port PORT
"""

from __future__ import annotations

import argparse

from twisted.internet import epollreactor

epollreactor.install()

import txaio  # noqa: E402
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol  # noqa: E402
from twisted.internet import reactor  # noqa: E402


class EchoProtocol(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    txaio.use_twisted()
    txaio.set_global_log_level("warn")
    factory = WebSocketServerFactory(f"ws://127.0.0.1:{args.port}")
    factory.protocol = EchoProtocol
    reactor.listenTCP(args.port, factory, backlog=1024, interface="127.0.0.1")
    print(f"autobahn echo listening on 127.0.0.1:{args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
