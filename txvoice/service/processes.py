"""
One server per core on one port: ``--processes N``.

How.  The parent (the ``twistd txvoice`` process) binds N listening TCP sockets to the same
address with ``SO_REUSEPORT`` and keeps all of them open.  It serves connections on the first
one itself and spawns N-1 workers with ``reactor.spawnProcess``, handing worker *i* socket *i*
as its file descriptor 3 (``childFDs``); the worker adopts it with ``reactor.adoptStreamPort``.
A worker is a whole ``twistd txvoice`` running the parent's resolved settings (passed as
``TXVOICE_*`` variables), so every process is a complete, independent server.

Why ``SO_REUSEPORT`` sockets and not one socket shared by every process.  With one shared
listening socket every process's epoll wakes for a new connection and the first to run accepts
it *and everything else queued* (Twisted's ``Port.doRead`` accepts in a loop), so a burst of
connections lands unevenly: 200 connections to 2 processes on this project's 2-core VM split
91/109, 139/61 and 172/28.  Voice sessions last minutes and never move, so that imbalance
stays.  With ``SO_REUSEPORT`` the kernel hashes each connection onto one socket of the group
(the same test: 96/104, 94/106, 114/86).  Twisted cannot set ``SO_REUSEPORT`` itself
(twisted/twisted#9101), so the parent makes the sockets, and making all of them in the parent
has its own merits: one bind (``tcp:0`` resolves once; a bind error fails start-up before
anything is spawned; a privileged port is bound before twistd drops privileges), and the group
never changes while the server runs.  Because the parent holds every socket, a worker's death
resets none of the connections queued on its socket; and whenever a worker is not listening
(starting, restarting, given up on) the parent adopts that socket as well and serves its share,
so no connection waits for a worker.

Supported: ``tcp:`` and ``tcp6:`` listen descriptions, on Linux (elsewhere ``SO_REUSEPORT``
does not balance connections).  TLS (``ssl:``), ``unix:`` and other endpoints are refused with
``--processes`` above 1: terminate TLS in front (a proxy or load balancer) and listen on TCP.

The channels between parent and worker (besides the socket, fd 3):

* the worker's stdin is a pipe the parent never writes to: when it reads end-of-file the parent
  is gone (however it died) and the worker stops, gracefully;
* the worker's stdout carries its log events as JSON lines (``eventAsJSON``); the parent
  publishes them again with ``worker`` and ``worker_pid`` fields, so one log has every process;
  its stderr is logged line by line as warnings (tracebacks before logging starts);
* fd 4 carries one line, ``listening``, once the worker has adopted its socket.

A worker that exits is started again after a delay that doubles from 1 s up to 30 s; a worker
that ran 30 s counts as healthy again; after 10 quick failures in a row it is given up on (the
parent keeps serving its socket).  On the parent's graceful stop every worker gets SIGTERM
(and closes its sessions with 1001, like the parent), then SIGKILL after ``shutdown_timeout``
+ 5 s.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet import abstract, fdesc
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ReactorNotRunning
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    Logger,
    eventFromJSON,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.web.server import Site

from txvoice.config import ENV_PREFIX, VoiceConfig, current_config
from txvoice.logging import level_predicate
from txvoice.service.listener import ListenerService

#: In a worker: the listening socket, and the pipe on which it says it is listening.
LISTEN_FD = 3
CONTROL_FD = 4
#: Set by the parent in a worker's environment (1..N-1); never set it yourself.
WORKER_ENV = ENV_PREFIX + "WORKER_INDEX"
MAX_PROCESSES = 256
#: Extra seconds a worker gets beyond ``shutdown_timeout`` before SIGKILL, then after SIGKILL.
STOP_GRACE = 5.0
KILL_WAIT = 5.0
#: Longest line accepted from a worker's stdout or stderr (longer ones are dropped).
MAX_LINE = 1 << 20

log = Logger(namespace="txvoice.service.processes")


# ------------------------------------------------------------------------------ settings


def process_count(setting: int) -> int:
    """The number of processes ``--processes`` asks for (0: one per CPU this process may use)."""
    if setting < 0 or setting > MAX_PROCESSES:
        raise ValueError(f"--processes must be between 0 (one per CPU) and {MAX_PROCESSES}, not {setting}")
    if setting == 0:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    return setting


@dataclass(frozen=True)
class TCPListen:
    """A ``tcp:``/``tcp6:`` listen description, parsed."""

    port: int
    interface: str
    backlog: int
    family: socket.AddressFamily


_TCP_POSITIONAL = {"tcp": ("port", "interface", "backlog"), "tcp6": ("port", "backlog", "interface")}


def _split(description: str) -> list[str]:
    r"""Split on ``:`` like Twisted's endpoint parser (``\:`` is a literal colon)."""
    parts, current, chars = [], [], iter(description)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def parse_tcp_listen(description: str) -> TCPListen:
    """
    Parse ``tcp:PORT[:interface=ADDR][:backlog=N]`` or ``tcp6:...`` (Twisted's syntax); anything
    else is a ValueError saying what ``--processes`` supports.
    """
    parts = _split(description.strip())
    kind = parts[0].lower()
    if kind not in _TCP_POSITIONAL:
        raise ValueError(
            f"--processes above 1 needs a tcp: or tcp6: --listen description (e.g. tcp:8765:interface=0.0.0.0), "
            f"not {kind or description!r}: terminate TLS in front of txvoice, or run one process"
        )
    values: dict[str, str] = {"interface": "" if kind == "tcp" else "::", "backlog": "50"}
    positional = list(_TCP_POSITIONAL[kind])
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            if key not in _TCP_POSITIONAL[kind]:
                raise ValueError(f"{description!r}: unknown parameter {key!r} for {kind}:")
            values[key] = value
            if key in positional:
                positional.remove(key)
        elif positional:
            values[positional.pop(0)] = part
        else:
            raise ValueError(f"{description!r}: too many parameters for {kind}:")
    if "port" not in values:
        raise ValueError(f"{description!r}: no port")
    try:
        port, backlog = int(values["port"]), int(values["backlog"])
    except ValueError:
        raise ValueError(f"{description!r}: port and backlog must be integers") from None
    interface = values["interface"]
    family = socket.AF_INET6 if (kind == "tcp6" or ":" in interface) else socket.AF_INET
    return TCPListen(port, interface, backlog, family)


# ------------------------------------------------------------------------------ the sockets


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
        return self.socket(0).getsockname()[1]

    def close(self) -> None:
        sockets, self.sockets = self.sockets, []
        for s in sockets:
            s.close()


class SharedListenerService(ListenerService):
    """The parent's listener: adopts socket 0 of the group."""

    def __init__(self, reactor, listeners: ReusePortListeners, site: Site) -> None:
        super().__init__(reactor, f"reuseport:{listeners.spec.interface}:{listeners.spec.port}", site)
        self.listeners = listeners

    def privilegedStartService(self) -> None:
        self.listeners.bind()
        super().privilegedStartService()

    def listen(self) -> IListeningPort:
        return self.reactor.adoptStreamPort(self.listeners.socket(0).fileno(), self.listeners.family, self.site)


class WorkerListenerService(ListenerService):
    """A worker's listener: adopts the socket its parent passed as fd 3, then says so on fd 4."""

    def __init__(self, reactor, site: Site, listen_fd: int = LISTEN_FD, control_fd: int = CONTROL_FD) -> None:
        super().__init__(reactor, f"fd:{listen_fd}", site)
        self.listen_fd = listen_fd
        self.control_fd = control_fd

    def listen(self) -> IListeningPort:
        inherited = socket.socket(fileno=self.listen_fd)  # family and type read from the socket
        try:
            inherited.setblocking(False)
            port = self.reactor.adoptStreamPort(inherited.fileno(), inherited.family, self.site)
        finally:
            inherited.close()  # adoptStreamPort keeps a duplicate; the parent keeps the socket
        try:
            os.write(self.control_fd, b"listening\n")
            os.close(self.control_fd)
        except OSError:
            pass  # not started by a parent that listens for it
        return port


# ------------------------------------------------------------------------------ the worker side


def worker_index(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's worker index when a txvoice parent spawned it, else None."""
    raw = (os.environ if environ is None else environ).get(WORKER_ENV)
    return int(raw) if raw else None


class _ParentPipe(abstract.FileDescriptor):
    """Reads the pipe the parent holds open; end-of-file means the parent is gone."""

    def __init__(self, reactor, fd: int, gone: Callable[[], None]) -> None:
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

    name = "parent-watch"  # type: ignore[assignment]  # Twisted declares Service.name as None

    def __init__(self, reactor, fd: int = 0, signals: bool = True) -> None:
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


# ------------------------------------------------------------------------------ the parent side


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
            "--logger", f"{__name__}.worker_log_observer"]
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

    def __init__(self, owner: "WorkerProcesses", index: int, publish: Callable[[dict], None]) -> None:
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
        self.ended: Deferred | None = None
        self.given_up = False


class WorkerProcesses(Service):
    """
    Keeps N-1 worker processes serving the group's sockets 1..N-1 (the parent serves socket 0):
    spawns them, restarts them with backoff, stops them on the parent's stop, and adopts the
    socket of any worker that is not listening.
    """

    name = "processes"  # type: ignore[assignment]  # Twisted declares Service.name as None

    def __init__(
        self,
        reactor: Any,
        config: VoiceConfig,
        listeners: ReusePortListeners,
        site: Site,
        spawner: Spawner | None = None,
        publish: Callable[[dict], None] | None = None,
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

    def stopService(self) -> Deferred:
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
        return self.reactor.spawnProcess(
            protocol, argv[0], argv, env=env,
            childFDs={0: "w", 1: "r", 2: "r", LISTEN_FD: sock.fileno(), CONTROL_FD: "r"},
        )

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
