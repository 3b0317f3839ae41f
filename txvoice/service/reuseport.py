"""
The listening sockets of ``--processes N`` (see :mod:`txvoice.service.processes`): the group of
``SO_REUSEPORT`` sockets the parent binds, and the listeners that adopt one of them, in the
parent (socket 0) and in a worker (the socket passed as its fd 3).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from twisted.internet.interfaces import IListeningPort
from twisted.web.server import Site

from txvoice.service.listen_settings import TCPListen
from txvoice.service.listener import ListenerService

#: In a worker: the listening socket, and the pipe on which it says it is listening.
LISTEN_FD = 3
CONTROL_FD = 4


class ReusePortListeners:
    """
    The N listening sockets of one address, bound with ``SO_REUSEPORT`` by the parent.  Socket 0
    is the parent's own, socket *i* worker *i*'s; all stay open until :meth:`close`.
    """

    def __init__(self, spec: TCPListen, count: int) -> None:
        if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError("--processes above 1 needs Linux (SO_REUSEPORT balancing connections)")
        self.spec = spec
        self.count = count
        self.sockets: list[socket.socket] = []

    @property
    def family(self) -> socket.AddressFamily:
        return self.spec.family

    def bind(self) -> None:
        """Bind every socket (once; later calls do nothing)."""
        if self.sockets:
            return
        port = self.spec.port
        try:
            for _ in range(self.count):
                s = socket.socket(self.spec.family, socket.SOCK_STREAM)
                self.sockets.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((self.spec.interface, port))
                s.listen(self.spec.backlog)
                s.setblocking(False)
                port = s.getsockname()[1]  # tcp:0 picks a port once; the others join it
        except OSError:
            self.close()
            raise

    def socket(self, index: int) -> socket.socket:
        self.bind()
        return self.sockets[index]

    @property
    def port(self) -> int:
        port: int = self.socket(0).getsockname()[1]
        return port

    def close(self) -> None:
        sockets, self.sockets = self.sockets, []
        for s in sockets:
            s.close()


class SharedListenerService(ListenerService):
    """The parent's listener: adopts socket 0 of the group."""

    def __init__(self, reactor: Any, listeners: ReusePortListeners, site: Site) -> None:
        super().__init__(reactor, f"reuseport:{listeners.spec.interface}:{listeners.spec.port}", site)
        self.listeners = listeners

    def privilegedStartService(self) -> None:
        self.listeners.bind()
        super().privilegedStartService()

    def listen(self) -> IListeningPort:
        port: IListeningPort = self.reactor.adoptStreamPort(
            self.listeners.socket(0).fileno(), self.listeners.family, self.site)
        return port


class WorkerListenerService(ListenerService):
    """A worker's listener: adopts the socket its parent passed as fd 3, then says so on fd 4."""

    def __init__(self, reactor: Any, site: Site, listen_fd: int = LISTEN_FD, control_fd: int = CONTROL_FD) -> None:
        super().__init__(reactor, f"fd:{listen_fd}", site)
        self.listen_fd = listen_fd
        self.control_fd = control_fd

    def listen(self) -> IListeningPort:
        inherited = socket.socket(fileno=self.listen_fd)  # family and type read from the socket
        try:
            inherited.setblocking(False)
            port: IListeningPort = self.reactor.adoptStreamPort(inherited.fileno(), inherited.family, self.site)
        finally:
            inherited.close()  # adoptStreamPort keeps a duplicate; the parent keeps the socket
        try:
            os.write(self.control_fd, b"listening\n")
            os.close(self.control_fd)
        except OSError:
            pass  # not started by a parent that listens for it
        return port
