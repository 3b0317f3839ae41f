"""
The parent side of ``--processes N`` (see :mod:`txvoice.service.processes`): spawning the N-1
worker processes with their settings and socket, relaying their logs, restarting them with
backoff, stopping them, and serving the socket of any worker that is not listening.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import (
    Logger,
    LogLevel,
    eventFromJSON,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from twisted.web.server import Site

from txvoice.config import ENV_PREFIX, VoiceConfig
from txvoice.service.reuseport import CONTROL_FD, LISTEN_FD, ReusePortListeners
from txvoice.service.workerside import WORKER_ENV, worker_log_observer

#: Extra seconds a worker gets beyond ``shutdown_timeout`` before SIGKILL, then after SIGKILL.
STOP_GRACE = 5.0
KILL_WAIT = 5.0
#: Longest line accepted from a worker's stdout or stderr (longer ones are dropped).
MAX_LINE = 1 << 20

log = Logger(namespace="txvoice.service.processes")  # one namespace for every part of --processes


def worker_environment(config: VoiceConfig, index: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The parent's environment with every setting of ``config`` as ``TXVOICE_*`` (no file)."""
    env = {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX)}
    for f in fields(VoiceConfig):
        value = getattr(config, f.name)
        env[ENV_PREFIX + f.name.upper()] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    env[WORKER_ENV] = str(index)
    return env


def worker_argv(reactor: Any) -> list[str]:
    """``twistd -n txvoice`` on this interpreter and this reactor, logging JSON to stdout."""
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
            "--logger", f"{worker_log_observer.__module__}.{worker_log_observer.__qualname__}"]
    from twisted.application.reactors import getReactorTypes

    module = type(reactor).__module__
    for installable in getReactorTypes():
        if getattr(installable, "moduleName", None) == module:  # a Twisted Reactor plugin's attribute
            argv.append(f"--reactor={installable.shortName}")
            break
    return argv + ["txvoice"]


@dataclass
class RestartBackoff:
    """
    When to start a worker again: ``initial`` seconds after its first quick failure, doubling up
    to ``maximum``; a worker that ran ``stable_after`` seconds starts the count afresh; at the
    ``max_failures``-th quick failure in a row, never (None).
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 30.0
    stable_after: float = 30.0
    max_failures: int = 10
    failures: int = 0

    def next_delay(self, ran_for: float) -> float | None:
        if ran_for >= self.stable_after:
            self.failures = 0
        self.failures += 1
        if self.failures >= self.max_failures:
            return None
        return min(self.maximum, self.initial * self.factor ** (self.failures - 1))


class WorkerProtocol(ProcessProtocol):
    """One worker process, seen from the parent: relays its logs, reports it listening and ending."""

    def __init__(self, owner: "WorkerProcesses", index: int, publish: Callable[[dict[str, Any]], None]) -> None:
        self.owner = owner
        self.index = index
        self.publish = publish
        self.pid: int | None = None
        self._buffers: dict[int, bytes] = {1: b"", 2: b"", CONTROL_FD: b""}

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._buffers.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._buffers[childFD] = rest if len(rest) <= MAX_LINE else b""
        for line in lines:
            if childFD == 1:
                self.relayEvent(line)
            elif childFD == 2:
                if line.strip():
                    log.warn("worker {worker} stderr: {line}", worker=self.index, worker_pid=self.pid,
                             line=line.decode("utf-8", "replace"))
            elif childFD == CONTROL_FD and line.strip() == b"listening":
                self.owner.workerListening(self)

    def relayEvent(self, line: bytes) -> None:
        """Publish one of the worker's events in this process, marked with the worker."""
        line = line.strip()
        if not line:
            return
        try:
            event = eventFromJSON(line.decode("utf-8"))
        except ValueError:
            log.warn("worker {worker}: {line}", worker=self.index, worker_pid=self.pid, line=line.decode("utf-8", "replace"))
            return
        level = event.get("log_level")
        if not isinstance(level, type(LogLevel.info)):
            event["log_level"] = LogLevel.info
        event["worker"] = self.index
        event["worker_pid"] = self.pid
        system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{event['log_level'].name}"
        event["log_system"] = f"{system} worker {self.index}"
        self.publish(event)

    def processEnded(self, reason: Failure) -> None:
        self.owner.workerEnded(self, reason)


Spawner = Callable[[WorkerProtocol, int, socket.socket], IProcessTransport]


class _Slot:
    """Worker *index*: its current process, covering port, restart timer and backoff."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.protocol: WorkerProtocol | None = None
        self.process: IProcessTransport | None = None
        self.started_at = 0.0
        self.listening = False
        self.covering: IListeningPort | None = None
        self.restart: IDelayedCall | None = None
        self.backoff = RestartBackoff()
        self.ended: Deferred[None] | None = None
        self.given_up = False


class WorkerProcesses(Service):
    """
    Keeps N-1 worker processes serving the group's sockets 1..N-1 (the parent serves socket 0):
    spawns them, restarts them with backoff, stops them on the parent's stop, and adopts the
    socket of any worker that is not listening.
    """

    name = "processes"

    def __init__(
        self,
        reactor: Any,
        config: VoiceConfig,
        listeners: ReusePortListeners,
        site: Site,
        spawner: Spawner | None = None,
        publish: Callable[[dict[str, Any]], None] | None = None,
        backoff: Callable[[], RestartBackoff] = RestartBackoff,
        session_tokens: bool = False,
    ) -> None:
        self.reactor = reactor
        self.session_tokens = session_tokens
        self.config = config
        self.listeners = listeners
        self.site = site
        self.spawner = spawner or self.spawnWorker
        self.publish = publish or globalLogPublisher
        self.slots = [_Slot(i) for i in range(1, listeners.count)]
        for slot in self.slots:
            slot.backoff = backoff()
        self.stopping = False

    # the service

    def privilegedStartService(self) -> None:
        self.listeners.bind()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        self.listeners.bind()
        log.info("serving port {port} from {count} processes (this one and {workers} workers)",
                 port=self.listeners.port, count=self.listeners.count, workers=len(self.slots))
        if self.session_tokens:
            log.warn("session tokens (POST /auth/websocket) are kept per process: an upgrade that presents one "
                     "may reach another process and be refused; authenticate upgrades with the JWT itself "
                     "(see doc/operations.md, 'One server per core')")
        for slot in self.slots:
            self.cover(slot)
            self.start(slot)

    def stopService(self) -> Deferred[None]:
        """SIGTERM every worker, SIGKILL what is left after ``shutdown_timeout`` + 5 s; fire when all ended."""
        super().stopService()
        self.stopping = True
        waits = []
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None
            self.uncover(slot)
            if slot.process is not None and slot.ended is not None:
                waits.append(slot.ended)
                self.signal(slot, "TERM")
        self.listeners.close()  # the workers hold their own; the parent no longer needs any
        if not waits:
            return succeed(None)
        done: Deferred[None] = Deferred()
        remaining = [len(waits)]

        def ended(_: object) -> None:
            remaining[0] -= 1
            if remaining[0] == 0 and not done.called:
                for timer in timers:
                    if timer.active():
                        timer.cancel()
                done.callback(None)

        def kill() -> None:
            for slot in self.slots:
                if slot.process is not None:
                    log.warn("worker {worker} (pid {worker_pid}) did not stop in time; killing it",
                             worker=slot.index, worker_pid=slot.protocol.pid if slot.protocol else None)
                    self.signal(slot, "KILL")
            timers.append(self.reactor.callLater(KILL_WAIT, give_up))

        def give_up() -> None:
            if not done.called:
                log.error("{count} worker(s) still running after SIGKILL; not waiting for them", count=remaining[0])
                done.callback(None)

        timers = [self.reactor.callLater(self.config.shutdown_timeout + STOP_GRACE, kill)]
        for wait in waits:
            wait.addBoth(ended)
        return done

    # one worker

    def spawnWorker(self, protocol: WorkerProtocol, index: int, sock: socket.socket) -> IProcessTransport:
        """Start ``twistd txvoice`` as worker ``index`` with ``sock`` as its fd 3."""
        argv = worker_argv(self.reactor)
        env = worker_environment(self.config, index, os.environ)
        process: IProcessTransport = self.reactor.spawnProcess(
            protocol, argv[0], argv, env=env,
            childFDs={0: "w", 1: "r", 2: "r", LISTEN_FD: sock.fileno(), CONTROL_FD: "r"},
        )
        return process

    def start(self, slot: _Slot) -> None:
        slot.restart = None
        if self.stopping:
            return
        slot.protocol = WorkerProtocol(self, slot.index, self.publish)
        slot.ended = Deferred()
        slot.listening = False
        slot.started_at = self.reactor.seconds()
        try:
            slot.process = self.spawner(slot.protocol, slot.index, self.listeners.socket(slot.index))
        except Exception:
            log.failure("could not start worker {worker}", worker=slot.index)
            slot.process = None
            self.scheduleRestart(slot, ran_for=0.0)
            return
        log.info("worker {worker} started (pid {worker_pid})", worker=slot.index, worker_pid=getattr(slot.process, "pid", None))

    def workerListening(self, protocol: WorkerProtocol) -> None:
        slot = self.slots[protocol.index - 1]
        if slot.protocol is not protocol:
            return
        slot.listening = True
        self.uncover(slot)
        log.info("worker {worker} (pid {worker_pid}) is listening", worker=slot.index, worker_pid=protocol.pid)

    def workerEnded(self, protocol: WorkerProtocol, reason: Failure) -> None:
        slot = self.slots[protocol.index - 1]
        if slot.protocol is not protocol:
            return
        ran_for = self.reactor.seconds() - slot.started_at
        slot.process = None
        slot.listening = False
        ended, slot.ended = slot.ended, None
        how = "exited normally" if reason.check(ProcessDone) else str(reason.value)
        if self.stopping:
            log.info("worker {worker} (pid {worker_pid}) stopped: {how}", worker=slot.index, worker_pid=protocol.pid, how=how)
        else:
            log.warn("worker {worker} (pid {worker_pid}) ended after {ran_for:.1f} s: {how}",
                     worker=slot.index, worker_pid=protocol.pid, ran_for=ran_for, how=how)
            self.cover(slot)
            self.scheduleRestart(slot, ran_for)
        if ended is not None:
            ended.callback(None)

    def scheduleRestart(self, slot: _Slot, ran_for: float) -> None:
        if self.stopping:
            return
        delay = slot.backoff.next_delay(ran_for)
        if delay is None:
            slot.given_up = True
            log.critical("worker {worker} failed {failures} times in a row; not starting it again "
                         "(this process keeps serving its share)", worker=slot.index, failures=slot.backoff.max_failures)
            return
        log.info("starting worker {worker} again in {delay:.1f} s", worker=slot.index, delay=delay)
        slot.restart = self.reactor.callLater(delay, self.start, slot)

    def signal(self, slot: _Slot, name: str) -> None:
        if slot.process is None:
            return
        try:
            slot.process.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            pass

    # covering a worker's socket while it is not listening

    def cover(self, slot: _Slot) -> None:
        if slot.covering is None and not self.stopping:
            slot.covering = self.reactor.adoptStreamPort(
                self.listeners.socket(slot.index).fileno(), self.listeners.family, self.site)

    def uncover(self, slot: _Slot) -> None:
        port, slot.covering = slot.covering, None
        if port is not None:
            port.stopListening()
