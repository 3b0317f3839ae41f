"""
A leaner event dispatch for Twisted's epoll reactor (carried here; it belongs in Twisted).

``EPollReactor.doPoll`` hands every ready descriptor to ``_doReadOrWrite`` through
``log.callWithLogger``: a ``logPrefix()`` call, two dictionary copies to set the legacy
``twisted.python.log`` context (the ``system`` of ``log.msg`` lines), a list push and pop and four
more Python frames, for every event.  A voice server sees one read and one write event per
acknowledged audio frame, so this wrapping is paid twice a frame.

:func:`install_lean_poll` replaces the reactor's ``doIteration`` with a copy of ``doPoll`` that
calls ``_doReadOrWrite`` directly.  ``_doReadOrWrite`` already catches and logs everything
``doRead``/``doWrite`` raise and disconnects the descriptor; what is lost is the ``system`` field
of legacy ``log.msg``/``log.err`` lines written while handling an event (``-`` instead of the
connection's log prefix).  txvoice, Autobahn and Twisted's own modern code log through
``twisted.logger``, which never read that context.  An exception that escapes
``_doReadOrWrite`` (from a ``connectionLost``) is logged with the descriptor's prefix as before
and the remaining events are still handled.
"""

from __future__ import annotations

import errno
import types
from typing import Any

from twisted.python import log


def _lean_do_poll(self: Any, timeout: float | None) -> None:
    """``EPollReactor.doPoll`` (Twisted 26.10) without the per-event ``callWithLogger``."""
    if timeout is None:
        timeout = -1  # wait indefinitely
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables
    handle = self._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            handle(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            try:
                prefix = selectable.logPrefix()
            except BaseException:
                prefix = "(buggy logPrefix method)"
            log.err(system=prefix)


def install_lean_poll(reactor: Any) -> bool:
    """
    Use :func:`_lean_do_poll` as ``reactor``'s ``doIteration`` when it is Twisted's unmodified
    epoll reactor; return whether it was installed (other reactors are left alone).
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover - no epoll on this platform
        return False
    if not isinstance(reactor, EPollReactor) or type(reactor).doPoll is not EPollReactor.doPoll:
        return False
    if type(reactor).doIteration is not EPollReactor.doPoll or "doIteration" in vars(reactor):
        return False  # someone else changed the iteration already
    reactor.doIteration = types.MethodType(_lean_do_poll, reactor)  # type: ignore[method-assign]  # the point
    return True
