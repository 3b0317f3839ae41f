"""The real Autobahn testsuite (wstest fuzzingclient) against the txvoice daemon's echo endpoint.

Starts ``twistd txvoice`` on a free 127.0.0.1 port, runs the quick case set (about 375 cases,
1-2 minutes) and fails on any case that is not OK / NON-STRICT / INFORMATIONAL or is missing.
The first run also builds the Python 2.7 env for wstest (see tests/autobahn/README.md).

Environment:
  TXVOICE_AUTOBAHN_SET=full          run all 517 cases (10-20 minutes) instead of the quick set
  TXVOICE_AUTOBAHN_REPORT_DIR=DIR    keep the wstest report (index.html) there
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.autobahn, pytest.mark.slow]

ECHO_PATH = "/echo"
STARTUP_TIMEOUT = 30.0  # seconds for the daemon to accept connections
RUN_TIMEOUTS = {"quick": 900.0, "full": 3600.0}  # seconds for wstest itself
MAX_LISTED_FAILURES = 80


from wstest_loader import harness

h = harness()


def daemon_command(port: int) -> list[str]:
    """The command line of the daemon under test (one place to adjust its flags)."""
    twistd = Path(sys.executable).parent / "twistd"
    return [
        str(twistd), "-n", "--pidfile=", "txvoice",
        "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--echo-path", ECHO_PATH,
        "--compression",
        # The 9.* cases echo messages of up to 16 MiB; the default limit (1 MiB) would refuse them.
        "--max-message-size", str(16 * 1024 * 1024),
        "--max-message-hard-limit", str(32 * 1024 * 1024),
        # ... and echoes them whole: the per-connection output bound (1 MiB) must hold one of them.
        "--max-output-buffer", str(48 * 1024 * 1024),
        # Its bulk cases send thousands of messages and megabytes a second: lift the rate limits
        # (application policy, tested on their own) so the run measures RFC 6455 conformance.
        "--rate-limit-max-requests", "1000000000",
        "--max-audio-bytes-per-second", "0",
        "--max-connections-per-ip", "0",
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    """Last lines of the daemon log, without Autobahn's per-frame debug lines."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4_000_000))
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    kept = [line for line in text.splitlines() if "#debug]" not in line]
    return "\n".join(kept[-lines:]) or "(only debug lines)"


def _wait_listening(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"daemon exited with {proc.returncode} before listening; "
                        f"command: {daemon_command(port)}\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"daemon not accepting on 127.0.0.1:{port} after {STARTUP_TIMEOUT:.0f}s\n{_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the daemon we started, by its PID: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture
def wstest() -> Path:
    """The wstest executable (builds the Python 2.7 env on first use; never skips)."""
    try:
        return h.ensure_wstest()
    except h.HarnessError as exc:
        pytest.fail(f"cannot set up the Autobahn testsuite: {exc}", pytrace=False)


@pytest.fixture
def daemon(tmp_path: Path):
    """Start the txvoice daemon on a free port; yield its echo URL; stop it afterwards."""
    port = _free_port()
    log = tmp_path / "daemon.log"
    with open(log, "wb") as fh:
        # The daemon runs this working tree's txvoice (the installed plugin imports it from here).
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        proc = subprocess.Popen(daemon_command(port), stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=tmp_path, env=env)
    try:
        _wait_listening(proc, port, log)
        yield f"ws://127.0.0.1:{port}{ECHO_PATH}", proc, log
    finally:
        _stop(proc)


def test_autobahn_fuzzingclient(wstest: Path, daemon, tmp_path: Path) -> None:
    url, proc, daemon_log = daemon
    set_name = os.environ.get("TXVOICE_AUTOBAHN_SET", "quick")
    patterns = h.case_patterns(set_name)
    outdir = Path(os.environ.get("TXVOICE_AUTOBAHN_REPORT_DIR") or tmp_path / "report")

    expected = h.expected_case_ids(patterns, wstest=wstest)  # as wstest resolves them
    universe = h.all_case_ids(wstest)
    assert h.select_cases(universe, patterns) == expected, "harness pattern logic drifted from wstest"

    started = time.monotonic()
    try:
        report = h.run_fuzzingclient(url, patterns, outdir, timeout=RUN_TIMEOUTS[set_name],
                                     wstest=wstest)
    except h.HarnessError as exc:
        pytest.fail(f"{exc}\n--- daemon log ---\n{_tail(daemon_log)}", pytrace=False)
    elapsed = time.monotonic() - started
    summary = f"autobahn {set_name}: {h.format_summary(report)} in {elapsed:.0f}s; report {outdir}"
    print(summary)

    failures = h.check_report(report, expected)
    if proc.poll() is not None:
        failures.append(f"daemon exited with {proc.returncode} during the run")
    if failures:
        shown = failures[:MAX_LISTED_FAILURES]
        if len(failures) > len(shown):
            shown.append(f"... and {len(failures) - len(shown)} more")
        pytest.fail(f"{len(failures)} Autobahn problem(s) among {len(expected)} cases:\n"
                    + "\n".join(shown) + f"\n{summary}\n--- daemon log ---\n{_tail(daemon_log)}",
                    pytrace=False)
