"""
The worker side of ``--processes N`` (see :mod:`txvoice.service.processes`): knowing that this
process is a worker, stopping when the parent goes away or on the first signal, and logging as
JSON lines on stdout for the parent to relay.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet import abstract, fdesc
from twisted.internet.error import ReactorNotRunning
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    jsonFileLogObserver,
)
from twisted.python.failure import Failure

from txvoice.config import ENV_PREFIX, current_config
from txvoice.logging import level_predicate

#: Set by the parent in a worker's environment (1..N-1); never set it yourself.
WORKER_ENV = ENV_PREFIX + "WORKER_INDEX"

log = Logger(namespace="txvoice.service.processes")  # one namespace for every part of --processes


def worker_index(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's worker index when a txvoice parent spawned it, else None."""
    raw = (os.environ if environ is None else environ).get(WORKER_ENV)
    return int(raw) if raw else None


class _ParentPipe(abstract.FileDescriptor):
    """Reads the pipe the parent holds open; end-of-file means the parent is gone."""

    def __init__(self, reactor: Any, fd: int, gone: Callable[[], None]) -> None:
        super().__init__(reactor)
        self.fd = fd
        self.gone = gone
        fdesc.setNonBlocking(fd)

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Any:
        return fdesc.readFromFD(self.fd, lambda data: None)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.gone()


class ParentWatchService(Service):
    """
    In a worker: stop gracefully when the parent process goes away (end-of-file on the pipe the
    parent holds), and on the first SIGTERM or SIGINT only.  A signal to the whole process group
    (Ctrl-C, ``timeout``, systemd's control-group stop) followed by the parent's own SIGTERM is
    the usual case, and twistd would log a ReactorNotRunning traceback for the second one.
    """

    name = "parent-watch"

    def __init__(self, reactor: Any, fd: int = 0, signals: bool = True) -> None:
        self.reactor = reactor
        self.fd = fd
        self.signals = signals
        self.stopping = False
        self._pipe: _ParentPipe | None = None

    def startService(self) -> None:
        super().startService()
        self._pipe = _ParentPipe(self.reactor, self.fd, lambda: self.stopWorker("the parent process is gone"))
        self._pipe.startReading()
        if self.signals:
            # After the handlers the reactor installs "during startup" (twistd starts services before).
            self.reactor.callWhenRunning(self._installSignals)

    def _installSignals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._signalled)

    def stopService(self) -> None:
        super().stopService()
        self.stopping = True
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.stopReading()

    def _signalled(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.stopWorker, f"received {signal.Signals(signum).name}")

    def stopWorker(self, why: str) -> None:
        """Stop the reactor (and so this worker's services), once."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping worker {worker}: {why}", worker=worker_index(), why=why, worker_pid=os.getpid())
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass


def worker_log_observer() -> ILogObserver:
    """
    ``twistd --logger`` factory of a worker: its events, filtered by its levels, as JSON lines
    on stdout, which its parent reads and logs.
    """
    config = current_config()
    return FilteringLogObserver(
        jsonFileLogObserver(sys.stdout, recordSeparator=""),
        [level_predicate(config.log_levels, debug=config.debug)],
    )
