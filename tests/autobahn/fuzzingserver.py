"""Run the Autobahn testsuite's fuzzingserver (``wstest -m fuzzingserver``) against a WebSocket *client*.

The fuzzingserver plays the server; the client under test (by default txvoice's echo testee,
``python -m txvoice.client.testee``, on the voice client's own protocol classes) connects to
``/getCaseCount``, runs every case at ``/runCase?case=N&agent=A`` echoing what it receives, and
finally asks for ``/updateReports?agent=A``.  The verdict comes from ``OUTDIR/index.json``,
checked with :mod:`wstest_harness` (same Python 2.7 env, same case sets, same strict rules).

wstest binds its listening port to all interfaces; this harness starts it through a small
Python 2.7 launcher that pins the listener to 127.0.0.1 and turns off the embedded web server.

Usable from the tests and as a command::

    python tests/autobahn/fuzzingserver.py --set quick --outdir DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent.parent


def _load_harness():
    # By file path: a package named "autobahn" on the path would shadow the real autobahn library.
    name = "txvoice_wstest_harness"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _HERE / "wstest_harness.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


h = _load_harness()
HarnessError = h.HarnessError

DEFAULT_AGENT = "txvoice-client"

# Runs in the Python 2.7 env: install wstest's reactor, make every TCP listener bind 127.0.0.1,
# then hand over to wstest's own command line.
_LAUNCHER_PY27 = r"""
import sys
import autobahntestsuite.choosereactor
from twisted.internet import reactor
_listen = reactor.listenTCP
def listenTCP(port, factory, backlog=50, interface=''):
    return _listen(port, factory, backlog, interface or '127.0.0.1')
reactor.listenTCP = listenTCP
from autobahntestsuite.wstest import run
sys.argv = ['wstest', '-m', 'fuzzingserver', '-s', sys.argv[1], '-u', '0']
run()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def testee_command(url: str, agent: str) -> list[str]:
    """The client under test: txvoice's echo testee in this working tree."""
    return [sys.executable, "-m", "txvoice.client.testee", url, "--agent", agent]


def _wait_listening(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"wstest fuzzingserver exited {proc.returncode} before listening:\n{h._log_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise HarnessError(f"wstest fuzzingserver not listening on 127.0.0.1:{port} after {timeout:.0f}s:\n"
                       f"{h._log_tail(log)}")


def run_fuzzingserver(cases: Sequence[str], outdir: Path | str, agent: str = DEFAULT_AGENT,
                      timeout: float = 1800, exclude: Sequence[str] = (),
                      client_command: Sequence[str] | None = None, wstest: Path | None = None,
                      port: int | None = None) -> tuple[dict, float]:
    """Start the fuzzingserver, run the client against it, return ``(report for agent, seconds)``.

    ``client_command`` defaults to :func:`testee_command`; it must exit 0 after updating the
    reports.  Everything is killed after ``timeout`` seconds (HarnessError).  The spec is in
    ``outdir/fuzzingserver.json``, wstest's output in ``outdir/wstest.log``, the client's in
    ``outdir/client.log``.
    """
    wstest = wstest or h.ensure_wstest()
    out = Path(outdir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.json"
    for stale in [index, out / "index.html", *out.glob(f"{agent}_case_*")]:
        stale.unlink(missing_ok=True)
    port = port or free_port()
    url = f"ws://127.0.0.1:{port}"
    spec = {"url": url, "outdir": str(out), "cases": list(cases), "exclude-cases": list(exclude),
            "exclude-agent-cases": {}}
    spec_path = out / "fuzzingserver.json"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    server_log, client_log = out / "wstest.log", out / "client.log"
    command = list(client_command or testee_command(url, agent))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    deadline = time.monotonic() + timeout
    with open(server_log, "w") as slog:
        server = subprocess.Popen([str(h._wstest_python(wstest)), "-c", _LAUNCHER_PY27, str(spec_path)],
                                  cwd=out, stdout=slog, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=h._clean_env(), start_new_session=True, preexec_fn=h._die_with_parent)
        try:
            _wait_listening(server, port, server_log)
            started = time.monotonic()
            with open(client_log, "w") as clog:
                client = subprocess.Popen(command, cwd=out, stdout=clog, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                          preexec_fn=h._die_with_parent)
                try:
                    rc = client.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    h._kill_group(client)
                    raise HarnessError(f"the client did not finish within {timeout:.0f}s (killed); "
                                       f"last lines of {client_log}:\n{h._log_tail(client_log)}") from None
                except BaseException:
                    h._kill_group(client)
                    raise
            elapsed = time.monotonic() - started
            if rc != 0:
                raise HarnessError(f"the client exited {rc}; last lines of {client_log}:\n{h._log_tail(client_log)}"
                                   f"\n--- wstest ---\n{h._log_tail(server_log)}")
            # /updateReports writes the reports before it answers, but give the file a moment.
            while not index.is_file() and time.monotonic() < deadline and server.poll() is None:
                time.sleep(0.2)
        finally:
            h._kill_group(server)
    if not index.is_file():
        raise HarnessError(f"no {index} after the run; last lines of {server_log}:\n{h._log_tail(server_log)}")
    return json.loads(index.read_text()).get(agent, {}), elapsed


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: exit 0 if every selected case passed, 1 if any failed or is missing, 2 on harness errors."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", dest="set_name", choices=("quick", "full"), default="quick")
    ap.add_argument("--cases", nargs="+", help="explicit wstest case patterns (overrides --set)")
    ap.add_argument("--outdir", required=True, help="report directory")
    ap.add_argument("--agent", default=DEFAULT_AGENT)
    ap.add_argument("--timeout", type=float, help="seconds (default: 900 quick, 3600 full)")
    args = ap.parse_args(argv)
    patterns = args.cases or h.case_patterns(args.set_name)
    timeout = args.timeout or (3600 if args.set_name == "full" or args.cases else 900)
    try:
        wstest = h.ensure_wstest()
        expected = h.expected_case_ids(patterns, wstest=wstest)
        print(f"running {len(expected)} cases against the client ...", flush=True)
        report, elapsed = run_fuzzingserver(patterns, args.outdir, agent=args.agent, timeout=timeout, wstest=wstest)
    except HarnessError as exc:
        print(f"HARNESS ERROR: {exc}", file=sys.stderr)
        return 2
    return h.print_verdict(report, expected, elapsed, args.outdir)


if __name__ == "__main__":
    sys.exit(main())
