"""
Interleaved A/B of server CPU per frame: the quick instrument for one change's effect.

``bench/run.py`` measures each server once per repetition and step; on a shared VM whose speed
drifts by tens of percent between minutes, a 5 % change is lost in that drift.  This runs each
variant for a short window many times, alternating their order each round (ABC, CBA, ...), and
reports the medians and their ratios to the last variant, so drift hits every variant alike.

Each run: the server pinned on core 0 (``taskset -c 0``), ``bench/build/loadgen`` on core 1 with
N Opus sessions on ``/ws/audio`` (acks; the echo: echoed frames), and the server's CPU time
(``/proc/PID/stat``, all threads) over a 5 s window after 3.5 s of load, divided by the frames
sent in that window (N x 50 x 5).  Steal (``/proc/stat``) and the generator's losses and p99 are
printed per run.  Build the generator and payloads first (``bench/run.py`` does).

Variants: ``txvoice[:ARGS]`` (this checkout's daemon with extra ``twistd txvoice`` arguments),
``base[:ARGS]`` (the daemon from ``--baseline-tree DIR``), ``echo`` (``bench/servers/autobahn_echo.py``).

Usage: ``python bench/bench_ab.py --sessions 100 --rounds 3 --baseline-tree DIR txvoice
"txvoice:--audio-inline-max 0" base echo``
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
TWISTD = str(Path(PY).with_name("twistd"))
LOADGEN = BENCH / "build" / "loadgen"
FRAMES = BENCH / "build" / "payloads" / "opus48k.frames"
WINDOW = 5.0


def command(variant: str, port: int, baseline: str | None) -> tuple[list[str], dict[str, str], str]:
    """The server's command line, environment and the generator's mode for one variant."""
    name, _, extra = variant.partition(":")
    env = dict(os.environ, TXVOICE_MAX_CONNECTIONS="5000", TXVOICE_MAX_CONNECTIONS_PER_IP="0")
    pin = ["taskset", "-c", "0"]
    if name == "echo":
        return [*pin, PY, str(BENCH / "servers" / "autobahn_echo.py"), "--port", str(port)], env, "echo"
    if name == "base":
        if baseline is None:
            raise SystemExit("bench_ab: 'base' needs --baseline-tree DIR")
        env["PYTHONPATH"] = baseline
    elif name != "txvoice":
        raise SystemExit(f"bench_ab: unknown variant {variant!r} (txvoice[:ARGS], base[:ARGS], echo)")
    cmd = [*pin, TWISTD, "-n", "--pidfile=", "--logfile=/dev/null", "txvoice",
           "--listen", f"tcp:{port}:interface=127.0.0.1", "--audio-threads", "1", "--pipeline", "echo",
           *shlex.split(extra)]
    return cmd, env, "ack"


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def steal_ticks() -> int:
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8])


def run_once(variant: str, sessions: int, port: int, baseline: str | None) -> dict[str, float]:
    cmd, env, mode = command(variant, port, baseline)
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.5)
        if server.poll() is not None:
            raise SystemExit(f"bench_ab: {variant} exited {server.returncode}")
        gen = subprocess.Popen(
            ["taskset", "-c", "1", str(LOADGEN), "--port", str(port),
             "--path", "/ws/audio?codec=opus&sample_rate=48000&channels=1", "--frames", str(FRAMES),
             "--sessions", str(sessions), "--duration", "9", "--mode", mode, "--warmup", "1", "--drain", "1",
             "--lazy-reads", "--greeting" if mode == "ack" else "--no-greeting"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(3.5)
        t0, s0 = cpu_ticks(server.pid), steal_ticks()
        time.sleep(WINDOW)
        t1, s1 = cpu_ticks(server.pid), steal_ticks()
        out, _ = gen.communicate(timeout=30)
    finally:
        server.terminate()
        server.wait(15)
    lines = out.decode().strip().splitlines()
    report = json.loads(lines[-1]) if lines else {}
    hz = os.sysconf("SC_CLK_TCK")
    return {"us_per_frame": (t1 - t0) / hz * 1e6 / (sessions * 50 * WINDOW), "steal_ticks": s1 - s0,
            "lost": report.get("frames_lost", -1), "p99_ms": report.get("latency_us", {}).get("p99", 0) / 1000.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-tree", default=None)
    parser.add_argument("--port", type=int, default=19100)
    args = parser.parse_args(argv)
    if not LOADGEN.exists() or not FRAMES.exists():
        raise SystemExit("bench_ab: build the generator and payloads first (bench/run.py --quick does)")
    baseline = str(Path(args.baseline_tree).resolve()) if args.baseline_tree else None
    results: dict[str, list[float]] = {v: [] for v in args.variants}
    port = args.port
    for r in range(args.rounds):
        for variant in args.variants if r % 2 == 0 else args.variants[::-1]:
            port += 1
            got = run_once(variant, args.sessions, port, baseline)
            results[variant].append(got["us_per_frame"])
            print(f"round {r} {variant:36s} {got['us_per_frame']:7.1f} us/frame  steal {got['steal_ticks']} ticks  "
                  f"lost {got['lost']}  p99 {got['p99_ms']:.2f} ms", flush=True)
    last = statistics.median(results[args.variants[-1]])
    print(f"medians at N = {args.sessions}, {args.rounds} rounds (ratio to {args.variants[-1]}):")
    for variant, runs in results.items():
        m = statistics.median(runs)
        print(f"  {variant:36s} {m:7.1f} us/frame  {m / last:.3f}x  runs {[round(x, 1) for x in runs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
