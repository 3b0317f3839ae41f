"""Start and stop a real txvoice daemon (`twistd -n txvoice`) on loopback for tests."""


from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path


BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(BIN / "twistd")


def source_env(**extra: str) -> dict[str, str]:
    """
    The environment for a twistd subprocess that runs this working tree's txvoice (with
    ``faulthandler`` on, so a daemon that will not stop can be made to show where it is stuck).
    """
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1", **extra}


class DaemonShutdownHang(UserWarning):
    """A daemon did not stop within its time after SIGTERM (it was killed; the stacks say where it was)."""


def stop_process(proc: subprocess.Popen, timeout: float = 15.0, log_path: Path | None = None) -> int:
    """
    Stop a daemon we started, by its PID: SIGTERM, and if it has not ended after ``timeout``,
    SIGABRT (faulthandler prints every thread's stack to its stderr), then SIGKILL.  A hang is
    reported as a :class:`DaemonShutdownHang` warning with those stacks and the log's tail, so it
    shows in the test run; tests of the shutdown itself check the return code (-6 or -9 then).
    """
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    proc.send_signal(signal.SIGABRT)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr is not None else ""
    log_tail = log_path.read_text(errors="replace")[-4000:] if log_path is not None and log_path.exists() else ""
    warnings.warn(DaemonShutdownHang(
        f"pid {proc.pid} ({' '.join(map(str, proc.args))}) had not stopped {timeout:.0f}s after SIGTERM; "
        f"stacks at SIGABRT:\n{stderr[-8000:]}\nlog tail:\n{log_tail}"
    ))
    return proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(http: str, name: str, **labels: str) -> float:
    """
    One series of a daemon's ``/metrics`` (``http``: its base URL): ``name`` with exactly ``labels``
    (in any order); 0 when it is not there yet.
    """
    with urllib.request.urlopen(http + "/metrics", timeout=10) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+)$", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))) == want:
            return float(m.group(3))
    return 0.0


@dataclass
class Daemon:
    """A ``twistd -n txvoice`` subprocess listening on 127.0.0.1."""

    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        return stop_process(self.proc, timeout, self.log_path)


def start_daemon(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
    twistd_args: tuple[str, ...] = (),
    port: int | None = None,
    twistd_prefix: tuple[str, ...] = (),
) -> Daemon:
    """
    Start the daemon on a free loopback port (or ``port``: a restart) and wait until ``/health``
    answers; ``twistd_prefix`` runs it through a command first (``taskset -c 0``).
    """
    port = port or free_port()
    log_path = tmp_path / f"twistd-{port}.log"
    # The daemon runs the working tree's code (the installed plugin imports txvoice from here).
    full_env = source_env(**(env or {}))
    full_env.pop("TXVOICE_LISTEN", None)
    if "--pipeline" not in args:
        args = ("--pipeline", "echo", *args)  # tests of the server itself use the echo pipeline
    log_args = list(twistd_args) or ["--logfile", str(log_path)]
    cmd = [*twistd_prefix, TWISTD, "--nodaemon", "--pidfile=", *log_args, "txvoice",
           "--listen", f"tcp:{port}:interface=127.0.0.1", *args]
    stdout = open(log_path, "wb") if twistd_args else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=full_env, cwd=str(tmp_path), stdout=stdout, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode}: {proc.stderr.read().decode()}\n{log_path.read_text() if log_path.exists() else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return Daemon(proc, port, log_path)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"daemon did not answer /health within {timeout}s")
