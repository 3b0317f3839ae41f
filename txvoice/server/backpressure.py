"""
Output backpressure: a bound on the bytes a connection may have waiting for its client.

A client whose TCP window is closed (it reads slowly, or not at all) cannot make the server
queue without end.  :class:`OutputBudget` is the connection's push producer, registered on the
transport (``registerProducer``), so Twisted tells it when the transport's buffer fills
(``pauseProducing``) and when it has drained (``resumeProducing``); only while the buffer is
full is anything counted on a send.  What is counted is everything waiting for this client:

* the transport's send buffer (Twisted's, in user space; the kernel's socket buffer is not the
  process's memory and not counted),
* audio encoded and waiting for the pacer, and responses waiting for their turn to play
  (the sources a dialect adds with :meth:`OutputBudget.add_source`).

Past the soft mark (``output_buffer_soft_limit``) the connection is *congested*: response
audio and unsolicited ``metrics`` are dropped (and counted), control replies, acks and errors
never are, and the dialect tells the client once (``status`` / ``output_congested``, then
``output_recovered`` when it is back under half the soft mark).  Past the hard mark
(``max_output_buffer``) the connection is closed with :data:`CLOSE_OUTPUT_OVERFLOW` and its
queued responses freed; what a slow client can cost is therefore about the hard mark plus one
message.

Reading is not paused (unlike twisted.web's own producer, which this replaces): a congested
client's control messages, pongs and ``voice_end`` are still read and answered.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

#: Close code for a client that let more than ``max_output_buffer`` bytes wait for it.
CLOSE_OUTPUT_OVERFLOW = 4006

NORMAL, CONGESTED, EXCEEDED = "normal", "congested", "exceeded"


def transport_buffered(transport: Any) -> int:
    """Bytes waiting in a transport's send buffer (0 when it cannot tell)."""
    # TLS (TLSMemoryBIOProtocol) writes its records to the TCP transport under it.
    inner = getattr(transport, "transport", None)
    total = 0
    if inner is not None and hasattr(inner, "dataBuffer"):
        total += sum(len(b) for b in getattr(transport, "_appSendBuffer", ()) or ())
        transport = inner
    data = getattr(transport, "dataBuffer", None)
    if data is not None:
        return total + len(data) - getattr(transport, "offset", 0) + getattr(transport, "_tempDataLen", 0)
    io = getattr(transport, "io", None)  # StringTransport (tests): what was written and not read
    if io is not None:
        written: int = io.tell()
        return total + written
    return total


@implementer(IPushProducer)
class OutputBudget:
    """
    The output bound of one connection.  ``on_change(state, queued)`` is called when the state
    changes: ``"congested"`` (over the soft mark), ``"normal"`` (back under half of it),
    ``"exceeded"`` (over the hard mark; once).
    """

    def __init__(
        self,
        transport: Any,
        soft_limit: int,
        hard_limit: int,
        on_change: Callable[[str, int], None],
    ) -> None:
        self.transport = transport
        self.soft_limit = soft_limit
        self.hard_limit = hard_limit
        self.on_change = on_change
        self.sources: list[Callable[[], int]] = []
        #: The transport's buffer is over its own mark (Twisted's ``bufferSize``, 64 KiB).
        self.paused = False
        self.state = NORMAL
        self.peak = 0

    # IPushProducer: Twisted's transport tells us when its buffer fills and drains

    def pauseProducing(self) -> None:
        self.paused = True
        self.check()

    def resumeProducing(self) -> None:
        self.paused = False
        self.check()

    def stopProducing(self) -> None:
        self.paused = False
        self.sources = []

    # accounting

    def add_source(self, source: Callable[[], int]) -> None:
        """Another queue of bytes waiting for this client (paced audio, queued responses)."""
        self.sources.append(source)

    def queued(self) -> int:
        """Every byte now waiting for this client."""
        total = transport_buffered(self.transport)
        for source in self.sources:
            total += source()
        return total

    @property
    def congested(self) -> bool:
        """True while droppable output (response audio, metrics) should be dropped."""
        return self.state is not NORMAL

    def watching(self) -> bool:
        """Whether a send should re-check the bound (cheap: nothing is counted otherwise)."""
        return self.paused or self.state is not NORMAL

    def check(self) -> str:
        """Count what is queued, move between states, report a change; the state."""
        if self.state is EXCEEDED:
            return EXCEEDED
        queued = self.queued()
        if queued > self.peak:
            self.peak = queued
        if queued > self.hard_limit > 0:
            self._become(EXCEEDED, queued)
        elif self.state is NORMAL and queued > self.soft_limit > 0:
            self._become(CONGESTED, queued)
        elif self.state is CONGESTED and queued <= self.soft_limit // 2:
            self._become(NORMAL, queued)
        return self.state

    def _become(self, state: str, queued: int) -> None:
        self.state = state
        self.on_change(state, queued)


def install_budget(transport: Any, budget: OutputBudget) -> bool:
    """
    Make ``budget`` the transport's producer.  twisted.web's ``HTTPChannel`` registered itself
    for the upgrade request and stays registered after Autobahn takes the transport over; it
    pauses *reading* when the buffer fills, which this replaces.  True when installed.
    """
    register = getattr(transport, "registerProducer", None)
    if register is None:
        return False
    if getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()
    register(budget, True)
    return True
