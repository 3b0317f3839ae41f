"""
Interleaved A/B of server CPU per frame: the quick instrument for one change's effect.

``bench/run.py`` measures each server once per repetition and step; on a shared VM whose speed
drifts by tens of percent between minutes, a 5 % change is lost in that drift.  This runs each
variant for a short window many times, alternating their order each round (ABC, CBA, ...), and
reports the medians and their ratios to the last variant, so drift hits every variant alike.

Each run: the server pinned on the server's core and ``bench/build/loadgen`` on the generator's, as
``bench/run.py`` starts them (its server specs, pinning and /proc readers are used here), with
N Opus sessions on ``/ws/audio`` (acks; the echo: echoed frames), and the server's CPU time
(``/proc/PID/stat``, all threads) over a 5 s window after 3.5 s of load, divided by the frames
sent in that window (N x 50 x 5).  Steal per core (``/proc/stat``) and the generator's losses and p99 are
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  # bench/run.py: the servers, pinning, /proc readers and generator of the full benchmark

WINDOW = 5.0
WORKLOAD = "opus"


def spec(variant: str, baseline: str | None) -> run.ServerSpec:
    """The server of one variant: ``bench/run.py``'s own (``txvoice``, ``txvoice-base``, ``autobahn-echo``) with extra arguments."""
    name, _, extra = variant.partition(":")
    names = {"txvoice": run.REFERENCE, "base": run.BASELINE, "echo": "autobahn-echo"}
    if name not in names:
        raise SystemExit(f"bench_ab: unknown variant {variant!r} (txvoice[:ARGS], base[:ARGS], echo)")
    if name == "base":
        if baseline is None:
            raise SystemExit("bench_ab: 'base' needs --baseline-tree DIR")
        run.add_baseline(baseline)
    base = run.SERVERS[names[name]]
    if not extra:
        return base
    if name == "echo":
        raise SystemExit("bench_ab: the echo takes no arguments")
    args = shlex.split(extra)
    return run.ServerSpec(variant, lambda port, n: [*base.command(port, n), *args], env=base.env, about=variant)


def run_once(variant: str, sessions: int, port: int, baseline: str | None) -> dict[str, float]:
    server_spec = spec(variant, baseline)
    payload, path = run.WORKLOADS[WORKLOAD]
    env = {**os.environ, **server_spec.env(sessions)}
    server = subprocess.Popen([*run.pinned(run.SERVER_CPU), *server_spec.command(port, sessions)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.5)
        if server.poll() is not None:
            raise SystemExit(f"bench_ab: {variant} exited {server.returncode}")
        gen = subprocess.Popen(
            [*run.pinned(run.GEN_CPU), str(run.LOADGEN), "--port", str(port), "--path", path,
             "--frames", str(run.PAYLOADS / payload), "--sessions", str(sessions), "--duration", "9",
             "--mode", server_spec.mode, "--warmup", "1", "--drain", "1", "--lazy-reads",
             "--greeting" if server_spec.greeting else "--no-greeting"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(3.5)
        t0, s0 = run.proc_cpu_s(server.pid), run.cpu_ticks()
        time.sleep(WINDOW)
        t1, s1 = run.proc_cpu_s(server.pid), run.cpu_ticks()
        out, _ = gen.communicate(timeout=30)
    finally:
        server.terminate()
        server.wait(15)
    if t0 is None or t1 is None:
        raise SystemExit(f"bench_ab: {variant} exited while measured")
    lines = out.decode().strip().splitlines()
    report = json.loads(lines[-1]) if lines else {}
    stolen = run.stolen_share(s0, s1)
    return {"us_per_frame": (t1 - t0) * 1e6 / (sessions * 50 * WINDOW),
            "steal_server": stolen.get(run.SERVER_CPU, 0.0), "steal_gen": stolen.get(run.GEN_CPU, 0.0),
            "lost": report.get("frames_lost", -1), "p99_ms": report.get("latency_us", {}).get("p99", 0) / 1000.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-tree", default=None)
    parser.add_argument("--port", type=int, default=19100)
    args = parser.parse_args(argv)
    if not run.LOADGEN.exists() or not (run.PAYLOADS / run.WORKLOADS[WORKLOAD][0]).exists():
        raise SystemExit("bench_ab: build the generator and payloads first (bench/run.py --quick does)")
    baseline = str(Path(args.baseline_tree).resolve()) if args.baseline_tree else None
    results: dict[str, list[float]] = {v: [] for v in args.variants}
    port = args.port
    for r in range(args.rounds):
        for variant in args.variants if r % 2 == 0 else args.variants[::-1]:
            port += 1
            got = run_once(variant, args.sessions, port, baseline)
            results[variant].append(got["us_per_frame"])
            print(f"round {r} {variant:36s} {got['us_per_frame']:7.1f} us/frame  steal {got['steal_server']:.1%} / {got['steal_gen']:.1%}  "
                  f"lost {got['lost']}  p99 {got['p99_ms']:.2f} ms", flush=True)
    last = statistics.median(results[args.variants[-1]])
    print(f"medians at N = {args.sessions}, {args.rounds} rounds (ratio to {args.variants[-1]}):")
    for variant, runs in results.items():
        m = statistics.median(runs)
        print(f"  {variant:36s} {m:7.1f} us/frame  {m / last:.3f}x  runs {[round(x, 1) for x in runs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
