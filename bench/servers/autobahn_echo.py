"""
The floor txvoice stands on: a plain Autobahn WebSocket echo on Twisted's epoll reactor.

Every message is sent back as it came (binary stays binary); no greeting, no session bookkeeping,
the request path and query are ignored.  Listens on 127.0.0.1 only.

For the benchmark's reactor-lag figure it runs txvoice's probe method (``lagprobe.py``: a timer
every 0.25 s, how late it fires); a plain ``GET /lag`` (no upgrade) answers its JSON.

Usage: python bench/servers/autobahn_echo.py --port PORT [--lag-interval 0.25]
"""

from __future__ import annotations

import argparse
import os
import sys

from twisted.internet import epollreactor

epollreactor.install()

import txaio  # noqa: E402
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol  # noqa: E402
from twisted.internet import reactor  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lagprobe import INTERVAL, LagRecorder, start_twisted  # noqa: E402

LAG: LagRecorder | None = None


class EchoProtocol(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)

    def sendServerStatus(self, redirectUrl: str | None = None, redirectAfter: int = 0) -> None:
        """A GET without upgrade: ``/lag`` gives the lag probe's JSON, anything else Autobahn's page."""
        if LAG is None or self.http_request_path.rstrip("/") != "/lag":
            return super().sendServerStatus(redirectUrl, redirectAfter)
        body = LAG.http_body(self.http_request_params)
        self.sendData(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lag-interval", type=float, default=INTERVAL,
                        help=f"reactor-lag probe interval in seconds [{INTERVAL}: txvoice's]")
    args = parser.parse_args()
    global LAG
    LAG = LagRecorder(args.lag_interval)
    txaio.use_twisted()
    txaio.set_global_log_level("warn")
    factory = WebSocketServerFactory(f"ws://127.0.0.1:{args.port}")
    factory.protocol = EchoProtocol
    reactor.listenTCP(args.port, factory, backlog=1024, interface="127.0.0.1")
    reactor.callWhenRunning(start_twisted, reactor, LAG)
    print(f"autobahn echo listening on 127.0.0.1:{args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
