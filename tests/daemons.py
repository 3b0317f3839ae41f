"""Start and stop a real txvoice daemon (`twistd -n txvoice`) on loopback for tests."""


from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(BIN / "twistd")


def source_env(**extra: str) -> dict[str, str]:
    """The environment for a twistd subprocess that runs this working tree's txvoice."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_daemon(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
    twistd_args: tuple[str, ...] = (),
) -> Daemon:
    """Start the daemon on a free loopback port and wait until ``/health`` answers."""
    port = free_port()
    log_path = tmp_path / f"twistd-{port}.log"
    # The daemon runs the working tree's code (the installed plugin imports txvoice from here).
    full_env = source_env(**(env or {}))
    full_env.pop("TXVOICE_LISTEN", None)
    if "--pipeline" not in args:
        args = ("--pipeline", "echo", *args)  # tests of the server itself use the echo pipeline
    log_args = list(twistd_args) or ["--logfile", str(log_path)]
    cmd = [TWISTD, "--nodaemon", "--pidfile=", *log_args, "txvoice",
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
