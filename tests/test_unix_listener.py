"""
The daemon on a UNIX socket (what a local reverse proxy connects to): every client arrives with the
same peer, so the per-IP connection limit must not cap them all together.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from contextlib import ExitStack

from websockets.exceptions import InvalidStatus
from websockets.sync.client import unix_connect

from daemons import TWISTD, source_env


def test_clients_of_a_unix_socket_are_limited_by_the_total_not_per_ip(tmp_path) -> None:
    sock = tmp_path / "txvoice.sock"
    proc = subprocess.Popen(
        [TWISTD, "--nodaemon", "--pidfile=", "--logfile", str(tmp_path / "twistd.log"), "txvoice",
         "--pipeline", "echo", "--listen", f"unix:{sock}", "--max-connections-per-ip", "2", "--max-connections", "4"],
        env=source_env(), cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the daemon did not create its socket"
            time.sleep(0.1)

        def connect():
            return unix_connect(str(sock), "ws://localhost/", open_timeout=5, close_timeout=3)

        with ExitStack() as held:
            for _ in range(4):  # twice the per-IP limit
                conn = held.enter_context(connect())
                assert json.loads(conn.recv(timeout=5))["type"] == "connect"
            try:
                with connect():
                    status = 101
            except InvalidStatus as e:
                status = e.response.status_code
            assert status == 503  # server_full: the total still applies
        with connect() as conn:  # room again once the others left
            assert json.loads(conn.recv(timeout=5))["type"] == "connect"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
