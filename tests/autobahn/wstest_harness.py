"""Run the Autobahn WebSocket testsuite (``wstest -m fuzzingclient``) against a server.

autobahntestsuite only runs on Python 2.7, so this module builds (once, cached) a Python 2.7
virtualenv holding ``autobahntestsuite==25.10.1`` and drives ``wstest`` as a subprocess.

``wstest`` exits 0 even when cases fail or the server is unreachable, so the verdict comes
from the report's ``index.json``, checked against the list of case ids that wstest itself
resolves from the case patterns (so a case missing from the report is a failure too).

Usable as a module (from the tests) and as a command::

    python tests/autobahn/wstest_harness.py --url ws://127.0.0.1:9000/echo --set quick --outdir DIR

This file only needs the Python 3 standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

AUTOBAHNTESTSUITE_VERSION = "25.10.1"
VIRTUALENV_VERSION = "20.21.1"  # the last virtualenv that can create Python 2.7 environments

#: Environment variables understood by this module.
ENV_VENV = "TXVOICE_WSTEST_VENV"  # where the Python 2.7 env lives
ENV_PYTHON27 = "TXVOICE_PYTHON27"  # explicit Python 2.7 interpreter

DEFAULT_CACHE_DIR = Path("~/.cache/txvoice/wstest-py27")

#: Behaviours that count as a pass, for both ``behavior`` and ``behaviorClose``.
PASSING_BEHAVIORS = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})

#: Sub-cases 1..6 of every 12.x / 13.x (compression) group: the full groups take 10-16 minutes.
QUICK_PATTERNS: tuple[str, ...] = (
    "1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*",
    "12.*.[1-6]$", "13.*.[1-6]$",
)
FULL_PATTERNS: tuple[str, ...] = ("*",)

_MARKER = ".txvoice-wstest-ok"  # written last: an env without it is incomplete
_BUILDING = ".txvoice-wstest-building"  # written first: lets us delete our own half-built env
_INSTALL_TIMEOUT = 900  # seconds, per install step
_LOCK_TIMEOUT = 1200  # seconds to wait for another process building the same env


class HarnessError(RuntimeError):
    """The harness itself could not run (no Python 2.7, install failed, wstest crashed...)."""


# --------------------------------------------------------------------------------------------
# Case patterns
# --------------------------------------------------------------------------------------------

def case_patterns(set_name: str) -> list[str]:
    """Return the wstest case patterns of the named set: ``"quick"`` (CI) or ``"full"`` (all)."""
    if set_name == "quick":
        return list(QUICK_PATTERNS)
    if set_name == "full":
        return list(FULL_PATTERNS)
    raise ValueError(f"unknown case set {set_name!r} (expected 'quick' or 'full')")


def case_id_key(case_id: str) -> tuple[int, ...]:
    """Sort key of a case id: ``"12.1.10"`` -> ``(12, 1, 10)``."""
    return tuple(int(x) for x in case_id.split("."))


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile a wstest case pattern exactly as wstest does (``.`` literal, ``*`` -> ``.*``).

    wstest uses ``re.match``: anchored at the start only, so ``"12.*.1"`` also matches
    ``12.1.10``; write ``"12.*.1$"`` to stop that.
    """
    return re.compile(pattern.replace(".", r"\.").replace("*", ".*"))


def select_cases(
    universe: Iterable[str], patterns: Iterable[str], exclude: Iterable[str] = ()
) -> list[str]:
    """Resolve case patterns against the known case ids, the way wstest's ``CaseSet`` does.

    A pattern with ``*`` is a regex (see :func:`pattern_regex`); one without is a literal id,
    which must exist. Returns the ids sorted numerically, without duplicates or excluded ids.
    """
    known = set(universe)

    def resolve(pats: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for pat in pats:
            if "*" in pat:
                rx = pattern_regex(pat)
                out.update(c for c in known if rx.match(c))
            elif pat in known:
                out.add(pat)
            else:
                raise ValueError(f"unknown case id {pat!r} (no '*', so it is not a pattern)")
        return out

    return sorted(resolve(patterns) - resolve(exclude), key=case_id_key)


# --------------------------------------------------------------------------------------------
# The Python 2.7 environment
# --------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """The 2.7 env location: ``$TXVOICE_WSTEST_VENV`` or ``~/.cache/txvoice/wstest-py27``."""
    return Path(os.environ.get(ENV_VENV) or DEFAULT_CACHE_DIR).expanduser()


def _is_python27(exe: str) -> bool:
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30, check=False, env=_clean_env(),
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == "2.7"


def _pyenv_root() -> Path | None:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    if shutil.which("pyenv"):
        try:
            out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    home = Path("~/.pyenv").expanduser()
    return home if home.is_dir() else None


def find_python27() -> Path:
    """Find a working Python 2.7 interpreter or raise :class:`HarnessError` saying how to get one.

    Looks at ``$TXVOICE_PYTHON27``, then pyenv's ``versions/2.7.*``, then ``python2.7`` /
    ``python2`` on PATH (pyenv shims that are not activated are rejected by running them).
    """
    candidates: list[str] = []
    explicit = os.environ.get(ENV_PYTHON27)
    if explicit:
        if _is_python27(explicit):
            return Path(explicit)
        raise HarnessError(f"${ENV_PYTHON27}={explicit!r} is not a working Python 2.7 interpreter")
    root = _pyenv_root()
    if root is not None:
        found = glob.glob(str(root / "versions" / "2.7*" / "bin" / "python2.7"))
        candidates += sorted(found, key=lambda p: [int(x) for x in re.findall(r"\d+", p)], reverse=True)
    for name in ("python2.7", "python2"):
        exe = shutil.which(name)
        if exe:
            candidates.append(exe)
    for exe in candidates:
        if _is_python27(exe):
            return Path(exe)
    raise HarnessError(
        "Python 2.7 not found: the Autobahn testsuite (autobahntestsuite) only runs on Python 2.7. "
        "Install it (e.g. `pyenv install 2.7.18`) or point "
        f"${ENV_PYTHON27} at a python2.7 interpreter. Looked at: {candidates or 'nothing'}"
    )


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = _LOCK_TIMEOUT) -> Iterator[int]:
    """Exclusive ``flock`` on ``path``, waiting at most ``timeout`` seconds; yields the fd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise HarnessError(f"timed out after {timeout:.0f}s waiting for lock {path}")
                time.sleep(1)
        try:
            yield fh.fileno()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the harness dies (Linux), so no orphan pip/wstest."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _clean_env(**extra: str) -> dict[str, str]:
    """os.environ without Python 3 path settings that would confuse the Python 2.7 env."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _run_logged(cmd: Sequence[str | os.PathLike[str]], log: Path, what: str,
                keep_fds: Sequence[int] = ()) -> None:
    """Run an install step, appending its output to ``log``; raise HarnessError on failure.

    ``keep_fds`` (the build lock) are inherited, so even a stray grandchild keeps the lock.
    """
    env = _clean_env(PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(map(str, cmd))}\n")
        fh.flush()
        try:
            rc = subprocess.run([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, timeout=_INSTALL_TIMEOUT,
                                pass_fds=tuple(keep_fds), preexec_fn=_die_with_parent).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise HarnessError(f"{what} failed ({rc}); see {log}:\n{tail}")


def _env_works(env_dir: Path, check: str) -> bool:
    """True if ``env_dir`` is complete (marker present) and ``check`` runs in its python."""
    if not (env_dir / _MARKER).is_file():
        return False
    try:
        out = subprocess.run([str(env_dir / "bin" / "python"), "-c", check],
                             capture_output=True, timeout=120, check=False, env=_clean_env())
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


def _reset_dir(env_dir: Path) -> None:
    """Remove an incomplete env we built earlier; refuse to delete anything else."""
    if not env_dir.exists():
        return
    if (env_dir / _BUILDING).exists() or (env_dir / _MARKER).exists() or not any(env_dir.iterdir()):
        shutil.rmtree(env_dir)
    else:
        raise HarnessError(f"{env_dir} exists but was not made by this harness; "
                           f"remove it or set ${ENV_VENV} elsewhere")


def _build_env(env_dir: Path, create: Sequence[str | os.PathLike[str]],
               install: Sequence[Sequence[str | os.PathLike[str]]], log: Path, what: str,
               lock_fd: int) -> None:
    """Create ``env_dir`` with ``create``, run ``install`` steps, then write the marker last."""
    _reset_dir(env_dir)
    env_dir.mkdir(parents=True)
    (env_dir / _BUILDING).write_text(f"pid {os.getpid()}\n")
    _run_logged(create, log, f"creating {what}", (lock_fd,))
    for step in install:
        _run_logged(step, log, f"installing into {what}", (lock_fd,))
    (env_dir / _BUILDING).unlink()
    (env_dir / _MARKER).write_text(json.dumps({"built": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def ensure_wstest(cache_dir: Path | str | None = None) -> Path:
    """Return the path of a working ``wstest``, building the Python 2.7 env first if needed.

    Idempotent and safe to call from several processes: the build happens under a file lock,
    and an env only counts as built once its marker file is written (an interrupted build is
    deleted and redone). The helper Python 3 venv holding virtualenv lives next to it.
    """
    env_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    env_dir = env_dir.absolute()
    wstest = env_dir / "bin" / "wstest"
    check27 = ("import autobahntestsuite, autobahntestsuite.case; "
               f"assert autobahntestsuite.version == {AUTOBAHNTESTSUITE_VERSION!r}")
    if wstest.is_file() and _env_works(env_dir, check27):
        return wstest

    python27 = find_python27()  # fail early and clearly, before any install
    helper = env_dir.parent / "virtualenv-py3"
    log = env_dir.parent / (env_dir.name + ".install.log")
    with _file_lock(env_dir.parent / (env_dir.name + ".lock")) as lock_fd:
        if wstest.is_file() and _env_works(env_dir, check27):  # built while we waited
            return wstest
        _reset_dir(env_dir)  # drop a half-built env (or refuse a foreign dir) before any work
        log.write_text("")
        check3 = f"import virtualenv; assert virtualenv.__version__ == {VIRTUALENV_VERSION!r}"
        if not _env_works(helper, check3):
            _build_env(helper, [sys.executable, "-m", "venv", helper],
                       [[helper / "bin" / "python", "-m", "pip", "install", "-q",
                         f"virtualenv=={VIRTUALENV_VERSION}"]],
                       log, f"helper venv {helper}", lock_fd)
        _build_env(env_dir,
                   [helper / "bin" / "python", "-m", "virtualenv", "--no-download",
                    "-p", python27, env_dir],
                   [[env_dir / "bin" / "python", "-m", "pip", "install", "-q",
                     f"autobahntestsuite=={AUTOBAHNTESTSUITE_VERSION}"]],
                   log, f"Python 2.7 env {env_dir}", lock_fd)
        if not (wstest.is_file() and _env_works(env_dir, check27)):
            raise HarnessError(f"built {env_dir} but wstest does not work; see {log}")
    return wstest


# --------------------------------------------------------------------------------------------
# Case ids as wstest itself resolves them
# --------------------------------------------------------------------------------------------

# Runs inside the Python 2.7 env: uses wstest's own CaseSet, so the expected ids are exactly
# the ones `wstest -m fuzzingclient` will run for the same spec.
_LIST_CASES_PY27 = r"""
import json, sys
from autobahntestsuite.case import Cases, CaseSetname, CaseBasename, CaseCategories, CaseSubCategories
from autobahntestsuite.caseset import CaseSet
spec = json.loads(sys.stdin.read())
cs = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories, CaseSubCategories)
out = {"all": [cs.caseClasstoId(c) for c in Cases]}
if spec.get("cases") is not None:
    out["selected"] = cs.parseSpecCases(spec)
sys.stdout.write(json.dumps(out))
"""


def _wstest_python(wstest: Path) -> Path:
    return wstest.parent / "python"


def _list_cases(wstest: Path, cases: Sequence[str] | None, exclude: Sequence[str]) -> dict:
    spec = {"cases": list(cases) if cases is not None else None, "exclude-cases": list(exclude)}
    proc = subprocess.run([str(_wstest_python(wstest)), "-c", _LIST_CASES_PY27],
                          input=json.dumps(spec), capture_output=True, text=True, timeout=120,
                          env=_clean_env())
    if proc.returncode != 0:
        raise HarnessError(f"listing wstest cases failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def all_case_ids(wstest: Path | None = None) -> list[str]:
    """Every case id the installed autobahntestsuite knows (517 for 25.10.1)."""
    return _list_cases(wstest or ensure_wstest(), None, [])["all"]


def expected_case_ids(patterns: Sequence[str], exclude: Sequence[str] = (),
                      wstest: Path | None = None) -> list[str]:
    """The case ids wstest will run for these patterns, resolved by wstest's own ``CaseSet``."""
    return _list_cases(wstest or ensure_wstest(), patterns, exclude)["selected"]


# --------------------------------------------------------------------------------------------
# Running wstest
# --------------------------------------------------------------------------------------------

def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the process group of a child we started in its own session."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def run_fuzzingclient(url: str, cases: Sequence[str], outdir: Path | str, agent: str = "txvoice",
                      timeout: float = 1800, exclude: Sequence[str] = (),
                      options: Mapping[str, object] | None = None,
                      wstest: Path | None = None) -> dict:
    """Run ``wstest -m fuzzingclient`` against ``url`` and return the report for ``agent``.

    Writes the spec to ``outdir/fuzzingclient.json`` and wstest's output to
    ``outdir/wstest.log``; the HTML/JSON reports land in ``outdir``. A stale ``index.json`` is
    removed first. wstest is killed if it runs longer than ``timeout`` seconds (HarnessError).
    Returns ``{case_id: {"behavior": ..., "behaviorClose": ..., ...}}``, empty if nothing ran.
    """
    wstest = wstest or ensure_wstest()
    out = Path(outdir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.json"
    for stale in [index, out / "index.html", *out.glob(f"{agent}_case_*")]:
        stale.unlink(missing_ok=True)
    spec = {
        "outdir": str(out),
        "servers": [{"agent": agent, "url": url, "options": dict(options or {})}],
        "cases": list(cases),
        "exclude-cases": list(exclude),
        "exclude-agent-cases": {},
    }
    spec_path = out / "fuzzingclient.json"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    log = out / "wstest.log"
    env = _clean_env()
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(wstest), "-m", "fuzzingclient", "-s", str(spec_path)],
                                cwd=out, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise HarnessError(f"wstest did not finish within {timeout:.0f}s (killed); "
                               f"last lines of {log}:\n{_log_tail(log)}") from None
        except BaseException:
            _kill_group(proc)
            raise
    if rc != 0 or not index.is_file():
        raise HarnessError(f"wstest exited {rc} without a usable {index}; last lines of {log}:\n"
                           f"{_log_tail(log)}")
    data = json.loads(index.read_text())
    return data.get(agent, {})


# --------------------------------------------------------------------------------------------
# Verdict
# --------------------------------------------------------------------------------------------

def check_report(report: Mapping[str, Mapping[str, object]],
                 expected: Iterable[str],
                 universe: Iterable[str] | None = None) -> list[str]:
    """Return human-readable failures of a report (empty list: all good).

    ``report`` is one agent's part of ``index.json``. ``expected`` is a list of case ids, or
    of wstest patterns (containing ``*``) which then need ``universe`` (all known case ids) to
    be resolved. A case fails if it is missing, if its ``behavior`` or ``behaviorClose`` is not
    OK / NON-STRICT / INFORMATIONAL, or if the report holds a case that was not expected.
    """
    expected = list(expected)
    if any("*" in e for e in expected):
        if universe is None:
            raise ValueError("patterns given to check_report need `universe` (all case ids)")
        expected_ids = select_cases(universe, expected)
    else:
        expected_ids = sorted(set(expected), key=case_id_key)
    failures: list[str] = []
    if not expected_ids:
        failures.append("no cases expected: the case patterns selected nothing")
    for case_id in expected_ids:
        res = report.get(case_id)
        if res is None:
            failures.append(f"{case_id}: missing from the report")
            continue
        behavior, close = res.get("behavior"), res.get("behaviorClose")
        if behavior not in PASSING_BEHAVIORS or close not in PASSING_BEHAVIORS:
            failures.append(f"{case_id}: behavior={behavior} behaviorClose={close} "
                            f"remoteCloseCode={res.get('remoteCloseCode')} "
                            f"({res.get('reportfile', 'no report file')})")
    extra = sorted(set(report) - set(expected_ids), key=case_id_key)
    failures += [f"{case_id}: in the report but not expected" for case_id in extra]
    return failures


def summarize(report: Mapping[str, Mapping[str, object]]) -> dict[str, object]:
    """Counts by behaviour: ``{"total": n, "behavior": {...}, "behaviorClose": {...}}``."""
    return {
        "total": len(report),
        "behavior": dict(Counter(str(r.get("behavior")) for r in report.values())),
        "behaviorClose": dict(Counter(str(r.get("behaviorClose")) for r in report.values())),
    }


def format_summary(report: Mapping[str, Mapping[str, object]]) -> str:
    """One-line summary, e.g. ``320 cases; behavior: OK=300 NON-STRICT=20; close: OK=320``."""
    s = summarize(report)

    def fmt(counts: Mapping[str, int]) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"

    return f"{s['total']} cases; behavior: {fmt(s['behavior'])}; close: {fmt(s['behaviorClose'])}"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def print_verdict(report: dict, expected: list[str], elapsed: float, outdir: str | Path) -> int:
    """Print the summary and every failure of a run; the CLI exit code (0 passed, 1 failures)."""
    failures = check_report(report, expected)
    print(f"{format_summary(report)} in {elapsed:.1f}s; report: {Path(outdir) / 'index.html'}")
    for line in failures:
        print(f"FAIL {line}")
    print(f"FAILED: {len(failures)} problem(s) among {len(expected)} expected cases" if failures
          else f"all {len(expected)} cases passed")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: exit 0 if every selected case passed, 1 if any failed or is missing, 2 on errors.

    ``--ensure`` only builds the Python 2.7 env (for set-up scripts) and prints wstest's path.
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ensure", action="store_true",
                    help="only build (or check) the Python 2.7 env and print the wstest path")
    ap.add_argument("--url", help="ws://127.0.0.1:PORT/echo (required unless --ensure)")
    ap.add_argument("--set", dest="set_name", choices=("quick", "full"), default="quick")
    ap.add_argument("--cases", nargs="+", help="explicit wstest case patterns (overrides --set)")
    ap.add_argument("--outdir", help="report directory (required unless --ensure)")
    ap.add_argument("--agent", default="txvoice")
    ap.add_argument("--timeout", type=float, help="seconds (default: 600 quick, 3600 full)")
    ap.add_argument("--cache-dir", help=f"Python 2.7 env (default ${ENV_VENV} or {DEFAULT_CACHE_DIR})")
    args = ap.parse_args(argv)
    if args.ensure:
        try:
            print(ensure_wstest(args.cache_dir))
        except HarnessError as exc:
            print(f"HARNESS ERROR: {exc}", file=sys.stderr)
            return 2
        return 0
    if not (args.url and args.outdir):
        ap.error("--url and --outdir are required")
    patterns = args.cases or case_patterns(args.set_name)
    timeout = args.timeout or (3600 if args.set_name == "full" or args.cases else 600)
    try:
        t0 = time.monotonic()
        wstest = ensure_wstest(args.cache_dir)
        print(f"wstest: {wstest} ({time.monotonic() - t0:.1f}s)", flush=True)
        expected = expected_case_ids(patterns, wstest=wstest)
        print(f"running {len(expected)} cases against {args.url} ...", flush=True)
        t0 = time.monotonic()
        report = run_fuzzingclient(args.url, patterns, args.outdir, agent=args.agent,
                                   timeout=timeout, wstest=wstest)
        elapsed = time.monotonic() - t0
    except HarnessError as exc:
        print(f"HARNESS ERROR: {exc}", file=sys.stderr)
        return 2
    return print_verdict(report, expected, elapsed, args.outdir)


if __name__ == "__main__":
    sys.exit(main())
