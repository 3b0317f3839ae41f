#!/usr/bin/env python3
"""
The standing benchmark: voice sessions per core, latency and memory, txvoice beside its baselines.

    .venv/bin/python bench/run.py            # full run (~30-40 min); results in bench/results/
    .venv/bin/python bench/run.py --quick    # smoke run (~5 s per server), exits non-zero on any gap

It builds what it needs (the C load generator with gcc -lz, the payload files from espeak-ng
speech), then, for each repetition, runs every server in turn (interleaved, the order rotated per
repetition), each started fresh for each measurement, pinned with ``taskset -c 0`` while the
generator runs on ``taskset -c 1``:

* a fixed-N measurement for each workload (Opus 48 kHz, PCM): server CPU time per frame, p50 /
  p99 / max round trip, RSS per session, loss, and the server's reactor lag over the sending
  window (txvoice's own probe on its /metrics; the same probe on the baselines' GET /lag);
* a ladder on the first workload: N = 10, 25, 50, ... until the first failing step, where a step
  passes when p99 < 50 ms and no frame is lost (the 20 ms column uses the same steps);

then, for txvoice, ``bench/turns.py``: turn end -> first reply frame and barge-in delay with the
echo pipeline, with and without background sessions.  It writes ``latest.json`` (every run plus
the medians, and the turns), ``latest.md`` (the table, ratios to txvoice, and the turns table) and
``latest.png`` (p99 against sessions, one line per server).  See bench/README.md.
Every server listens on 127.0.0.1 only; every run is bounded in sessions and seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN = BUILD / "loadgen"
C_LIMIT_SRC = BENCH / "servers" / "c_limit.c"
C_LIMIT = BUILD / "c_limit"
PAYLOADS = BUILD / "payloads"
LOGS = BUILD / "logs"
PY = sys.executable
TWISTD = str(Path(sys.executable).parent / "twistd")
_CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPU, GEN_CPU = str(_CPUS[0]), str(_CPUS[1 % len(_CPUS)])  # "0" and "1" on the 2-core machines
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

TXVOICE_LAG_INTERVAL_S = 0.25  # txvoice's ReactorLagProbe interval (txvoice/monitoring/reactorlag.py)
P99_LIMIT_MS = 50.0
P99_STRICT_MS = 20.0
DEFAULT_LADDER = [10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 600, 800, 1000, 1250, 1500, 2000, 2500, 3000, 4000]
#: The fixed N at which CPU per frame is measured beside max N (the first one also gives latency, RSS, lag).
DEFAULT_CPU_NS = [50, 150, 300]
#: A run in which the hypervisor took more than this share of either core is "disturbed": it is run
#: again (--steal-retries) and the least stolen attempt counts; one still over it is marked in the table.
STEAL_LIMIT = 0.10
#: The reference server: its ladder is how far the generator and the machine can see (bench/servers/c_limit.c).
LIMIT = "c-limit"

WORKLOADS = {
    # name: (payload file, request path)
    "opus": ("opus48k.frames", "/ws/audio?codec=opus&sample_rate=48000&channels=1"),
    "pcm16k": ("pcm16k.frames", "/ws/audio?codec=pcm_s16le&sample_rate=16000&channels=1"),
    "pcm48k": ("pcm48k.frames", "/ws/audio?codec=pcm_s16le&sample_rate=48000&channels=1"),
}


# ------------------------------------------------------------------------------------ servers


@dataclass(frozen=True)
class ServerSpec:
    name: str
    command: Callable[[int, int], list[str]]  # (port, sessions) -> argv
    mode: str = "ack"  # ack: a text "chunk_received" per frame; echo: the frame comes back;
    # none: no answer per frame (turn-based protocols): latency from the generator's ping probes
    greeting: bool = True
    deflate: bool = False
    env: Callable[[int], dict[str, str]] = lambda n: {}
    about: str = ""
    # Where its reactor-lag probe is read, on its own port: txvoice's /metrics histogram
    # (reactor_lag_seconds), or the baselines' GET /lag (bench/servers/lagprobe.py: the same method).
    lag: str = "metrics"


def _txvoice_cmd(extra: list[str]) -> Callable[[int, int], list[str]]:
    def cmd(port: int, n: int) -> list[str]:
        # The echo pipeline: /ws/audio answers no turns anyway, and this keeps the speech engines
        # (a recognizer model per decoder) out of the memory and start-up figures.
        return [TWISTD, "-n", "--pidfile=", "txvoice", "--listen", f"tcp:{port}:interface=127.0.0.1",
                "--audio-threads", "1", "--pipeline", "echo", *extra]

    return cmd


def _txvoice_env(n: int) -> dict[str, str]:
    # Every benchmark connection comes from 127.0.0.1: lift the connection caps (through the
    # environment, so a txvoice without these settings simply ignores them); all else is default.
    return {"TXVOICE_MAX_CONNECTIONS": str(max(1000, n + 64)), "TXVOICE_MAX_CONNECTIONS_PER_IP": "0"}


SERVERS: dict[str, ServerSpec] = {
    s.name: s
    for s in [
        ServerSpec("txvoice", _txvoice_cmd([]), env=_txvoice_env,
                   about="twistd txvoice, default configuration, /ws/audio, 1 audio thread"),
        ServerSpec("txvoice-switch1ms", _txvoice_cmd(["--gil-switch-interval-ms", "1"]), env=_txvoice_env,
                   about="txvoice with a 1 ms GIL switch interval (--gil-switch-interval-ms 1), for comparison"),
        ServerSpec("txvoice-buffered", _txvoice_cmd(["--no-write-through"]), env=_txvoice_env,
                   about="txvoice with Twisted's buffered writes (--no-write-through), for comparison"),
        ServerSpec("txvoice-batch2ms", _txvoice_cmd(["--audio-batch-ms", "2"]), env=_txvoice_env,
                   about="txvoice holding audio chunks 2 ms before the hop to the audio thread (--audio-batch-ms 2), for comparison"),
        ServerSpec("txvoice-inline2", _txvoice_cmd(["--audio-inline-max", "2"]), env=_txvoice_env,
                   about="txvoice running audio batches of up to 2 chunks on the reactor when the audio thread is idle (--audio-inline-max 2), for comparison"),
        ServerSpec("txvoice-hop", _txvoice_cmd(["--audio-inline-max", "0"]), env=_txvoice_env,
                   about="txvoice handing every audio batch to the audio thread (--audio-inline-max 0; the default on one CPU runs small native batches on the reactor), for comparison"),
        ServerSpec("txvoice-frames3", _txvoice_cmd(["--barge-in-rule", "frames3"]), env=_txvoice_env,
                   about="txvoice with the three-frame barge-in rule (--barge-in-rule frames3, no 10 ms onset detector), for comparison"),
        ServerSpec("txvoice-deflate", _txvoice_cmd(["--compression"]), deflate=True, env=_txvoice_env,
                   about="the same with --compression; the generator offers permessage-deflate"),
        ServerSpec("autobahn-echo", lambda port, n: [PY, str(BENCH / "servers" / "autobahn_echo.py"), "--port", str(port)],
                   mode="echo", greeting=False, lag="lag",
                   about="plain Autobahn echo on Twisted epoll: no audio work (the floor)"),
        ServerSpec("aiohttp-ingest", lambda port, n: [PY, str(BENCH / "servers" / "aiohttp_ingest.py"), "--port", str(port)],
                   lag="lag", about="aiohttp + uvloop, /ws/audio, the same ingest work inline"),
        ServerSpec(LIMIT, lambda port, n: [str(C_LIMIT), "--port", str(port)], lag="lag",
                   about="the limit: a C epoll server with /ws/audio's greeting and ack and no audio work "
                         "(bench/servers/c_limit.c); where it fails, the generator and the machine stop the benchmark"),
    ]
}
#: --baseline-tree DIR: "txvoice-base" is txvoice from that checkout (PYTHONPATH=DIR, this venv's
#: packages and plugins), for a before/after of a change side by side in one run.
BASELINE = "txvoice-base"


def add_baseline(tree: str, name: str = BASELINE) -> None:
    root = str(Path(tree).resolve())
    if not (Path(root) / "txvoice" / "__init__.py").exists():
        raise SystemExit(f"bench: --baseline-tree {tree} holds no txvoice/ package")
    commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    SERVERS[name] = ServerSpec(
        name, _txvoice_cmd([]), env=lambda n: {**_txvoice_env(n), "PYTHONPATH": root},
        about=f"txvoice as in {root} (commit {commit}), otherwise as txvoice: the before of a side-by-side")


REFERENCE = "txvoice"
#: The table's servers when --servers is not given: txvoice, the floor it stands on, its fastest
#: Python peer and the limit (the variants are for side-by-side comparisons).
DEFAULT_SERVERS = ["txvoice", "autobahn-echo", "aiohttp-ingest", LIMIT]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: str) -> list[str]:
    return PRIORITY + (["taskset", "-c", cpu] if PINNING else [])


#: Prefix for the server and the generator: ["chrt", "-f", "10"] with --realtime (SCHED_FIFO, so other
#: processes on the shared cores wait for them; the kernel still leaves them 5 % of each second).
PRIORITY: list[str] = []
#: --nice N: the server and the generator each start a session of their own, and that session's
#: autogroup gets nice N.  With autogroups on (/proc/sys/kernel/sched_autogroup_enabled), CFS shares
#: the CPU between sessions first, so a plain ``nice`` does nothing against other sessions' work.
AUTOGROUP_NICE: list[int] = []


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen:
    """Popen for the server and the generator: in a session of its own with --nice."""
    if not AUTOGROUP_NICE:
        return subprocess.Popen(argv, **kwargs)
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
    try:
        Path(f"/proc/{proc.pid}/autogroup").write_text(str(AUTOGROUP_NICE[0]))
    except OSError as e:
        log(f"bench: warning: could not set the autogroup nice of {proc.pid}: {e}")
    return proc


PINNING = len(_CPUS) >= 2 and shutil.which("taskset") is not None


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of every thread of ``pid`` (seconds), from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def parse_cpu_ticks(stat: str, cpus: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(stolen, total) clock ticks of each of ``cpus`` since boot, from the text of /proc/stat."""
    ticks = {}
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:] in cpus:
            # user nice system idle iowait irq softirq steal (guest time is already in user)
            values = [int(v) for v in rest.split()[:8]]
            ticks[name[3:]] = (values[7] if len(values) > 7 else 0, sum(values))
    return ticks


def parse_cpu_busy(stat: str, cpus: tuple[str, ...]) -> dict[str, int]:
    """Busy clock ticks (user nice system irq softirq: not idle, iowait or steal) of each of ``cpus``."""
    busy = {}
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:] in cpus:
            v = [int(x) for x in rest.split()[:7]]
            busy[name[3:]] = v[0] + v[1] + v[2] + sum(v[5:7])
    return busy


def cpu_ticks(cpus: tuple[str, ...] = (SERVER_CPU, GEN_CPU)) -> dict[str, tuple[int, int]]:
    try:
        return parse_cpu_ticks(Path("/proc/stat").read_text(), cpus)
    except OSError:
        return {}


def machine_sample(cpus: tuple[str, ...] = (SERVER_CPU, GEN_CPU)) -> dict[str, Any]:
    """One reading of how busy the machine is: /proc/stat's ticks per core and /proc/loadavg."""
    try:
        stat = Path("/proc/stat").read_text()
    except OSError:
        return {}
    return {"ticks": parse_cpu_ticks(stat, cpus), "busy": parse_cpu_busy(stat, cpus), "loadavg": os.getloadavg(),
            "t": time.monotonic()}


def machine_load(before: dict[str, Any], after: dict[str, Any], own_cpu_s: float) -> dict[str, Any]:
    """
    What else the machine did between two samples: ``others_cores`` is the CPU time spent on the
    two cores by anything but the server and the generator (``own_cpu_s``: theirs), in cores; the
    1-minute load average at both ends.
    """
    if not before or not after:
        return {}
    wall = max(after["t"] - before["t"], 1e-6)
    busy_s = sum(after["busy"].get(c, 0) - b for c, b in before["busy"].items()) / CLK_TCK
    return {"others_cores": round(max(0.0, busy_s - own_cpu_s) / wall, 3),
            "busy_cores": round(busy_s / wall, 3),
            "busy_by_core": {c: round((after["busy"].get(c, 0) - b) / CLK_TCK / wall, 3) for c, b in before["busy"].items()},
            "loadavg_1m": [before["loadavg"][0], after["loadavg"][0]]}


def stolen_share(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    """The share of each CPU's time the hypervisor gave to someone else between two readings."""
    shares = {}
    for cpu, (stolen0, total0) in before.items():
        if cpu in after and after[cpu][1] > total0:
            shares[cpu] = round((after[cpu][0] - stolen0) / (after[cpu][1] - total0), 3)
    return shares


def proc_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Server:
    """One fresh server process, pinned, on a free loopback port."""

    def __init__(self, spec: ServerSpec, sessions: int, log_name: str) -> None:
        self.spec = spec
        self.port = free_port()
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{log_name}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        env.pop("TXVOICE_LISTEN", None)
        env.update(spec.env(sessions))
        self._log = open(self.log_path, "wb")
        self.proc = spawn(pinned(SERVER_CPU) + spec.command(self.port, sessions), cwd=str(ROOT), env=env,
                          stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid  # taskset execs the server: same PID

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.spec.name} did not listen on 127.0.0.1:{self.port} within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def probe_status(port: int, path: str) -> int:
    """HTTP status of a WebSocket upgrade request to ``path`` (101 when the endpoint exists)."""
    req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req.encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


# ------------------------------------------------------------------------------------ reactor lag

LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 directly, whatever *_proxy says
_LAG_BUCKET = re.compile(r'^\w*reactor_lag_seconds_bucket\{le="([^"]+)"\}\s+(\S+)')
_LAG_TOTAL = re.compile(r"^\w*reactor_lag_seconds_(count|sum)\s+(\S+)")


def read_lag(spec: ServerSpec, port: int, since: int | None = None) -> dict[str, Any]:
    """
    The server's reactor-lag probe, cumulative since it started: ``{"count", "sum", "buckets":
    [(le, cumulative count), ...]}`` and, from the baselines' ``/lag``, the exact ``samples`` from
    number ``since`` on.  txvoice: its ``/metrics`` histogram ``reactor_lag_seconds``.
    """
    path = "/metrics" if spec.lag == "metrics" else "/lag" + (f"?since={since}" if since is not None else "")
    with LOCAL.open(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        body = r.read().decode("utf-8")
    if spec.lag != "metrics":
        doc = json.loads(body)
        doc["buckets"] = [(math.inf if le == "+Inf" else float(le), int(n)) for le, n in doc["buckets"]]
        return doc
    buckets, out = [], {}
    for line in body.splitlines():
        m = _LAG_BUCKET.match(line)
        if m:
            buckets.append((math.inf if m.group(1) == "+Inf" else float(m.group(1)), int(float(m.group(2)))))
            continue
        m = _LAG_TOTAL.match(line)
        if m:
            out[m.group(1)] = float(m.group(2))
    if not buckets or "count" not in out:
        raise RuntimeError("no reactor_lag_seconds histogram on /metrics")
    return {"count": int(out["count"]), "sum": out.get("sum", 0.0), "buckets": sorted(buckets)}


def hist_quantile(q: float, buckets: list[tuple[float, int]]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket holding rank q; None when empty."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_n = 0.0, 0
    for le, n in buckets:
        if n >= rank and n > prev_n:
            if math.isinf(le):
                return prev_le  # above the largest finite bucket: its bound (a lower bound)
            return prev_le + (le - prev_le) * (rank - prev_n) / (n - prev_n)
        prev_le, prev_n = le, n
    return prev_le


def nearest_rank(values: list[float], q: float) -> float | None:
    """txvoice's own percentile (nearest rank), for exact samples."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v), max(1, math.ceil(q * len(v)))) - 1]


def lag_window(before: dict[str, Any], after: dict[str, Any], interval: float | None) -> dict[str, Any]:
    """The reactor lag between two readings of the probe: the histogram difference, in ms."""
    b = dict(before["buckets"])
    diff = [(le, n - b.get(le, 0)) for le, n in after["buckets"]]
    count = after["count"] - before["count"]
    out: dict[str, Any] = {"samples": count, "interval_s": interval}
    for q, key in ((0.5, "p50_ms"), (0.99, "p99_ms")):
        v = hist_quantile(q, diff)
        out[key] = round(v * 1000.0, 3) if v is not None else None
    out["mean_ms"] = round((after["sum"] - before["sum"]) * 1000.0 / count, 3) if count > 0 else None
    out["buckets_ms"] = {("+Inf" if math.isinf(le) else f"{le * 1000:g}"): n for le, n in diff}
    exact = after.get("samples")
    if exact is not None:
        out["exact"] = {"p50_ms": round(nearest_rank(exact, 0.5) * 1000.0, 3) if exact else None,
                        "p99_ms": round(nearest_rank(exact, 0.99) * 1000.0, 3) if exact else None,
                        "max_ms": round(max(exact) * 1000.0, 3) if exact else None}
    return out


# ------------------------------------------------------------------------------------ building


def ensure_python_packages() -> None:
    missing = []
    for module, package in (("aiohttp", "aiohttp"), ("uvloop", "uvloop"), ("matplotlib", "matplotlib"),
                            ("opuslib", "opuslib"), ("soxr", "soxr"), ("webrtcvad", "webrtcvad-wheels")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        print(f"bench: installing {' '.join(missing)} into {sys.prefix}", flush=True)
        subprocess.run([PY, "-m", "pip", "install", "-q", *missing], check=True)


def apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"bench needs the Debian packages {' '.join(packages)}; install them")
    print(f"bench: apt-get install {' '.join(packages)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env, stdout=subprocess.DEVNULL)


def build_c_limit() -> Path:
    """The reference server, bench/build/c_limit (gcc -O2)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    if C_LIMIT.exists() and C_LIMIT.stat().st_mtime >= C_LIMIT_SRC.stat().st_mtime:
        return C_LIMIT
    if not shutil.which("gcc"):
        apt_install("gcc", "libc6-dev")
    cmd = ["gcc", "-O2", "-Wall", "-o", str(C_LIMIT), str(C_LIMIT_SRC)]
    print("bench: " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return C_LIMIT


def build_loadgen() -> Path:
    BUILD.mkdir(parents=True, exist_ok=True)
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return LOADGEN
    if not shutil.which("gcc") or not (Path("/usr/include/zlib.h").exists()):
        apt_install("gcc", "libc6-dev", "zlib1g-dev")
    cmd = ["gcc", "-O2", "-Wall", "-o", str(LOADGEN), str(LOADGEN_SRC), "-lz"]
    print("bench: " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return LOADGEN


def make_payloads() -> dict[str, Path]:
    if not shutil.which("espeak-ng"):
        apt_install("espeak-ng")
    sys.path.insert(0, str(BENCH))
    import frames

    return frames.make(PAYLOADS)


FLOOR = BENCH / "floor.py"
ECHO = "autobahn-echo"


def audio_floor() -> dict[str, Any]:
    """``bench/floor.py`` on the server's core (with the servers' priority): the audio work alone, per frame."""
    proc = subprocess.run([*pinned(SERVER_CPU), PY, str(FLOOR), "--frames", str(PAYLOADS / "opus48k.frames"),
                           "--pcm48", str(PAYLOADS / "pcm48k.frames")], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip()[-500:]}
    return json.loads(proc.stdout)


def floor_summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The floor's figures over the run's samples (the smallest of each: a floor), and the samples."""
    keys = ("decode_us", "audio_us", "silk_decode_us")
    out: dict[str, Any] = {"samples": samples}
    for key in keys:
        values = [x[key] for x in samples if x.get(key) is not None]
        out[key] = min(values) if values else None
    return out


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by servers and the generator
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < need:
        print(f"bench: warning: open-file limit {soft} is below the {need} the largest step needs", flush=True)
    return soft


# ------------------------------------------------------------------------------------ one run


@dataclass
class Options:
    duration: float
    warmup: float
    drain: float
    quick: bool
    slip_limit_us: float = 2000.0
    cpu_limit: float = 0.9
    steal_limit: float = STEAL_LIMIT
    steal_retries: int = 1
    #: The generator wakes once per 0.5 ms tick, not once per answer (answers timed up to a tick
    #: late): at 1,000 sessions that is ~0.6 of its core instead of > 0.9 (loadgen --lazy-reads).
    lazy_reads: bool = True
    #: A failed ladder step is run again and passes when 2 of 3 runs pass (--no-votes: one run decides).
    fail_votes: bool = True


def run_once(spec: ServerSpec, workload: str, n: int, opts: Options, label: str,
             gen_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """
    Start ``spec`` fresh, drive ``n`` sessions of ``workload`` through it, stop it; the run's record.
    ``gen_args`` go to the generator as well (a subprotocol, headers, start messages, probes).  With
    ``spec.mode == "none"`` (no answer per frame) CPU per frame is over the frames sent, the latency
    figures are the probes' (``--probe-every`` in ``gen_args``) and a clean run lost no connection,
    no probe and no start.
    """
    payload, path = WORKLOADS[workload]
    record: dict[str, Any] = {"server": spec.name, "workload": workload, "sessions": n, "duration_s": opts.duration}
    server = Server(spec, n, f"{spec.name}-{workload}-{n}-{label}")
    try:
        server.wait_ready()
        time.sleep(0.1)
        rss_idle = proc_rss_kib(server.pid)  # replaced by the warm baseline when the warm-up ran
        cmd = pinned(GEN_CPU) + [
            str(LOADGEN), "--port", str(server.port), "--path", path, "--frames", str(PAYLOADS / payload),
            "--sessions", str(n), "--duration", str(opts.duration), "--mode", spec.mode,
            "--greeting" if spec.greeting else "--no-greeting", "--warmup", str(opts.warmup), "--drain", str(opts.drain),
            "--slip-limit-us", str(opts.slip_limit_us), "--cpu-limit", str(opts.cpu_limit), "--prewarm", "10",
            "--connect-timeout", str(5.0 + 0.01 * n if opts.quick else 10.0 + 0.01 * n),
        ] + (["--deflate"] if spec.deflate else []) + (["--lazy-reads"] if opts.lazy_reads else []) + list(gen_args)
        gen = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        marks: dict[str, tuple[float | None, int | None, float]] = {}
        ticks: dict[str, dict[str, tuple[int, int]]] = {}
        samples: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        peak = [rss_idle or 0]
        lag: dict[str, Any] = {}
        lag_threads: list[threading.Thread] = []

        def read_lag_window(t0: float) -> None:
            # The probe is cumulative since the server started: read it where the latency figures
            # start counting (after the warm-up of the sending window) and at the end of sending.
            start = t0 + (opts.warmup if opts.warmup < opts.duration else 0.0)
            try:
                time.sleep(max(0.0, start - time.monotonic()))
                lag["before"] = read_lag(spec, server.port)
                time.sleep(max(0.0, t0 + opts.duration - time.monotonic()))
                lag["after"] = read_lag(spec, server.port, since=lag["before"]["count"])
                lag["window_s"] = round(time.monotonic() - start, 3)
            except Exception as e:
                lag["error"] = f"{type(e).__name__}: {e}"

        def read_stderr() -> None:
            for line in gen.stderr:
                if line.startswith("PHASE "):
                    marks[line.split()[1]] = (proc_cpu_s(server.pid), proc_rss_kib(server.pid), time.monotonic())
                    samples[line.split()[1]] = machine_sample()
                    ticks[line.split()[1]] = samples[line.split()[1]].get("ticks", {})
                    if line.split()[1] == "send":
                        # The generator's clock is CLOCK_MONOTONIC, as time.monotonic() is here.
                        t = threading.Thread(target=read_lag_window, args=(int(line.split()[2]) / 1e9,), daemon=True)
                        t.start()
                        lag_threads.append(t)
                else:
                    errors.append(line.rstrip())

        def sample_rss() -> None:
            while gen.poll() is None:
                r = proc_rss_kib(server.pid)
                if r:
                    peak[0] = max(peak[0], r)
                time.sleep(0.2)

        threads = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=sample_rss, daemon=True)]
        for t in threads:
            t.start()
        limit = opts.duration + opts.drain + 10.0 + 0.01 * n + 30.0
        killer = threading.Timer(limit, gen.kill)
        killer.start()
        out = gen.stdout.read()
        gen.wait()
        killer.cancel()
        for t in threads + lag_threads:
            t.join(5)
        if "after" in lag:
            interval = lag["after"].get("interval", TXVOICE_LAG_INTERVAL_S)
            record["reactor_lag"] = dict(lag_window(lag["before"], lag["after"], interval),
                                         source="/metrics reactor_lag_seconds" if spec.lag == "metrics" else "/lag",
                                         window_s=lag["window_s"])
            record["reactor_lag_p50_ms"] = record["reactor_lag"]["p50_ms"]
            record["reactor_lag_p99_ms"] = record["reactor_lag"]["p99_ms"]
            record["reactor_lag_mean_ms"] = record["reactor_lag"]["mean_ms"]
        elif "error" in lag:
            record["reactor_lag"] = {"error": lag["error"]}
        if gen.returncode != 0 or not out.strip():
            raise RuntimeError(f"loadgen failed ({gen.returncode}): {' '.join(errors[-5:])}")
        g = json.loads(out)
        record["generator"] = g
        if "warm" in marks and marks["warm"][1]:
            rss_idle = marks["warm"][1]  # after one session came and went: lazy imports are in the baseline
        if "send" in marks and "end" in marks:
            cpu0, _, t0 = marks["send"]
            cpu1, rss_end, t1 = marks["end"]
            if cpu0 is not None and cpu1 is not None:
                record["server_cpu_s"] = round(cpu1 - cpu0, 4)
                record["server_cpu_share"] = round((cpu1 - cpu0) / max(t1 - t0, 1e-6), 3)
                counted_frames = g["frames_sent"] if spec.mode == "none" else g["frames_acked"]
                if counted_frames:
                    record["cpu_us_per_frame"] = round((cpu1 - cpu0) * 1e6 / counted_frames, 2)
            shares = stolen_share(ticks.get("send", {}), ticks.get("end", {}))
            if shares:
                record["stolen"] = {"server_cpu": shares.get(SERVER_CPU), "generator_cpu": shares.get(GEN_CPU)}
            if cpu0 is not None and cpu1 is not None:
                record["machine"] = machine_load(samples.get("send", {}), samples.get("end", {}),
                                                 (cpu1 - cpu0) + g.get("gen_cpu_s", 0.0))
            if rss_idle and rss_end:
                record["rss_idle_kib"] = rss_idle
                record["rss_end_kib"] = rss_end
                record["rss_peak_kib"] = peak[0]
                record["rss_per_session_kib"] = round((rss_end - rss_idle) / n, 2)
        lat = g["probe_latency_us"] if spec.mode == "none" else g["latency_us"]
        if spec.mode == "none":
            record["latency_source"] = "probes"
        record.update(
            p50_ms=lat["p50"] / 1000, p90_ms=lat["p90"] / 1000, p99_ms=lat["p99"] / 1000, max_ms=lat["max"] / 1000,
            lost=g["frames_lost"] + g["frames_skipped"] + (g["frames_per_session"] * (n - g["connected"])),
            saturated=g["saturated"],
        )
        if "latency_from_send_us" in g:  # the round trip from the actual send, beside the one from the schedule
            record["p99_from_send_ms"] = g["latency_from_send_us"]["p99"] / 1000
        if spec.mode == "none" and "probe_latency_from_send_us" in g:
            record["p99_from_send_ms"] = g["probe_latency_from_send_us"]["p99"] / 1000
        answered = (g["frames_acked"] == g["frames_sent"] and g["unexpected_answers"] == 0) if spec.mode != "none" else (
            g.get("probes_lost", 0) == 0 and g.get("start_failed", 0) == 0)
        record["clean"] = (
            g["connected"] == n and g["frames_lost"] == 0 and g["frames_skipped"] == 0 and g["server_errors"] == 0
            and g["frames_sent"] == n * g["frames_per_session"] and answered
            and (not spec.deflate or g["deflate_negotiated"] == n)
        )
        record["passed"] = record["clean"] and lat["count"] > 0 and record["p99_ms"] < P99_LIMIT_MS
        record["passed_strict"] = record["passed"] and record["p99_ms"] < P99_STRICT_MS
        if g["first_error"]:
            record["first_error"] = g["first_error"]
    except Exception as e:  # a broken run is a failed step, recorded with its reason
        record.update(error=str(e), clean=False, passed=False, passed_strict=False, saturated=False)
    finally:
        server.stop()
    record["server_log"] = str(server.log_path.relative_to(ROOT))
    return record


def describe(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"ERROR {r['error'].splitlines()[0][:160]}"
    g = r["generator"]
    verdict = "pass" if r["passed"] else "FAIL"
    if r["saturated"]:
        verdict += f" (generator saturated: {g['saturated_reason']})"
    stolen = r.get("stolen") or {}
    stolen_s = (f"stolen {stolen.get('server_cpu') or 0:.0%}/{stolen.get('generator_cpu') or 0:.0%} of the "
                f"server/generator core, " if any(stolen.values()) else "")
    m = r.get("machine") or {}
    if m:
        stolen_s += (f"others {m['others_cores']:.2f} cores (cores busy {'/'.join(f'{v:.0%}' for v in (m.get('busy_by_core') or {}).values())}), "
                     f"load {m['loadavg_1m'][1]:.2f}, ")
    if r.get("disturbed"):
        verdict_extra = " [DISTURBED: steal over the limit]"
    else:
        verdict_extra = ""
    cpu = r.get("cpu_us_per_frame")
    rss = r.get("rss_per_session_kib")
    extra = f" [{r['first_error'][:100]}]" if r.get("first_error") and not r["passed"] else ""
    lag = r.get("reactor_lag") or {}
    lag_s = (f"lag p50/p99 {fmt_lag(lag.get('p50_ms'))}/{fmt_lag(lag.get('p99_ms'))} mean {fmt(lag.get('mean_ms'), 2)} ms "
             f"({lag.get('samples')} ticks), "
             if "samples" in lag else f"lag: {lag['error'][:80]}, " if "error" in lag else "")
    slip = (g.get("send_slip_us") or {}).get("p99")
    sent_s = f" (from send {r['p99_from_send_ms']:.2f})" if r.get("p99_from_send_ms") is not None else ""
    return (f"p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f}{sent_s} max {r['max_ms']:.2f} ms, {lag_s}"
            f"acked {g['frames_acked']}/{g['frames_sent']} lost {r['lost']}, "
            f"cpu {cpu if cpu is not None else '-'} us/frame ({r.get('server_cpu_share', 0):.0%} of a core), "
            f"rss {rss if rss is not None else '-'} KiB/session, gen cpu {g['gen_cpu_frac']:.0%}"
            f"{f' slip p99 {slip / 1000:.1f} ms' if slip is not None else ''}, {stolen_s}"
            f"-> {verdict}{verdict_extra}{extra}")


# ------------------------------------------------------------------------------------ the plan


def median(values: list[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return round(statistics.median(vs), 3) if vs else None


@dataclass
class Plan:
    servers: list[str]
    workloads: list[str]
    reps: int
    fixed_n: int
    ladder: list[int]
    opts: Options
    runs: list[dict[str, Any]] = field(default_factory=list)
    #: Further fixed N for the CPU per frame on the first workload (fixed_n is measured anyway).
    cpu_ns: list[int] = field(default_factory=list)


def log(msg: str) -> None:
    print(msg, flush=True)


def stolen_max(r: dict[str, Any]) -> float:
    return max([v for v in (r.get("stolen") or {}).values() if v is not None] or [0.0])


def measure(plan: Plan, spec: ServerSpec, workload: str, n: int, rep: int, kind: str) -> dict[str, Any]:
    """
    One counted run.  A run in which the hypervisor took more than ``steal_limit`` of either core
    is run again (up to ``steal_retries`` times) and the least stolen attempt counts; the others
    stay in the record marked ``superseded``, and a counted run still over the limit is marked
    ``disturbed`` (the table counts them per server).
    """
    attempts = []
    for attempt in range(1 + max(0, plan.opts.steal_retries)):
        r = run_once(spec, workload, n, plan.opts, f"r{rep}-{kind}" + (f"-a{attempt}" if attempt else ""))
        r.update(rep=rep, kind=kind, attempt=attempt)
        # A run where the generator's own CPU ran out measures the generator: it is kept in the
        # record but left out of every figure (quick mode keeps it: it only checks the plumbing).
        r["discarded"] = bool(r.get("saturated")) and not plan.opts.quick
        r["disturbed"] = stolen_max(r) > plan.opts.steal_limit
        log(f"  [{kind} rep {rep}] {spec.name:16s} {workload:6s} N={n:<5d} {describe(r)}")
        plan.runs.append(r)
        attempts.append(r)
        if not r["disturbed"] or plan.opts.quick:
            break
    best = min(attempts, key=stolen_max)
    for r in attempts:
        if r is not best:
            r["superseded"] = True
    return best


def vote(plan: Plan, spec: ServerSpec, workload: str, n: int, rep: int, failed: dict[str, Any]) -> dict[str, Any]:
    """
    A failed ladder step, run again: it passes when two of three runs pass (a second failure ends
    it).  On a VM shared with other work one stall fails a run at any N; a server past its capacity
    fails every time.  The deciding run counts, the others stay in the record as superseded.
    """
    runs = [failed]
    while len(runs) < 3:
        r = measure(plan, spec, workload, n, rep, "ladder")
        runs.append(r)
        if r["discarded"] or sum(not x["passed"] for x in runs) >= 2 or sum(x["passed"] for x in runs) >= 2:
            break
    for r in runs[:-1]:
        r["superseded"] = True
    last = runs[-1]
    last["votes"] = f"{sum(x['passed'] for x in runs)} of {len(runs)}"
    log(f"  [ladder rep {rep}] {spec.name:16s} {workload:6s} N={n:<5d} passed {last['votes']} runs -> "
        f"{'pass' if last['passed'] else 'FAIL'}")
    return last


def counted(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that give figures: not superseded by a less stolen attempt."""
    return [r for r in runs if not r.get("superseded")]


#: Runs again a ladder step whose run was discarded for a saturated generator.  On the shared CI VM
#: the generator's send schedule slips past the limit now and then at any N (a stolen core), and
#: with one retry a third of the repetitions of a 3 x 10 s run ended early on it (2026-11-21 13:00).
LADDER_RETRIES = 2


def execute(plan: Plan) -> None:
    primary = plan.workloads[0]
    for rep in range(plan.reps):
        order = plan.servers[rep % len(plan.servers):] + plan.servers[: rep % len(plan.servers)]
        log(f"repetition {rep + 1}/{plan.reps}: servers in order {', '.join(order)}")
        fixed: dict[tuple[str, str], dict[str, Any]] = {}
        for workload in plan.workloads:
            for name in order:
                fixed[name, workload] = measure(plan, SERVERS[name], workload, plan.fixed_n, rep, "fixed")
        # CPU per frame at further fixed N, every server at each (a server that fails there still
        # gives its CPU per frame: that is the figure a shared VM does not blur).
        at_n: dict[tuple[str, int], dict[str, Any]] = {(name, plan.fixed_n): fixed[name, primary] for name in order}
        for n in plan.cpu_ns:
            if n == plan.fixed_n:
                continue
            for name in order:
                at_n[name, n] = measure(plan, SERVERS[name], primary, n, rep, "cpu")
        alive = list(order)
        for n in plan.ladder:
            for name in list(alive):
                reuse = at_n.get((name, n))
                if reuse is not None and not reuse["discarded"]:
                    step = dict(reuse, kind="ladder", reused_fixed=True)
                    plan.runs.append(step)
                    log(f"  [ladder rep {rep}] {name:16s} {primary:6s} N={n:<5d} (the {reuse['kind']} run) -> "
                        f"{'pass' if step['passed'] else 'FAIL'}")
                else:
                    step = measure(plan, SERVERS[name], primary, n, rep, "ladder")
                    for _ in range(LADDER_RETRIES):
                        if not step["discarded"]:
                            break
                        step = measure(plan, SERVERS[name], primary, n, rep, "ladder")
                if not step["discarded"] and not step["passed"] and plan.opts.fail_votes and not plan.opts.quick:
                    step = vote(plan, SERVERS[name], primary, n, rep, step)
                if step["discarded"]:
                    log(f"  {name}: the generator saturates at N={n}; its ladder stops here (a lower bound)")
                    alive.remove(name)
                elif not step["passed"]:
                    alive.remove(name)
            if not alive:
                break


def summarize(plan: Plan) -> dict[str, Any]:
    primary = plan.workloads[0]
    summary: dict[str, Any] = {}
    all_runs = counted(plan.runs)
    for name in plan.servers:
        runs = [r for r in all_runs if r["server"] == name and not r["discarded"]]
        s: dict[str, Any] = {"about": SERVERS[name].about if name in SERVERS else name}
        for wl in plan.workloads:
            fx = [r for r in runs if r["kind"] == "fixed" and r["workload"] == wl]
            s[f"cpu_us_per_frame_{wl}"] = median([r.get("cpu_us_per_frame") for r in fx])
            s[f"reactor_lag_ms_{wl}"] = {"p50": median([r.get("reactor_lag_p50_ms") for r in fx]),
                                         "p99": median([r.get("reactor_lag_p99_ms") for r in fx]),
                                         "samples": sum((r.get("reactor_lag") or {}).get("samples") or 0 for r in fx)}
            if wl == primary:
                for key in ("p50_ms", "p99_ms", "max_ms", "rss_per_session_kib", "server_cpu_share",
                            "reactor_lag_p50_ms", "reactor_lag_p99_ms", "reactor_lag_mean_ms"):
                    s[key] = median([r.get(key) for r in fx])
                s["lost"] = median([r.get("lost") for r in fx])
                s["lost_total"] = sum(r.get("lost", 0) or 0 for r in fx)
                s["fixed_runs"] = len(fx)
                s["fixed_clean"] = bool(fx) and all(r.get("clean") for r in fx)
                at: dict[str, Any] = {}
                for n in sorted({plan.fixed_n, *plan.cpu_ns}):
                    those = [r for r in runs if r["kind"] in ("fixed", "cpu") and r["workload"] == wl and r["sessions"] == n]
                    at[str(n)] = {"cpu_us_per_frame": median([r.get("cpu_us_per_frame") for r in those]),
                                  "server_cpu_share": median([r.get("server_cpu_share") for r in those]),
                                  "p99_ms": median([r.get("p99_ms") for r in those]), "runs": len(those),
                                  "passed": sum(bool(r.get("passed")) for r in those)}
                s["at_n"] = at
        # Per repetition: the largest step passed, and whether the ladder ended on a failed step
        # (a measurement) or on a run discarded twice for a saturated generator (only a lower bound).
        measured, bounds = [], []
        for rep in range(plan.reps):
            steps = sorted((r for r in all_runs if r["server"] == name and r["kind"] == "ladder" and r["rep"] == rep),
                           key=lambda r: r["sessions"])
            best = best_strict = 0
            strict_ok = True
            bounded = False
            for r in steps:
                if r["discarded"]:
                    if any(o["sessions"] == r["sessions"] and not o["discarded"] for o in steps):
                        continue  # its retry was measured
                    bounded = True
                    break
                if not r["passed"]:
                    break
                best = r["sessions"]
                strict_ok = strict_ok and r["passed_strict"]
                if strict_ok:
                    best_strict = r["sessions"]
            if steps:
                (bounds if bounded else measured).append((best, best_strict))
        # Medians over the repetitions that measured.  When none did, the largest lower bound: each
        # says "passed every step up to here", so the largest is the one the server showed, where
        # a median would report a repetition whose ladder the hypervisor cut at N=10.
        if measured:
            s["max_sessions_p99_50ms"] = median([b for b, _ in measured])
            s["max_sessions_p99_20ms"] = median([b for _, b in measured])
        else:
            s["max_sessions_p99_50ms"] = max((b for b, _ in bounds), default=None)
            s["max_sessions_p99_20ms"] = max((b for _, b in bounds), default=None)
        s["ladder_generator_bound"] = not measured and bool(bounds)
        s["ladder_reps_measured"] = len(measured)
        s["ladder_reps_bound"] = len(bounds)
        curve = {}
        for n in sorted({r["sessions"] for r in runs if r["kind"] == "ladder"}):
            at = [r for r in runs if r["kind"] == "ladder" and r["sessions"] == n and "error" not in r]
            if at:
                curve[n] = {"p99_ms": median([r["p99_ms"] for r in at]), "passed": sum(r["passed"] for r in at),
                            "runs": len(at)}
        s["ladder_p99_ms"] = curve
        s["saturated_runs_discarded"] = sum(1 for r in plan.runs if r["server"] == name and r["discarded"])
        # How disturbed this server's runs were: the counted runs over the steal limit, the runs
        # superseded by a less stolen attempt, and the medians of steal and of other work on the cores.
        mine = [r for r in plan.runs if r["server"] == name and not r.get("reused_fixed")]
        kept = [r for r in counted(mine)]
        s["disturbed_runs"] = sum(1 for r in kept if r.get("disturbed"))
        s["superseded_runs"] = sum(1 for r in mine if r.get("superseded"))
        s["runs_total"] = len(mine)
        s["stolen_median"] = {"server_cpu": median([(r.get("stolen") or {}).get("server_cpu") for r in kept]),
                              "generator_cpu": median([(r.get("stolen") or {}).get("generator_cpu") for r in kept])}
        s["others_cores_median"] = median([(r.get("machine") or {}).get("others_cores") for r in kept])
        s["ladder_top_passed"] = bool(curve) and max(int(k) for k in curve) == max(plan.ladder) and \
            s.get("max_sessions_p99_50ms") == max(plan.ladder)
        summary[name] = s
    limit_verdicts(summary, all_runs, plan)
    return summary


def limit_verdicts(summary: dict[str, Any], runs: list[dict[str, Any]], plan: Plan) -> None:
    """
    Read every ladder against the reference server's: a server that carries as many sessions as
    c-limit does is bounded by the generator and the machine, not by itself (``at_limit_*``), and
    where c-limit's own ladder failed the summary says what its failing step looked like.
    """
    lim = summary.get(LIMIT)
    if not lim:
        return
    for key, strict in (("max_sessions_p99_50ms", False), ("max_sessions_p99_20ms", True)):
        top = lim.get(key)
        for name, s in summary.items():
            if name != LIMIT and top is not None and s.get(key) is not None:
                s["at_limit_" + key[len("max_sessions_"):]] = s[key] >= top
    fails = [r for r in runs if r["server"] == LIMIT and r["kind"] == "ladder" and not r.get("passed")]
    if fails:
        r = min(fails, key=lambda r: r["sessions"])
        g = r.get("generator") or {}
        lim["limit_failed_at"] = {
            "sessions": r["sessions"], "p99_ms": r.get("p99_ms"), "p99_from_send_ms": r.get("p99_from_send_ms"),
            "lost": r.get("lost"), "gen_cpu_frac": g.get("gen_cpu_frac"),
            "send_slip_p99_ms": ((g.get("send_slip_us") or {}).get("p99") or 0) / 1000,
            "server_cpu_share": r.get("server_cpu_share"), "stolen": r.get("stolen"), "machine": r.get("machine"),
            "saturated": r.get("saturated"), "error": r.get("error") or r.get("first_error"),
        }


def environment() -> dict[str, Any]:
    def version(mod: str) -> str | None:
        try:
            from importlib.metadata import version as v

            return v(mod)
        except Exception:
            return None

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except Exception:
        commit = None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit, "cpu": cpu, "cpus": os.cpu_count(),
        "kernel": platform.release(), "python": platform.python_version(),
        "pinning": {"server": SERVER_CPU, "generator": GEN_CPU} if PINNING else None,
        "loadavg_start": os.getloadavg(),
        "packages": {p: version(p) for p in ("twisted", "autobahn", "aiohttp", "uvloop", "numpy", "soxr", "opuslib")},
    }


# ------------------------------------------------------------------------------------ reports


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def fmt_lag(v: float | None) -> str:
    """A lag quantile interpolated in txvoice's buckets: within the first (0-1 ms) it only says "≤1"."""
    if v is None:
        return "–"
    return "≤1" if v <= 1.0 else f"{v:.1f}"


def ratio(v: float | None, ref: float | None) -> str:
    if v is None or not ref:
        return "–"
    return f"{v / ref:.2f}×"


def table_lines(result: dict[str, Any]) -> list[str]:
    """The main table, the ratios of the reference to each other server, and the notes under them."""
    cfg, summary = result["config"], result["summary"]
    ref = result["reference"]
    primary = cfg["workloads"][0]
    others = cfg["workloads"][1:]
    n = cfg["fixed_n"]
    cpu_ns = sorted({n, *(cfg.get("cpu_ns") or [])})
    r = summary.get(ref, {})

    def cpu_at(s: dict[str, Any], k: int) -> float | None:
        at = (s.get("at_n") or {}).get(str(k)) or {}
        v = at.get("cpu_us_per_frame")
        return v if v is not None or k != n else s.get(f"cpu_us_per_frame_{primary}")

    def cpu_cell(s: dict[str, Any], k: int) -> str:
        at = (s.get("at_n") or {}).get(str(k)) or {}
        overloaded = at.get("runs") and not at.get("passed")
        return fmt(cpu_at(s, k)) + (" ‡" if overloaded else "")

    def max_n(s: dict[str, Any], key: str) -> str:
        v = s.get(key)
        bound = " (≥; generator-bound)" if s.get("ladder_generator_bound") else ""
        if not bound and s.get("ladder_reps_bound"):
            k = s.get("ladder_reps_measured", 0)
            bound = f" ({k} of {k + s['ladder_reps_bound']} reps)"
        if s.get("ladder_top_passed"):
            bound += " (≥; the ladder's top)"
        elif s.get("at_limit_" + key[len("max_sessions_"):]):
            bound += " (= the limit)"
        return (fmt(v, 0) if v or not bound else "–") + bound

    head = ("| server | " + "".join(f"CPU µs/frame {primary} @ N={k} | " for k in cpu_ns) + "ratio @ N=%d | " % n
            + "".join(f"CPU µs/frame {wl} @ N={n} | " for wl in others)
            + "max N (p99 < 50 ms) | ratio | max N (p99 < 20 ms) | "
            + f"p50 / p99 / max ms @ N={n} | reactor lag p50 / p99 (mean) ms @ N={n} | RSS KiB/session | ratio | "
            f"lost @ N={n} | steal server / gen core · others' cores (median) | disturbed runs |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for name, s in summary.items():
        st = s.get("stolen_median") or {}
        load = (f"{fmt((st.get('server_cpu') or 0) * 100, 1)} % / {fmt((st.get('generator_cpu') or 0) * 100, 1)} % · "
                f"{fmt(s.get('others_cores_median'), 2)}") if st.get("server_cpu") is not None else "–"
        row = [f"`{name}`"] + [cpu_cell(s, k) for k in cpu_ns]
        row += [ratio(s.get(f"cpu_us_per_frame_{primary}"), r.get(f"cpu_us_per_frame_{primary}"))]
        row += [fmt(s.get(f"cpu_us_per_frame_{wl}")) for wl in others]
        row += [max_n(s, "max_sessions_p99_50ms"),
                ratio(s.get("max_sessions_p99_50ms"), r.get("max_sessions_p99_50ms")),
                max_n(s, "max_sessions_p99_20ms"),
                f"{fmt(s.get('p50_ms'), 2)} / {fmt(s.get('p99_ms'), 2)} / {fmt(s.get('max_ms'), 2)}",
                f"{fmt_lag(s.get('reactor_lag_p50_ms'))} / {fmt_lag(s.get('reactor_lag_p99_ms'))} "
                f"({fmt(s.get('reactor_lag_mean_ms'), 2)})",
                fmt(s.get("rss_per_session_kib")), ratio(s.get("rss_per_session_kib"), r.get("rss_per_session_kib")),
                fmt(s.get("lost"), 0), load,
                f"{s.get('disturbed_runs', 0)} of {s.get('runs_total', 0)}"
                + (f" ({s['superseded_runs']} re-run)" if s.get("superseded_runs") else "")]
        lines.append("| " + " | ".join(row) + " |")
    if ref in summary and len(summary) > 1:
        head2 = (f"| `{ref}` against | " + "".join(f"CPU per frame @ N={k} | " for k in cpu_ns)
                 + "sessions (p99 < 50 ms) | sessions (p99 < 20 ms) |")
        lines += ["", head2, "|" + " --- |" * (head2.count("|") - 1)]
        for name, s in summary.items():
            if name == ref:
                continue
            row = [f"`{name}`"] + [ratio(cpu_at(r, k), cpu_at(s, k)) for k in cpu_ns]
            row += [ratio(r.get("max_sessions_p99_50ms"), s.get("max_sessions_p99_50ms")),
                    ratio(r.get("max_sessions_p99_20ms"), s.get("max_sessions_p99_20ms"))]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"CPU µs/frame: server process CPU time (all threads, /proc/PID/stat) over the sending window divided by "
              f"the frames it acknowledged, at each fixed N (a run of its own per N; ‡: that run failed — p99 over "
              f"{P99_LIMIT_MS:g} ms or frames lost — so the server was past its capacity and the figure is its CPU "
              "per frame answered while overloaded). Max N: the largest ladder step passed — p99 round trip under "
              f"{P99_LIMIT_MS:g} ms (or {P99_STRICT_MS:g} ms) and no frame lost, every smaller step passing too; the median over the repetitions whose ladder ended on a "
              "failed step (a repetition cut short by a generator whose own CPU saturated on a run and its retry only gives a "
              "lower bound: when no repetition measured, the largest such bound is given, marked ≥; otherwise they are noted as 'k of n reps'). "
              f"'= the limit': as far as `{LIMIT}` (no audio work at all) went in the same run, so the generator and the machine, "
              "not this server, ended its ladder. "
              "Round trips are timed from each frame's intended send time (its slot in the schedule), so a generator "
              "or machine that falls behind adds to the latency instead of voiding the run. "
              "RSS/session: (RSS with all sessions open − RSS after one warm-up session came and went) / N. "
              f"Reactor lag: how late a timer due every {TXVOICE_LAG_INTERVAL_S * 1000:g} ms fires on the server's event "
              "loop (txvoice's own probe, read from its /metrics histogram; the same probe in the baselines), over "
              f"the sending window after its first {cfg['warmup_s']:g} s; p50 / p99 interpolated within txvoice's "
              "histogram buckets (1, 2.5, 5, 10, 25, 50 ms, ...) for every server, so ≤1 is all that can be said "
              "below 1 ms; the mean is exact. "
              "Steal: the share of each core the hypervisor gave to other guests over the sending window (/proc/stat); "
              "others' cores: CPU time on the two cores spent by anything but the server and the generator, in cores. "
              f"Disturbed: counted runs with more than {cfg.get('steal_limit', STEAL_LIMIT):.0%} of a core stolen (each such run "
              "was run again and the less stolen attempt counted; every attempt is in latest.json)."]
    lim = (summary.get(LIMIT) or {}).get("limit_failed_at")
    if lim:
        m = lim.get("machine") or {}
        st = lim.get("stolen") or {}
        lines += ["", f"`{LIMIT}` failed first at N={lim['sessions']}: p99 {fmt(lim.get('p99_ms'), 2)} ms from the schedule "
                  f"({fmt(lim.get('p99_from_send_ms'), 2)} from the actual send), {lim.get('lost')} lost, the generator at "
                  f"{(lim.get('gen_cpu_frac') or 0):.0%} of its core (send slip p99 {fmt(lim.get('send_slip_p99_ms'), 2)} ms), the "
                  f"server at {(lim.get('server_cpu_share') or 0):.0%} of its core, {(st.get('server_cpu') or 0):.1%} / "
                  f"{(st.get('generator_cpu') or 0):.1%} stolen, other work {fmt(m.get('others_cores'), 2)} cores"
                  + (f" (server's / generator's core busy {'/'.join(f'{v:.0%}' for v in m['busy_by_core'].values())})"
                     if m.get("busy_by_core") else "")
                  + (f" ({lim['error'][:120]})" if lim.get("error") else "") + "."]
    lines += floor_lines(result)
    return lines


def floor_lines(result: dict[str, Any]) -> list[str]:
    """The audio work alone beside the echo's whole cost: how much of the target is left for everything else."""
    floor = result.get("floor") or {}
    audio = floor.get("audio_us")
    if audio is None:
        errors = [x["error"] for x in floor.get("samples", []) if x.get("error")]
        return ["", f"Audio work alone: not measured ({errors[0][:200]})."] if errors else []
    cfg, summary = result["config"], result["summary"]
    ref = result["reference"]
    cpu_ns = sorted({cfg["fixed_n"], *(cfg.get("cpu_ns") or [])})

    def cpu(name: str, k: int) -> float | None:
        return ((summary.get(name) or {}).get("at_n") or {}).get(str(k), {}).get("cpu_us_per_frame")

    text = (f"Audio work alone (`bench/floor.py` on the server's core before and after the servers ran, the smallest of "
            f"{2 * floor['samples'][0].get('passes', 1)} passes over the payload, no socket or Python around it): "
            f"libopus decode to 16 kHz {fmt(floor.get('decode_us'))} µs/frame, the native batch txvoice runs "
            f"(decode, webrtcvad, the spectral gate) {fmt(audio)} µs/frame.")
    echo = [(k, cpu(ECHO, k)) for k in cpu_ns]
    if all(v for _, v in echo):
        text += (f" That is {' / '.join(ratio(audio, v) for _, v in echo)} of `{ECHO}`'s whole CPU per frame at "
                 f"N={' / '.join(str(k) for k, _ in echo)}: at 1.0× the echo, `{ref}` would have "
                 f"{' / '.join(fmt(v - audio) for _, v in echo)} µs per frame left for the sockets, framing, turns "
                 f"and acks")
        mine = [cpu(ref, k) for k, _ in echo]
        if all(mine):
            text += f"; it spends {' / '.join(fmt(v - audio) for v in mine if v)} on them in this run"
        text += "."
    if floor.get("silk_decode_us") is not None:
        text += (f" The same speech from a sender that caps Opus at wideband decodes in {fmt(floor['silk_decode_us'])} "
                 "µs/frame: at a 16 kHz output libopus still decodes a hybrid packet's CELT layer and then zeroes it "
                 "(all its bands are above 8 kHz), work only the sender can spare.")
    return ["", text]


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    cfg, summary = result["config"], result["summary"]
    ref = result["reference"]
    primary = cfg["workloads"][0]
    env = result["environment"]
    load = env.get("loadavg_start")
    nice = f" (both at nice {cfg['nice']})" if cfg.get("nice") is not None else ""
    lines = [
        f"# Voice sessions per core — {env['date']}",
        "",
        f"Workload: each session sends one 20 ms frame every 20 ms ({primary} first; the server decodes to "
        f"16 kHz, runs VAD and acknowledges every frame). Server on CPU {cfg['server_cpu']}, generator on CPU "
        f"{cfg['generator_cpu']}{' (both SCHED_FIFO, --realtime)' if cfg.get('realtime') else ''}"
        f"{nice}; medians of "
        f"{cfg['reps']} repetition(s), {cfg['duration_s']} s per run"
        + (f"; load average {load[0]:.2f} at the start, {env['loadavg_end'][0]:.2f} at the end"
           if load and env.get("loadavg_end") else "")
        + f". Ratios are to `{ref}` (lower CPU and RSS, higher N are better).",
        "",
    ]
    lines += table_lines(result)
    lines += ["", "Servers:", ""]
    lines += [f"- `{name}`: {s['about']}" for name, s in summary.items()]
    if result.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"`{k}` ({v})" for k, v in result["skipped"].items())]
    discarded = sum(s.get("saturated_runs_discarded", 0) for s in summary.values())
    if discarded:
        lines += ["", f"{discarded} run(s) where the generator itself was saturated were discarded (see latest.json)."
                  + stolen_sentence(result["runs"])]
    lines += ["", "![p99 round trip against sessions](latest.png)", ""]
    if result.get("turns"):
        lines += turns_markdown(result["turns"])
    path.write_text("\n".join(lines), encoding="utf-8")


def stolen_sentence(runs: list[dict[str, Any]]) -> str:
    """How much time the hypervisor took from the cores in the discarded runs and in the kept ones."""
    def medians(kept: bool) -> tuple[float | None, float | None]:
        chosen = [r.get("stolen") or {} for r in runs if bool(r.get("discarded")) != kept]
        return (median([c.get("generator_cpu") for c in chosen]), median([c.get("server_cpu") for c in chosen]))

    (dg, ds), (kg, ks) = medians(False), medians(True)
    if dg is None or kg is None:
        return ""
    return (f" Stolen by the hypervisor (median share of the core, /proc/stat): {dg:.1%} of the generator's and "
            f"{ds or 0:.1%} of the server's in the discarded runs, {kg:.1%} and {ks or 0:.1%} in the runs kept.")


def turns_markdown(turns: dict[str, Any]) -> list[str]:
    """The second table: turn end -> first reply frame and barge-in delay (bench/turns.py)."""
    cfg = turns.get("config") or {}

    def cell(r: dict[str, Any], key: str) -> str:
        v = r.get(key) or {}
        return f"{fmt(v.get('p50'))} / {fmt(v.get('p95'))} / {fmt(v.get('max'))}" if v.get("n") else "–"

    lines = ["## Turns: framework overhead and barge-in (echo pipeline)", "",
             f"txvoice with `--pipeline echo`, one native-protocol client streaming \"{cfg.get('utterance')}\" "
             f"({cfg.get('utterance_ms')} ms of espeak-ng speech) in real-time 20 ms frames, {cfg.get('turns_per_mode')} "
             f"turns per mode (barge-in from the second on); background sessions: the C generator streaming Opus "
             "to /ws/audio at the same time. Client-side times, ms, p50 / p95 / max.", "",
             "| client audio | background sessions | explicit end → first reply frame | end of speech (VAD) → first "
             f"reply frame, net of silence_ms ({cfg.get('silence_ms')}) | barge-in: first voiced frame → `barge_in` | "
             "barge-in: first sounding packet → `barge_in` | server's detection_delay_ms | reactor lag p99 | problems |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in turns.get("runs") or []:
        if "error" in r:
            lines.append(f"| {r.get('codec')} | {r.get('background_sessions')} | – | – | – | – | – | – | {r['error'][:80]} |")
            continue
        lines.append(f"| {r['codec']} | {r['background_sessions']} | {cell(r, 'explicit_end_to_first_frame_ms')} | "
                     f"{cell(r, 'vad_end_to_first_frame_ms')} | {cell(r, 'barge_in_ms')} | "
                     f"{cell(r, 'barge_in_from_onset_ms')} | {cell(r, 'barge_in_server_detection_ms')} | – | "
                     f"{len(r.get('errors', []))} |")
    sp = turns.get("speakers")
    if sp:
        if "error" in sp:
            lines.append(f"| 20 speakers (speech pipeline) | – | – | – | – | – | – | – | {sp['error'][:80]} |")
        else:
            fa = (sp.get("stage_latency_ms") or {}).get("first_audio") or {}
            lines.append(f"| opus, {sp['sessions']} speakers (speech pipeline, turns ending together) | {sp['sessions'] - 1} | "
                         f"{fmt(fa.get('median'))} / {fmt(fa.get('p95'))} / {fmt(fa.get('max'))} (server: turn end → first "
                         f"audio) | – | – | – | – | {fmt(sp['reactor_lag_ms_final'].get('p99'))} | "
                         f"{len(sp.get('failures', []))} failures, {sp.get('transcripts_exact')}/{sp.get('completed')} exact |")
    fb = turns.get("false_barge_in")
    if fb:
        if "error" in fb:
            lines += ["", f"False barge-ins: {fb['error'][:120]}"]
        else:
            hits = ", ".join(i["name"] for i in fb.get("items", []) if i.get("triggered")) or "none"
            lines += ["", f"False barge-ins (bench/barge_corpus.py played over playing replies, "
                          f"{' '.join(fb.get('server_args') or []) or 'default rule'}): **{fb['triggers']}** in "
                          f"{fb['exposure_s']} s ({fb['per_minute']}/min), on: {hits}."]
    lines += ["", "Explicit end: push-to-talk, `voice_end` sent → the reply's first binary frame (the echo of the "
              "turn's packets as sent). End of speech (VAD): `voice_activity` mode, from sending the packet that "
              "completes silence_ms after the last voiced frame (= last voiced frame + silence_ms, the packets going "
              "out in real time) → the reply's first binary frame (the turn's decoded audio, re-encoded in the "
              "client's format). Barge-in: 200 ms into a reply the next utterance starts; from sending the packet "
              "holding the first voiced frame (the event's stream_time_ms) → the `barge_in` event received; the "
              "reply then closes cancelled. See bench/README.md.", ""]
    return lines


def write_plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, s in result["summary"].items():
        curve = s.get("ladder_p99_ms") or {}
        xs = sorted(int(n) for n in curve)
        ys = [curve[n]["p99_ms"] if n in curve else curve[str(n)]["p99_ms"] for n in xs]
        if xs:
            ax.plot(xs, ys, marker="o", label=name)
    ax.axhline(P99_LIMIT_MS, color="red", linestyle="--", linewidth=1, label=f"{P99_LIMIT_MS:g} ms limit")
    ax.axhline(P99_STRICT_MS, color="orange", linestyle=":", linewidth=1, label=f"{P99_STRICT_MS:g} ms (strict)")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ax.set_yscale("log")
    ax.set_xscale("log")
    steps = sorted({int(n) for s in result["summary"].values() for n in (s.get("ladder_p99_ms") or {})})
    ax.xaxis.set_major_locator(FixedLocator(steps or [1]))
    ax.yaxis.set_major_locator(FixedLocator([m * 10.0**e for e in range(-2, 6) for m in (1, 2, 5)]))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_locator(NullLocator())
        axis.set_minor_formatter(NullFormatter())
    # Turn the step labels when there are many or when neighbours sit close on the log axis (90, 100, 110).
    crowded = len(steps) > 10 or any(b / a < 1.3 for a, b in zip(steps, steps[1:]))
    ax.tick_params(axis="x", labelrotation=45 if crowded else 0)
    ax.set_xlabel("concurrent sessions (log; one 20 ms frame every 20 ms each)")
    ax.set_ylabel("p99 round trip per frame (ms, log)")
    env = result["environment"]
    ax.set_title(f"p99 latency vs sessions — {result['config']['workloads'][0]}, server pinned to one core\n"
                 f"{env['cpu']}, {env['date']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main


def check_quick(result: dict[str, Any], files: list[Path]) -> list[str]:
    """Every figure for every server, zero loss, every file: the list of what is missing."""
    problems = []
    primary = result["config"]["workloads"][0]
    for name, s in result["summary"].items():
        needed = [f"cpu_us_per_frame_{wl}" for wl in result["config"]["workloads"]]
        needed += ["p50_ms", "p99_ms", "max_ms", "rss_per_session_kib", "max_sessions_p99_50ms", "max_sessions_p99_20ms",
                   "reactor_lag_p50_ms", "reactor_lag_p99_ms"]
        for key in needed:
            if s.get(key) is None:
                problems.append(f"{name}: no {key}")
        if not s.get("fixed_clean"):
            problems.append(f"{name}: the fixed-N {primary} run was not clean (lost {s.get('lost_total')})")
        if not s.get("ladder_p99_ms"):
            problems.append(f"{name}: no ladder point")
    for r in result["runs"]:
        lag = r.get("reactor_lag") or {}
        if r["kind"] == "fixed" and "error" not in r and not lag.get("samples"):
            problems.append(f"{r['server']} {r['workload']} N={r['sessions']}: no reactor lag sample "
                            f"({lag.get('error', 'no reading')})")
        if "error" in r:
            problems.append(f"{r['server']} {r['workload']} N={r['sessions']}: {r['error'].splitlines()[0]}")
        elif r["lost"]:
            problems.append(f"{r['server']} {r['workload']} N={r['sessions']}: {r['lost']} frames lost"
                            + (f" ({r['first_error']})" if r.get("first_error") else ""))
    floor = result.get("floor") or {}
    if floor.get("audio_us") is None or floor.get("decode_us") is None:
        problems.append(f"the audio floor was not measured: {floor.get('samples')}")
    for f in files:
        if not f.exists() or f.stat().st_size == 0:
            problems.append(f"{f} was not written")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="txvoice benchmark: sessions per core, latency, memory, beside baselines",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny N, ~5 s per server; non-zero exit on any gap")
    p.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                   help=f"comma-separated, from: {', '.join(SERVERS)} [{','.join(DEFAULT_SERVERS)}]")
    p.add_argument("--workloads", default=None, help="comma-separated from opus, pcm16k, pcm48k; the first one runs "
                   "the ladder [default: opus,pcm48k]")
    p.add_argument("--reps", type=int, default=None, help="repetitions (medians are reported) [3; quick: 1]")
    p.add_argument("--duration", type=float, default=None, help="seconds of sending per run [15; quick: 1.5]")
    p.add_argument("--fixed-n", type=int, default=None, help="sessions of the fixed-N measurement (latency, RSS, "
                   "lag, every workload) [50; quick: 8]")
    p.add_argument("--cpu-n", default=None, help="comma-separated N at which CPU per frame is measured on the first "
                   f"workload besides --fixed-n [{','.join(map(str, DEFAULT_CPU_NS))}; quick: none]")
    p.add_argument("--steal-limit", type=float, default=STEAL_LIMIT * 100,
                   help="a run with more than this %% of either core stolen is run again, then marked disturbed [10]")
    p.add_argument("--steal-retries", type=int, default=1, help="re-runs of a disturbed run [1; quick: 0]")
    p.add_argument("--no-votes", action="store_true",
                   help="a failed ladder step ends the ladder at once (by default it is run again and passes when "
                   "two of three runs pass: on a shared VM one stall fails a run at any N)")
    p.add_argument("--eager-reads", action="store_true",
                   help="the generator wakes for every answer (exact to the µs, but > 0.9 of its core at 1,000 "
                   "sessions) instead of once per 0.5 ms tick (answers timed up to 0.5 ms late)")
    p.add_argument("--nice", type=int, default=None, metavar="N",
                   help="run the server and the generator at this nice value (e.g. -10: other processes on the shared "
                   "cores get a small share while they are busy; threads of one server keep CFS between them)")
    p.add_argument("--realtime", action="store_true",
                   help="run the server and the generator SCHED_FIFO (chrt -f 10), so other processes on the shared "
                   "cores wait for them (the kernel still leaves them 5 %% of each second)")
    p.add_argument("--readme", metavar="MD", default=None,
                   help="also write the table between the '<!-- bench:table -->' and '<!-- /bench:table -->' lines of "
                   "this Markdown file (the repository's README.md)")
    p.add_argument("--ladder", default=None, help="comma-separated session counts [10,25,50,...,4000; quick: N,2N]")
    p.add_argument("--slip-limit-ms", type=float, default=2.0,
                   help="a run whose generator sent its frames later than this at p99 is flagged saturated [2]")
    p.add_argument("--turns-k", type=int, default=None,
                   help="turn latency and barge-in (bench/turns.py, txvoice only): turns per mode, 0 skips [20; quick: 3]")
    p.add_argument("--turns-background", default=None,
                   help="comma-separated background sessions for the turn measurement [0,50; quick: 0]")
    p.add_argument("--turns-codecs", default=None, help="the turn client's audio: opus, pcm16k [opus,pcm16k; quick: opus]")
    p.add_argument("--baseline-tree", metavar="DIR", action="append", default=None,
                   help=f"add the server {BASELINE}: txvoice from this checkout (e.g. a git worktree of main), "
                   f"to compare a change side by side; given again, {BASELINE}2, {BASELINE}3 ... (several befores)")
    p.add_argument("--resummarize", metavar="JSON", default=None,
                   help="rebuild the summary, table and plot from a saved latest.json's runs (no measuring)")
    p.add_argument("--out-dir", default=str(BENCH / "results"), help="where latest.json/.md/.png go")
    a = p.parse_args(argv)
    for i, tree in enumerate(a.baseline_tree or []):
        add_baseline(tree, BASELINE if i == 0 else f"{BASELINE}{i + 1}")
    a.servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    unknown = [s for s in a.servers if s not in SERVERS]
    if unknown or not a.servers:
        p.error(f"unknown server(s) {unknown}; choose from {', '.join(SERVERS)}")
    a.workloads = [w.strip() for w in (a.workloads or ("opus,pcm16k" if a.quick else "opus,pcm48k")).split(",") if w.strip()]
    if any(w not in WORKLOADS for w in a.workloads) or not a.workloads:
        p.error(f"workloads are {', '.join(WORKLOADS)}")
    a.reps = a.reps or (1 if a.quick else 3)
    a.duration = a.duration or (1.5 if a.quick else 15.0)
    a.fixed_n = a.fixed_n or (8 if a.quick else 50)
    a.cpu_n = sorted({int(x) for x in a.cpu_n.split(",") if x.strip()}) if a.cpu_n else ([] if a.quick else DEFAULT_CPU_NS)
    if a.ladder:
        a.ladder = sorted({int(x) for x in a.ladder.split(",") if x.strip()})
    else:
        a.ladder = [a.fixed_n, 2 * a.fixed_n] if a.quick else DEFAULT_LADDER
    a.turns_k = a.turns_k if a.turns_k is not None else (3 if a.quick else 20)
    a.turns_background = a.turns_background or ("0" if a.quick else "0,50")
    a.turns_codecs = a.turns_codecs or ("opus" if a.quick else "opus,pcm16k")
    if max(a.ladder + [a.fixed_n] + a.cpu_n) > 20000 or a.duration > 600 or a.reps > 20 or a.steal_retries > 3:
        p.error("bounded runs only: sessions <= 20000, duration <= 600 s, reps <= 20")
    return a


def run_turns(a: argparse.Namespace) -> dict[str, Any]:
    """bench/turns.py in its own process (it pins itself to the generator's core); its result."""
    out = BUILD / "turns-last.json"
    out.unlink(missing_ok=True)
    cmd = [PY, str(BENCH / "turns.py"), "--k", str(a.turns_k), "--background", a.turns_background,
           "--codecs", a.turns_codecs, "--json", str(out)]
    if a.quick:
        cmd += ["--false-barge", "0", "--speakers", "0"]  # --quick stays within its minutes
    measurements = len(a.turns_background.split(",")) * len(a.turns_codecs.split(","))
    log(f"turns: {' '.join(cmd[1:])}")
    try:
        # + the false-barge-in corpus (bench/false_barge.py: 9 items of ~11 s) and the 20 speakers (~65 s + start).
        proc = subprocess.run(cmd, cwd=str(ROOT), timeout=420 + measurements * (30 + 6 * (a.turns_k + 1)))
    except subprocess.TimeoutExpired:
        return {"problems": ["turns: bench/turns.py timed out"]}
    if not out.exists():
        return {"problems": [f"turns: bench/turns.py exited with {proc.returncode} and wrote nothing"]}
    return json.loads(out.read_text(encoding="utf-8"))


def write_results(result: dict[str, Any], out_dir: str) -> list[Path]:
    """latest.json, latest.md and latest.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "latest.json", out / "latest.md", out / "latest.png"]
    files[0].write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    write_markdown(files[1], result)
    write_plot(files[2], result)
    return files


README_BEGIN, README_END = "<!-- bench:table -->", "<!-- /bench:table -->"


def write_readme_table(path: Path, result: dict[str, Any]) -> None:
    """Replace the lines between README_BEGIN and README_END in ``path`` with this run's table."""
    text = path.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"bench: {path} has no '{README_BEGIN}' ... '{README_END}' block")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    env, cfg = result["environment"], result["config"]
    intro = (f"`{cfg.get('command', 'bench/run.py')}` — {env['date']}, commit {env.get('commit')}, {env['cpu']} "
             f"({env['cpus']} CPUs), load average {env['loadavg_start'][0]:.2f} → {(env.get('loadavg_end') or [0])[0]:.2f}:")
    block = "\n".join([README_BEGIN, intro, "", *table_lines(result), README_END])
    path.write_text(head + block + tail, encoding="utf-8")
    log(f"bench: wrote the table into {path}")


def resummarize(path: str, out_dir: str, readme: str | None = None) -> int:
    """Summarize a saved run again (after a change to how figures are derived from the runs)."""
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    cfg = result["config"]
    opts = Options(duration=cfg["duration_s"], warmup=cfg["warmup_s"], drain=cfg["drain_s"], quick=cfg["quick"])
    plan = Plan(servers=cfg["servers"], workloads=cfg["workloads"], reps=cfg["reps"], fixed_n=cfg["fixed_n"],
                ladder=cfg["ladder"], opts=opts, runs=result["runs"], cpu_ns=cfg.get("cpu_ns") or [])
    result["summary"] = summarize(plan)
    files = write_results(result, out_dir)
    if readme:
        write_readme_table(Path(readme), result)
    log(files[1].read_text(encoding="utf-8"))
    log(f"bench: re-summarized {path} into {', '.join(str(f) for f in files)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.resummarize:
        return resummarize(a.resummarize, a.out_dir, a.readme)
    t_start = time.monotonic()
    ensure_python_packages()
    build_loadgen()
    build_c_limit()
    make_payloads()
    raise_fd_limit(max(a.ladder + [a.fixed_n] + a.cpu_n) + 256)
    if a.realtime:
        PRIORITY[:] = ["chrt", "-f", "10"]
    elif a.nice is not None:
        PRIORITY[:] = ["nice", "-n", str(a.nice)]
        AUTOGROUP_NICE[:] = [a.nice]
    if not PINNING:
        log("bench: warning: fewer than 2 CPUs or no taskset: server and generator are not pinned")

    skipped: dict[str, str] = {}
    servers = list(a.servers)
    opts = Options(duration=a.duration, warmup=0.3 if a.quick else min(2.0, a.duration / 5), drain=2.0 if a.quick else 3.0,
                   quick=a.quick, slip_limit_us=a.slip_limit_ms * 1000, steal_limit=a.steal_limit / 100,
                   steal_retries=0 if a.quick else a.steal_retries, lazy_reads=not a.eager_reads,
                   fail_votes=not a.no_votes)
    plan = Plan(servers=servers, workloads=a.workloads, reps=a.reps, fixed_n=a.fixed_n, ladder=a.ladder, opts=opts,
                cpu_ns=a.cpu_n)
    env = environment()
    log(f"bench: servers {', '.join(servers)}; workloads {', '.join(a.workloads)}; fixed N={a.fixed_n}; "
        f"CPU per frame at N={sorted({a.fixed_n, *a.cpu_n})}; ladder {a.ladder}; {a.reps} rep(s) of {a.duration} s; "
        f"load average {env['loadavg_start']}{'; realtime' if a.realtime else ''}")
    floor = [audio_floor()]
    execute(plan)
    floor.append(audio_floor())
    turns = None
    if a.turns_k > 0 and REFERENCE in servers:
        turns = run_turns(a)
    env["loadavg_end"] = os.getloadavg()
    reference = REFERENCE if REFERENCE in servers else servers[0]
    result = {
        "config": {"servers": servers, "workloads": a.workloads, "reps": a.reps, "duration_s": a.duration,
                   "fixed_n": a.fixed_n, "ladder": a.ladder, "quick": a.quick, "p99_limit_ms": P99_LIMIT_MS,
                   "p99_strict_ms": P99_STRICT_MS, "server_cpu": SERVER_CPU, "generator_cpu": GEN_CPU,
                   "warmup_s": opts.warmup, "drain_s": opts.drain, "frame_ms": 20,
                   "slip_limit_ms": a.slip_limit_ms, "generator_cpu_limit": opts.cpu_limit, "cpu_ns": a.cpu_n,
                   "steal_limit": opts.steal_limit, "steal_retries": opts.steal_retries, "realtime": a.realtime, "nice": a.nice,
                   "lazy_reads": opts.lazy_reads, "fail_votes": opts.fail_votes, "baseline_tree": a.baseline_tree,
                   "command": " ".join(["bench/run.py", *(sys.argv[1:] if argv is None else argv)])},
        "environment": env,
        "reference": reference,
        "skipped": skipped,
        "summary": summarize(plan),
        "floor": floor_summary(floor),
        "turns": turns,
        "runs": plan.runs,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    files = write_results(result, a.out_dir)
    if a.readme:
        write_readme_table(Path(a.readme), result)
    log("")
    log(files[1].read_text(encoding="utf-8"))
    log(f"bench: wrote {', '.join(str(f) for f in files)} in {result['elapsed_s']} s")
    if a.quick:
        problems = check_quick(result, files)
        if turns is not None:
            problems += turns.get("problems", ["turns: no result"])
        if problems:
            log("bench --quick FAILED:\n  " + "\n  ".join(problems))
            return 1
        log("bench --quick: every figure produced, zero loss")
    return 0


if __name__ == "__main__":
    sys.exit(main())
