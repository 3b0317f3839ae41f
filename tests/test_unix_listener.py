"""
The daemon on a UNIX socket (what a local reverse proxy connects to): every client arrives with the
same peer, so the per-IP connection limit must not cap them all together; with ``--trusted-proxies
unix`` the proxy's ``X-Forwarded-For`` gives each client its own address again.
"""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack

from websockets.exceptions import InvalidStatus
from websockets.sync.client import unix_connect

from daemons import TWISTD, source_env, stop_process


class UnixDaemon:
    """``twistd -n txvoice`` listening on a UNIX socket in ``tmp_path``."""

    def __init__(self, tmp_path, *args: str) -> None:
        self.sock = tmp_path / "txvoice.sock"
        self.log_path = tmp_path / "twistd.log"
        self.proc = subprocess.Popen(
            [TWISTD, "--nodaemon", "--pidfile=", "--logfile", str(self.log_path), "txvoice",
             "--pipeline", "echo", "--listen", f"unix:{self.sock}", *args],
            env=source_env(), cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the daemon did not create its socket: {self.proc.stderr.read().decode()}")
            time.sleep(0.1)

    def connect(self, forwarded_for: str | None = None):
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        return unix_connect(str(self.sock), "ws://localhost/", additional_headers=headers,
                            open_timeout=5, close_timeout=3)

    def status(self, forwarded_for: str | None = None) -> int:
        try:
            with self.connect(forwarded_for) as conn:
                assert json.loads(conn.recv(timeout=5))["type"] == "connect"
                return 101
        except InvalidStatus as e:
            return e.response.status_code

    def stop(self) -> int:
        return stop_process(self.proc, log_path=self.log_path)


def test_clients_of_a_unix_socket_are_limited_by_the_total_not_per_ip(tmp_path) -> None:
    daemon = UnixDaemon(tmp_path, "--max-connections-per-ip", "2", "--max-connections", "4")
    try:
        with ExitStack() as held:
            for _ in range(4):  # twice the per-IP limit
                conn = held.enter_context(daemon.connect())
                assert json.loads(conn.recv(timeout=5))["type"] == "connect"
            assert daemon.status() == 503  # server_full: the total still applies
        assert daemon.status() == 101  # room again once the others left
        assert f"txvoice listening on unix:{daemon.sock}" in daemon.log_path.read_text()
    finally:
        daemon.stop()


def test_a_trusted_unix_socket_proxy_passes_on_its_clients_addresses(tmp_path) -> None:
    daemon = UnixDaemon(tmp_path, "--trusted-proxies", "unix", "--max-connections-per-ip", "2")
    try:
        with ExitStack() as held:
            for _ in range(2):
                conn = held.enter_context(daemon.connect("203.0.113.7"))
                assert json.loads(conn.recv(timeout=5))["type"] == "connect"
            assert daemon.status("203.0.113.7") == 429  # that client is at its limit
            assert daemon.status("198.51.100.1") == 101  # another client of the same proxy is not
    finally:
        daemon.stop()
