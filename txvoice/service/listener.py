"""Listening on a Twisted endpoint description (``tcp:8765:interface=127.0.0.1``, ``ssl:...``)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.python.failure import Failure
from twisted.web.server import Site

from txvoice.logging import NamespaceLogger


def listening_address(address: IAddress) -> str:
    """How a listening address reads in the log: ``127.0.0.1:8765``, ``[::1]:8765``, ``unix:/run/txvoice.sock``."""
    if isinstance(address, UNIXAddress):
        name = address.name
        return f"unix:{name.decode(errors='replace') if isinstance(name, bytes) else name}"
    host, port = getattr(address, "host", "?"), getattr(address, "port", "?")
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class ListenerService(Service):
    """Listens while running; ``whenListening`` fires with the port (tests listen on ``tcp:0``)."""

    name = "listener"
    log = NamespaceLogger(namespace="txvoice.network")

    def __init__(self, reactor: Any, description: str, site: Site) -> None:
        # IReactorCore and IReactorSocket (adopting sockets): zope interfaces cannot be intersected in a hint.
        self.reactor: Any = reactor
        self.description = description
        self.site = site
        self.port: IListeningPort | None = None
        self.whenListening: Deferred[IListeningPort] = Deferred()

    def listen(self) -> "Deferred[IListeningPort] | IListeningPort":
        """Start listening: the IListeningPort, or a Deferred of it (subclasses adopt a socket instead)."""
        listening: Deferred[IListeningPort] = serverFromString(self.reactor, self.description).listen(self.site)
        return listening

    def startService(self) -> None:
        super().startService()
        d = maybeDeferred(self.listen)
        failure: list[Failure] = []

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            self.log.info("txvoice listening on {address}", address=listening_address(port.getHost()))
            self.whenListening.callback(port)
            return port

        d.addCallbacks(listening, failure.append)
        if failure:
            # Fail the start (and so twistd) rather than run a server that cannot be reached.
            failure[0].raiseException()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)

        def stop() -> Deferred[None]:
            stopping = port.stopListening()  # a Deferred, or None when it stopped at once
            return stopping if stopping is not None else succeed(None)

        return maybeDeferred(stop)
