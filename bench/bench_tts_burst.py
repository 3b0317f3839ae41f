#!/usr/bin/env python3
"""
Time to first audio of N espeak-ng syntheses started at once (twenty turns ending together), with
and without warm processes (txvoice.engines.warm), interleaved rounds, in this one process.

    .venv/bin/python bench/bench_tts_burst.py [--n 20] [--rounds 5]

Prints p50 / p95 / max of ``EspeakSynthesis.time_to_first_audio_ms`` per setting and the steal
and 1-minute load average over the run (the cores are shared).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

from txvoice.engines.tts_espeak import EspeakTTS

TEXT = "It is ten past nine in the morning."


def steal() -> tuple[int, int]:
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return v[7], sum(v)


def burst(tts: EspeakTTS, n: int) -> list[float]:
    out: list[float] = []
    go = threading.Barrier(n)

    def one() -> None:
        go.wait()
        s = tts.synthesize(TEXT)
        for _ in s:
            pass
        out.append(s.time_to_first_audio_ms or 0.0)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def q(vs: list[float], p: float) -> float:
    vs = sorted(vs)
    return vs[min(len(vs) - 1, int(p * len(vs)))]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    if not 1 <= a.n <= 64 or not 1 <= a.rounds <= 50:
        p.error("bounded: 1 <= n <= 64, 1 <= rounds <= 50")
    engines = {"cold (warm=0)": EspeakTTS(warm=0), "warm (default)": EspeakTTS()}
    burst(engines["warm (default)"], a.n)  # the first burst teaches the pool its size
    time.sleep(1.0)
    got: dict[str, list[float]] = {k: [] for k in engines}
    s0, load0 = steal(), os.getloadavg()[0]
    for _ in range(a.rounds):
        for name, tts in engines.items():
            got[name] += burst(tts, a.n)
            time.sleep(0.5)  # the warm pool refills
    s1, load1 = steal(), os.getloadavg()[0]
    for name, vs in got.items():
        print(f"{name:15s} time to first audio p50 {q(vs, 0.5):6.1f}  p95 {q(vs, 0.95):6.1f}  max {max(vs):6.1f} ms "
              f"(n={len(vs)})")
    print(f"steal {(s1[0] - s0[0]) / max(1, s1[1] - s0[1]):.1%}, load average {load0:.2f} -> {load1:.2f}")
    engines["warm (default)"].warm.close()


if __name__ == "__main__":
    main()
