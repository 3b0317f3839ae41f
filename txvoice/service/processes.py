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

The parts, one module each, whose public names this module re-exports: the settings
(:mod:`~txvoice.service.listen_settings`), the sockets (:mod:`~txvoice.service.reuseport`), the
worker side (:mod:`~txvoice.service.workerside`) and the parent side
(:mod:`~txvoice.service.parentside`).
"""

from __future__ import annotations

from txvoice.service.listen_settings import (
    MAX_PROCESSES,
    TCPListen,
    parse_tcp_listen,
    process_count,
)
from txvoice.service.parentside import (
    KILL_WAIT,
    MAX_LINE,
    STOP_GRACE,
    RestartBackoff,
    Spawner,
    WorkerProcesses,
    WorkerProtocol,
    worker_argv,
    worker_environment,
)
from txvoice.service.reuseport import (
    CONTROL_FD,
    LISTEN_FD,
    ReusePortListeners,
    SharedListenerService,
    WorkerListenerService,
)
from txvoice.service.workerside import (
    WORKER_ENV,
    ParentWatchService,
    worker_index,
    worker_log_observer,
)

__all__ = [
    "CONTROL_FD",
    "KILL_WAIT",
    "LISTEN_FD",
    "MAX_LINE",
    "MAX_PROCESSES",
    "STOP_GRACE",
    "WORKER_ENV",
    "ParentWatchService",
    "RestartBackoff",
    "ReusePortListeners",
    "SharedListenerService",
    "Spawner",
    "TCPListen",
    "WorkerListenerService",
    "WorkerProcesses",
    "WorkerProtocol",
    "parse_tcp_listen",
    "process_count",
    "worker_argv",
    "worker_environment",
    "worker_index",
    "worker_log_observer",
]
