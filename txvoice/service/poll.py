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

The lean dispatch also runs what asked to run once this poll's events are handled
(:class:`AfterDispatch`): the audio workers hand over (or run) the frames the reads queued there,
instead of through a ``callLater(0)`` per reactor turn (a ``DelayedCall``, a heap push and pop and
the timeout computed around it, for every poll that read a frame).
"""

from __future__ import annotations

import errno
import types
from typing import Any, Callable

from twisted.python import log


class AfterDispatch:
    """
    Calls to make once the events of the poll being dispatched are handled, before the reactor
    turns again.  Only while ``dispatching`` (a read handler is running) does asking make sense:
    anywhere else nothing would run them until the next poll returns, so callers check it and use
    ``callLater(0)`` otherwise.
    """

    __slots__ = ("dispatching", "calls")

    def __init__(self) -> None:
        self.dispatching = False
        self.calls: list[Callable[[], object]] = []

    def run(self) -> None:
        """Make the calls asked for (each once; one that raises is logged, the rest still run)."""
        while self.calls:
            calls, self.calls = self.calls, []
            for call in calls:
                try:
                    call()
                except Exception:
                    log.err(None, "a call after the poll's dispatch failed")


def _lean_do_poll(self: Any, timeout: float | None) -> None:
    """``EPollReactor.doPoll`` (Twisted 26.10) without the per-event ``callWithLogger``."""
    after: AfterDispatch = self._txvoice_after_dispatch
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
    after.dispatching = True
    try:
        _dispatch(events, selectables, handle)
    finally:
        after.dispatching = False
        if after.calls:
            after.run()


def _dispatch(events: list[tuple[int, int]], selectables: dict[int, Any], handle: Callable[..., Any]) -> None:
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
    reactor._txvoice_after_dispatch = AfterDispatch()  # type: ignore[attr-defined]  # ours, beside the iteration we install
    reactor.doIteration = types.MethodType(_lean_do_poll, reactor)  # type: ignore[method-assign]  # the point
    return True


def after_dispatch(reactor: Any) -> AfterDispatch | None:
    """The :class:`AfterDispatch` of a reactor the lean dispatch was installed on, else None."""
    return getattr(reactor, "_txvoice_after_dispatch", None) if "doIteration" in vars(reactor) else None
