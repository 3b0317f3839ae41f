"""
Reactor lag of a speech-pipeline daemon while many sessions transcribe and synthesize at once.

Starts ``twistd -n txvoice --pipeline speech`` on loopback, opens ``--sessions`` (20) native
sessions and runs rounds in which every session speaks one phrase of the rules agent's grammar
(espeak-ng speech, 48 kHz Opus, one 20 ms packet every 20 ms, all sessions together), ends the turn
(push-to-talk ``voice_end``) and waits for its whole spoken answer; so each round every session's
audio is decoded and recognized at once, then 20 turns are answered and synthesized at once (the
worst case: the turns end within 20 ms of each other).  The server's own reactor-lag probe
(``/health`` ``reactor_lag_ms``, a 0.25 s timer over the last 60 s) is read every few seconds, and at
the end, when its window holds only the loaded period.  Also reports the per-stage latencies of the
turns (from their ``processing_completed`` events) and any failure.

    .venv/bin/python bench/bench_speech_lag.py [--sessions 20] [--duration 60] [--json PATH]
        [-- extra twistd txvoice options, e.g. --stt-options pool_size=24]

Exits non-zero when the lag p99 is not below ``--max-lag-ms`` (20) or a turn failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import opuslib
import soxr
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
PHRASES = ["what time is it", "good morning", "thank you", "repeat after me hello world",
           "what is the date today", "say that again", "goodbye", "what can you do"]
STAGES = ("stt", "agent", "tts", "first_audio", "total", "queue")


def speech_packets(text: str) -> list[bytes]:
    """``text`` spoken by espeak-ng, padded with 300 ms of silence each side, as 20 ms Opus packets at 48 kHz."""
    wav = subprocess.run(["espeak-ng", "--stdout", "-s", "170", text], check=True, capture_output=True).stdout
    rate = int.from_bytes(wav[24:28], "little")
    pcm = np.frombuffer(wav[wav.index(b"data") + 8:], dtype="<i2")
    pcm = soxr.resample(pcm, rate, 48000).astype(np.int16)
    pad = np.zeros(14400, dtype=np.int16)
    pcm = np.concatenate([pad, pcm, pad])
    pcm = np.concatenate([pcm, np.zeros((-len(pcm)) % 960, dtype=np.int16)])
    encoder = opuslib.Encoder(48000, 1, opuslib.APPLICATION_VOIP)
    return [encoder.encode(pcm[i:i + 960].tobytes(), 960) for i in range(0, len(pcm), 960)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port: int) -> dict[str, Any]:
    """``/health`` (its body also when it says 503: unhealthy)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def start_daemon(port: int, extra: list[str], log_path: Path) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "twistd"), "--nodaemon", "--pidfile=", "--logfile", str(log_path),
           "txvoice", "--listen", f"tcp:{port}:interface=127.0.0.1", "--pipeline", "speech", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TXVOICE_LISTEN", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            health(port)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the daemon did not answer /health")


def wait_until_warm(log_path: Path, timeout: float = 120.0) -> None:
    """Until the daemon logs that its speech engines are loaded (decoders load at start, not under load)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "speech engines ready" in log_path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise SystemExit("the speech engines did not warm up")


class Session:
    """One client: speaks a phrase per round, collects its turn's events."""

    def __init__(self, index: int, url: str) -> None:
        self.index = index
        self.url = url
        self.ws: Any = None
        self.completed: list[dict] = []
        self.failures: list[dict] = []
        self.transcripts_ok = 0
        self.turns = 0

    async def open(self) -> None:
        self.ws = await connect(self.url, subprotocols=["txvoice.v1"], max_size=None, open_timeout=10)
        await self.ws.recv()  # the greeting

    async def round(self, text: str, packets: list[bytes], start_at: float) -> None:
        ws = self.ws
        loop = asyncio.get_running_loop()
        await ws.send(json.dumps({"type": "voice_start", "data": {"codec": "opus", "sample_rate": 48000,
                                                                   "mode": "push_to_talk"}}))
        receiver = asyncio.create_task(self._receive(text))
        due = start_at + (self.index % 20) / 1000.0  # spread over one 20 ms frame
        for packet in packets:
            pause = due - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            await ws.send(packet)
            due += 0.02
        await ws.send(json.dumps({"type": "voice_end", "data": {}}))
        await asyncio.wait_for(receiver, timeout=60)
        self.turns += 1

    async def _receive(self, text: str) -> None:
        """Until the response's final chunk (or the turn's failure)."""
        async for raw in self.ws:
            if isinstance(raw, bytes):
                continue
            msg = json.loads(raw)
            data = msg.get("data", {})
            if msg["type"] == "status":
                kind = data.get("event_type")
                if kind == "transcript" and data.get("final"):
                    self.transcripts_ok += data["text"] == text
                elif kind == "processing_completed":
                    self.completed.append(data["latency_ms"])
                elif kind in ("processing_failed", "busy"):
                    self.failures.append(data)
                    if kind == "processing_failed":
                        return
            elif msg["type"] == "voice_stream_chunk" and data.get("final"):
                return
            elif msg["type"] == "error":
                self.failures.append(data)


async def run(args: argparse.Namespace, port: int) -> dict[str, Any]:
    packets = {text: speech_packets(text) for text in PHRASES}
    sessions = [Session(i, f"ws://127.0.0.1:{port}/") for i in range(args.sessions)]
    await asyncio.gather(*(s.open() for s in sessions))
    loop = asyncio.get_running_loop()
    samples: list[dict[str, Any]] = []

    async def sample_health() -> None:
        while True:
            await asyncio.sleep(args.sample_every)
            h = await loop.run_in_executor(None, health, port)
            samples.append({"t": round(loop.time() - began, 1), **h["reactor_lag_ms"],
                            "audio_queue_depth": h["audio_queue_depth"]})

    began = loop.time()
    sampler = asyncio.create_task(sample_health())
    rounds = 0
    while loop.time() - began < args.duration:
        start_at = loop.time() + 0.05
        await asyncio.gather(*(s.round(PHRASES[(rounds + s.index) % len(PHRASES)],
                                       packets[PHRASES[(rounds + s.index) % len(PHRASES)]], start_at)
                               for s in sessions))
        rounds += 1
    loaded_s = loop.time() - began
    sampler.cancel()
    final = await loop.run_in_executor(None, health, port)
    for s in sessions:
        await s.ws.close()
    latencies = [latency for s in sessions for latency in s.completed]
    turns = sum(s.turns for s in sessions)
    stage_stats = {}
    for stage in STAGES:
        values = sorted(lat[stage] for lat in latencies if stage in lat)
        if values:
            stage_stats[stage] = {"median": round(statistics.median(values), 2),
                                  "p95": round(values[min(len(values) - 1, int(0.95 * len(values)))], 2),
                                  "max": round(values[-1], 2)}
    return {
        "sessions": args.sessions, "rounds": rounds, "turns": turns, "loaded_seconds": round(loaded_s, 1),
        "completed": len(latencies), "transcripts_exact": sum(s.transcripts_ok for s in sessions),
        "failures": [f for s in sessions for f in s.failures],
        "reactor_lag_ms_final": final["reactor_lag_ms"], "reactor_lag_samples": samples,
        "reactor_lag_p99_ms_max_seen": max([x["p99"] for x in samples] + [final["reactor_lag_ms"]["p99"]]),
        "stage_latency_ms": stage_stats,
    }


def cpu_steal() -> dict[str, tuple[int, int]]:
    """(stolen, total) clock ticks per CPU since boot (/proc/stat), to say how disturbed a run was."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in rest.split()[:8]]
            out[name] = (v[7] if len(v) > 7 else 0, sum(v))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--duration", type=float, default=65.0,
                        help="seconds of load; at least 60 for the final lag figure to cover only load (its window is 60 s)")
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--max-lag-ms", type=float, default=20.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep-log", action="store_true")
    parser.add_argument("daemon_args", nargs="*", help="extra twistd txvoice options (after --)")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed")
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="txvoice-speech-lag-"))
    log_path = tmp / "twistd.log"
    proc = start_daemon(port, args.daemon_args, log_path)
    try:
        wait_until_warm(log_path)
        before = cpu_steal()
        result = asyncio.run(run(args, port))
        after = cpu_steal()
        result["steal"] = {cpu: round((after[cpu][0] - before[cpu][0]) / max(1, after[cpu][1] - before[cpu][1]), 3)
                           for cpu in after if cpu in before}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if args.keep_log:
            print(f"daemon log: {log_path}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result["daemon_args"] = args.daemon_args
    lag = result["reactor_lag_ms_final"]
    print(f"{result['sessions']} sessions, {result['rounds']} rounds, {result['turns']} turns in "
          f"{result['loaded_seconds']} s; completed {result['completed']}, exact transcripts "
          f"{result['transcripts_exact']}, failures {len(result['failures'])}")
    print(f"reactor lag over the loaded window: p50 {lag['p50']} ms, p99 {lag['p99']} ms "
          f"(highest p99 seen while loading: {result['reactor_lag_p99_ms_max_seen']} ms); steal {result['steal']}")
    for stage, s in result["stage_latency_ms"].items():
        print(f"  {stage:12s} median {s['median']:8.2f} ms   p95 {s['p95']:8.2f} ms   max {s['max']:8.2f} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    ok = lag["p99"] < args.max_lag_ms and not result["failures"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
