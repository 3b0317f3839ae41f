"""The test helper that stops daemons: a daemon stuck in its shutdown is killed and reported with its stacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from daemons import DaemonShutdownHang, source_env, stop_process

STUCK = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def stuck_in_shutdown():
    time.sleep(60)
print("ready", flush=True)
stuck_in_shutdown()
"""


def test_a_daemon_that_ignores_sigterm_is_killed_and_its_stacks_reported(tmp_path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text("last words of the log\n")
    proc = subprocess.Popen([sys.executable, "-c", STUCK], env=source_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    with pytest.warns(DaemonShutdownHang) as caught:
        code = stop_process(proc, timeout=0.5, log_path=log)
    assert code == -6  # SIGABRT: faulthandler wrote the stacks, then the default action
    message = str(caught[0].message)
    assert "stuck_in_shutdown" in message and "last words of the log" in message


def test_a_daemon_that_stops_is_not_reported(recwarn) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stderr=subprocess.PIPE)
    assert stop_process(proc, timeout=5) == -15
    assert not [w for w in recwarn if issubclass(w.category, DaemonShutdownHang)]
