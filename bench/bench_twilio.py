"""
N concurrent phone calls replayed into one daemon, over Twilio Media Streams and, beside them, the
native dialect carrying the same audio (μ-law 8 kHz, 20 ms frames): lost frames, reply pacing
jitter and the daemon's CPU per call.

Each call: (Twilio) ``connected``, ``start``, then one ``media`` message every 20 ms, as Twilio
sends them: 300 ms of silence, an espeak-ng utterance (sox → μ-law 8 kHz), silence while the echo
pipeline's reply (the turn's own audio, resampled and μ-law encoded on the worker pool) comes back
paced at real time; each ``mark`` is echoed; ``stop`` once the reply is over.  Native: ``voice_start``
(mulaw 8000, voice_activity), binary frames, the reply as binary frames.  The calls start spread
over ``--ramp`` seconds.

Figures (per dialect):

* lost frames: inbound, frames sent minus frames the server counted in
  (``txvoice_audio_frames_total{direction="in"}``); outbound, frames the server sent minus frames
  the calls received; plus Twilio ``sequenceNumber`` gaps the server counted;
* pacing jitter of the reply: each reply frame's arrival against the pacer's schedule (frame i is
  due ``max(0, 20 i - lead)`` ms after the first; lead 100 ms), p50/p99/max in ms, and the
  inter-arrival deviation from 20 ms;
* CPU: the daemon's user+system seconds over the run, per call and as % of one core.

    .venv/bin/python bench/bench_twilio.py [--calls 100] [--dialects twilio,native] [--cpu 0]
        [--gen-cpu 1] [--nice -10] [--json bench/results/twilio.json]

The daemon runs on one core (``taskset -c CPU``, default 0) with ``--audio-threads 1``; the calls
run in this process (uvloop when installed), pinned to ``--gen-cpu`` (default 1).  Each run
records, per core, the share of its time the hypervisor stole and the share that was busy.  Bounded: at most 200 calls, each at most 20 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from daemons import free_port, metric  # noqa: E402
from twiliocall import frames, ulaw_silence, ulaw_speech  # noqa: E402

LEAD_MS = 100.0
TEXT = "Hello, I am calling about my order."


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> dict[str, tuple[int, int, int]]:
    """(stolen, busy, total) clock ticks of each core since boot, from /proc/stat."""
    ticks = {}
    try:
        text = Path("/proc/stat").read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit():
            v = [int(x) for x in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
            ticks[name[3:]] = (v[7] if len(v) > 7 else 0, v[0] + v[1] + v[2] + v[5] + v[6], sum(v))
    return ticks


def steal(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> dict[str, Any]:
    """Per core over the run: the share the hypervisor took (steal) and the share busy with anything."""
    out = {}
    for cpu in sorted(after):
        if cpu in before:
            total = after[cpu][2] - before[cpu][2]
            if total > 0:
                out[cpu] = {"stolen": round((after[cpu][0] - before[cpu][0]) / total, 3),
                            "busy": round((after[cpu][1] - before[cpu][1]) / total, 3)}
    return out


def set_autogroup_nice(pid: int | str, nice: int) -> None:
    """CFS shares a core between sessions (autogroups) first: a plain ``nice`` does nothing against
    other sessions' work, the session's autogroup nice does (bench/run.py --nice does the same)."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError as e:
        print(f"bench_twilio: could not set the autogroup nice of {pid}: {e}", file=sys.stderr)


def start_daemon(port: int, cpu: int | None, log_path: Path, nice: int | None = None) -> subprocess.Popen:
    twistd = str(Path(sys.executable).with_name("twistd"))
    cmd = [twistd, "-n", "--pidfile=", "--logfile", str(log_path), "txvoice", "--listen",
           f"tcp:{port}:interface=127.0.0.1", "--pipeline", "echo", "--audio-threads", "1",
           "--max-connections-per-ip", "0", "--max-connections", "1000"]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    if nice is not None:
        cmd = ["nice", "-n", str(nice), *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=nice is not None)
    if nice is not None:
        set_autogroup_nice(proc.pid, nice)
    deadline = time.monotonic() + 90  # a loaded machine starts it slowly
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the daemon did not start")


class Call:
    """One replayed call; records the reply's arrival times."""

    def __init__(self, index: int, audio: list[bytes]) -> None:
        self.index = index
        self.audio = audio
        self.sent = 0
        self.arrivals: list[float] = []
        self.reply_bytes = 0
        self.marks = 0
        self.error: str | None = None
        self.last_mark_ms = -1.0
        self.final = False  # native: the response's final chunk came

    async def run(self, dialect: str, port: int, start_at: float) -> None:
        from websockets.asyncio.client import connect

        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        try:
            if dialect == "twilio":
                async with connect(f"ws://127.0.0.1:{port}/twilio", max_size=None, compression=None) as ws:
                    await self._twilio(ws)
            else:
                async with connect(f"ws://127.0.0.1:{port}/", subprotocols=["txvoice.v1"], max_size=None,
                                   compression=None) as ws:
                    await self._native(ws)
        except Exception as e:  # reported, not raised: the others go on
            self.error = f"{type(e).__name__}: {e}"

    async def _stream(self, send, done) -> None:
        """A frame every 20 ms (absolute schedule) until the reply has ended, at most 20 s."""
        t0 = time.monotonic()
        silence = ulaw_silence(20)
        i = 0
        while i < 1000:
            frame = self.audio[i] if i < len(self.audio) else silence
            await send(frame)
            self.sent += 1
            i += 1
            if i >= len(self.audio) and done():
                return
            await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))

    def _done(self) -> bool:
        """The reply is over: native, its final chunk came; Twilio, its marks cover it and 1.5 s passed."""
        if self.final:
            return True
        return (bool(self.arrivals) and self.last_mark_ms >= self.reply_bytes / 8.0 - 0.5
                and time.monotonic() - self.arrivals[-1] > 1.5)

    async def _twilio(self, ws) -> None:
        sid = f"MZ{self.index:032x}"
        seq = 0
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        seq += 1
        await ws.send(json.dumps({"event": "start", "sequenceNumber": str(seq), "streamSid": sid, "start": {
            "accountSid": "AC" + "0" * 32, "streamSid": sid, "callSid": f"CA{self.index:032x}", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {}}}))
        chunk = 0

        async def send(frame: bytes) -> None:
            nonlocal seq, chunk
            seq += 1
            chunk += 1
            await ws.send('{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
                          '"timestamp":"%d","payload":"%s"},"streamSid":"%s"}'
                          % (seq, chunk, (chunk - 1) * 20, base64.b64encode(frame).decode(), sid))

        async def receive() -> None:
            nonlocal seq
            async for raw in ws:
                t = time.monotonic()
                if raw.startswith('{"event":"media"'):
                    self.arrivals.append(t)
                    self.reply_bytes += len(base64.b64decode(json.loads(raw)["media"]["payload"]))
                else:
                    msg = json.loads(raw)
                    if msg.get("event") == "mark":
                        self.marks += 1
                        self.last_mark_ms = float(msg["mark"]["name"].rsplit(":", 1)[1])
                        seq += 1
                        await ws.send(json.dumps({"event": "mark", "sequenceNumber": str(seq), "streamSid": sid,
                                                  "mark": msg["mark"]}))

        reader = asyncio.ensure_future(receive())
        await self._stream(send, self._done)
        seq += 1
        await ws.send(json.dumps({"event": "stop", "sequenceNumber": str(seq), "streamSid": sid,
                                  "stop": {"accountSid": "AC" + "0" * 32, "callSid": f"CA{self.index:032x}"}}))
        reader.cancel()

    async def _native(self, ws) -> None:
        await ws.recv()  # connect greeting
        await ws.send(json.dumps({"type": "voice_start", "data": {"codec": "mulaw", "sample_rate": 8000,
                                                                  "mode": "voice_activity"}, "message_id": "s"}))

        async def receive() -> None:
            async for raw in ws:
                if isinstance(raw, bytes):
                    self.arrivals.append(time.monotonic())
                    self.reply_bytes += len(raw)
                elif '"final":true' in raw.replace(" ", "") and '"voice_stream_chunk"' in raw:
                    self.final = True

        reader = asyncio.ensure_future(receive())
        await self._stream(ws.send, self._done)
        reader.cancel()


def pacing(calls: list[Call]) -> dict[str, Any]:
    late, gaps = [], []
    for call in calls:
        a = call.arrivals
        if not a:
            continue
        for i, t in enumerate(a):
            late.append((t - a[0]) * 1000.0 - max(0.0, 20.0 * i - LEAD_MS))
        for i in range(int(LEAD_MS // 20) + 1, len(a)):
            gaps.append(abs((a[i] - a[i - 1]) * 1000.0 - 20.0))

    def q(values: list[float], p: float) -> float:
        if not values:
            return float("nan")
        values = sorted(values)
        return round(values[min(len(values) - 1, int(p * len(values)))], 2)

    jitter = [abs(x) for x in late]
    return {"schedule_jitter_ms": {"p50": q(jitter, 0.5), "p99": q(jitter, 0.99), "max": q(jitter, 1.0)},
            "interarrival_deviation_ms": {"p50": q(gaps, 0.5), "p99": q(gaps, 0.99), "max": q(gaps, 1.0)},
            "frames": len(late)}


async def run_dialect(dialect: str, args: argparse.Namespace, audio: list[bytes]) -> dict[str, Any]:
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"bench-twilio-{dialect}-{port}.log"
    http = f"http://127.0.0.1:{port}"
    proc = start_daemon(port, args.cpu, log_path, args.nice)
    try:
        # Warm up (lazy loads, first resampler/encoder) with one short call, not counted.
        await Call(-1, audio[:60]).run(dialect, port, time.monotonic())
        in0 = metric(http, "txvoice_audio_frames_total", direction="in")
        out0 = metric(http, "txvoice_audio_frames_total", direction="out")
        gaps0 = metric(http, "txvoice_telephony_sequence_gaps_total", dialect="twilio")
        cpu0, wall0, ticks0, gen0 = cpu_seconds(proc.pid), time.monotonic(), cpu_ticks(), time.process_time()
        calls = [Call(i, audio) for i in range(args.calls)]
        start = time.monotonic() + 0.5
        await asyncio.gather(*(c.run(dialect, port, start + args.ramp * i / max(1, args.calls))
                               for i, c in enumerate(calls)))
        await asyncio.sleep(1.0)
        cpu1, wall1, ticks1, gen1 = cpu_seconds(proc.pid), time.monotonic(), cpu_ticks(), time.process_time()
        frames_in = metric(http, "txvoice_audio_frames_total", direction="in") - in0
        frames_out = metric(http, "txvoice_audio_frames_total", direction="out") - out0
        gaps = metric(http, "txvoice_telephony_sequence_gaps_total", dialect="twilio") - gaps0
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    sent = sum(c.sent for c in calls)
    received = sum(len(c.arrivals) for c in calls)
    cpu = cpu1 - cpu0
    call_seconds = sum(c.sent for c in calls) * 0.02
    result: dict[str, Any] = {
        "dialect": dialect, "calls": args.calls,
        "errors": [c.error for c in calls if c.error],
        "calls_without_reply": sum(1 for c in calls if not c.arrivals),
        "frames_sent": sent, "frames_counted_in": int(frames_in), "lost_in": int(sent - frames_in),
        "reply_frames_sent": int(frames_out), "reply_frames_received": received, "lost_out": int(frames_out - received),
        "sequence_gaps": int(gaps), "marks": sum(c.marks for c in calls),
        "reply_ms_mean": round(statistics.mean(c.reply_bytes / 8.0 for c in calls), 1),
        "pacing": pacing(calls),
        "cpu_s": round(cpu, 2), "wall_s": round(wall1 - wall0, 2),
        "cpu_percent_of_core": round(100.0 * cpu / (wall1 - wall0), 1),
        "cpu_ms_per_call_second": round(1000.0 * cpu / call_seconds, 2),
        "cores": steal(ticks0, ticks1),
        "generator_percent_of_core": round(100.0 * (gen1 - gen0) / (wall1 - wall0), 1),
    }
    # What else ran on the daemon's core (other processes): its busy share less the daemon's own.
    core = result["cores"].get(str(args.cpu)) if args.cpu is not None else None
    if core is not None:
        result["others_percent_of_daemon_core"] = round(max(0.0, 100.0 * core["busy"] - result["cpu_percent_of_core"]), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--dialects", default="twilio,native")
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which the calls start")
    parser.add_argument("--cpu", type=int, default=0, help="core the daemon is pinned to (-1: not pinned)")
    parser.add_argument("--gen-cpu", type=int, default=1, help="core the calls run on (-1: not pinned)")
    parser.add_argument("--nice", type=int, default=None, metavar="N",
                        help="run the daemon and the calls at this (autogroup) nice, e.g. -10 on a shared machine (root)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    args.calls = max(1, min(args.calls, 200))
    if args.cpu < 0:
        args.cpu = None
    if args.gen_cpu >= 0 and hasattr(os, "sched_setaffinity") and args.gen_cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {args.gen_cpu})
    if args.nice is not None:
        if os.getsid(0) != os.getpid():
            os.setsid()
        os.nice(args.nice)
        set_autogroup_nice("self", args.nice)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    audio = frames(ulaw_silence(300) + ulaw_speech(TEXT) + ulaw_silence(900))
    results = {"calls": args.calls, "nice": args.nice,
               "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()},
               "runs": [asyncio.run(run_dialect(d, args, audio)) for d in args.dialects.split(",")]}
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
