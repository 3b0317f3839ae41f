"""
CPU per frame of S3's ``/voice-ws`` beside txvoice's own ``/ws/audio``, side by side in one run.

The same generator (``bench/build/loadgen``), the same audio (``pcm48k.frames``: espeak-ng speech,
20 ms of 48 kHz 16-bit mono PCM, 1920-byte frames, S3's test frame), the same N and the same
daemon command (``run.py``'s ``txvoice`` server: echo pipeline, one audio thread), the two
endpoints interleaved and their order rotated from one repetition to the next:

- ``txvoice``: ``/ws/audio?codec=pcm_s16le&sample_rate=48000&channels=1``, a text ack per frame;
- ``txvoice-voicews``: ``/voice-ws?token=<JWT>`` (the daemon gets a JWT key), no ``voice_start``
  (S3's default format is this PCM), no answer per frame: ``ready``, then ``vad`` messages and the
  echo pipeline's replies to each turn the VAD closes (``audio_response`` and binary audio).

CPU per frame is the daemon's CPU time from the start of sending to the end of the drain over the
frames sent (not acked: ``/voice-ws`` acks none), for both.  Each run records the share of the
server's and the generator's core that the hypervisor took (steal) and the other processes' load.

    .venv/bin/python bench/bench_voicews.py --ns 50,150 --reps 3 --duration 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jwt  # noqa: E402

import run  # noqa: E402

SECRET = "bench-voicews-secret-0123456789abcdef0123"
WORKLOAD = "pcm48k"
VOICEWS_WORKLOAD = "pcm48k-voicews"


def voicews_spec() -> run.ServerSpec:
    return run.ServerSpec(
        "txvoice-voicews", run._txvoice_cmd([]), greeting=False,
        env=lambda n: {**run._txvoice_env(n), "TXVOICE_JWT_SECRET": SECRET},
        about="twistd txvoice as `txvoice` with a JWT key, S3's /voice-ws?token=, 48 kHz PCM, no voice_start")


def endpoints() -> list[tuple[run.ServerSpec, str]]:
    token = jwt.encode({"sub": "bench", "exp": int(time.time() + 86400)}, SECRET, algorithm="HS256")
    run.WORKLOADS[VOICEWS_WORKLOAD] = (run.WORKLOADS[WORKLOAD][0], f"/voice-ws?token={token}")
    return [(run.SERVERS["txvoice"], WORKLOAD), (voicews_spec(), VOICEWS_WORKLOAD)]


def figures(record: dict[str, Any]) -> dict[str, Any]:
    g = record.get("generator") or {}
    stolen = record.get("stolen") or {}
    machine = record.get("machine") or {}
    sent = g.get("frames_sent") or 0
    return {
        "server": record["server"], "sessions": record["sessions"], "error": record.get("error"),
        "connected": g.get("connected"), "frames_sent": sent, "frames_acked": g.get("frames_acked"),
        "server_cpu_s": record.get("server_cpu_s"),
        "cpu_us_per_frame_sent": round(record["server_cpu_s"] * 1e6 / sent, 1) if sent and record.get("server_cpu_s") else None,
        "bytes_in": g.get("bytes_in"), "server_errors": g.get("server_errors"), "first_error": record.get("first_error"),
        "stolen_server": stolen.get("server_cpu"), "stolen_generator": stolen.get("generator_cpu"),
        "others_cores": machine.get("others_cores"), "saturated": record.get("saturated"),
        "rss_per_session_kib": record.get("rss_per_session_kib"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ns", default="50,150", help="comma-separated session counts [50,150]")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of sending per run [10]")
    p.add_argument("--out", default=str(run.BENCH / "results" / "voicews.json"))
    a = p.parse_args(argv)
    ns = [int(x) for x in a.ns.split(",") if x]
    run.build_loadgen()
    run.make_payloads()
    run.raise_fd_limit(max(ns) + 256)
    opts = run.Options(duration=a.duration, warmup=min(2.0, a.duration / 5), drain=3.0, quick=False)
    pairs = endpoints()
    rows: list[dict[str, Any]] = []
    for rep in range(a.reps):
        for n in ns:
            order = pairs[rep % 2:] + pairs[:rep % 2]
            for spec, workload in order:
                row = figures(run.run_once(spec, workload, n, opts, f"voicews-r{rep}"))
                row["rep"] = rep
                rows.append(row)
                run.log(f"rep {rep} N={n} {row['server']}: {row['cpu_us_per_frame_sent']} µs/frame, "
                        f"stolen {row['stolen_server']}/{row['stolen_generator']}, others {row['others_cores']} cores, "
                        f"sent {row['frames_sent']} acked {row['frames_acked']} errors {row['server_errors']} {row['error'] or ''}")
    summary: dict[str, Any] = {}
    for n in ns:
        for spec, _ in pairs:
            values = [r["cpu_us_per_frame_sent"] for r in rows if r["server"] == spec.name and r["sessions"] == n]
            summary[f"{spec.name}@{n}"] = {"median_cpu_us_per_frame": run.median(values), "runs": values}
        ref = summary[f"txvoice@{n}"]["median_cpu_us_per_frame"]
        got = summary[f"txvoice-voicews@{n}"]["median_cpu_us_per_frame"]
        summary[f"ratio@{n}"] = round(got / ref, 2) if ref and got else None
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["bench/bench_voicews.py", *(argv or sys.argv[1:])]),
                               "environment": run.environment(), "summary": summary, "runs": rows}, indent=1))
    run.log(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
