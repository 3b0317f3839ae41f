"""
Scale-out on Redis (#24), short: real daemons on one real redis-server, on loopback.

- broadcast fan-out latency: ``POST /events`` to node A for a conversation with members on A and B;
  time from the request to each member's ``status`` event (local on A, across Redis on B), p50/p99;
- resume time on another node: a client closes on A and resumes on B (connect -> ``resumed``);
- Redis commands per audio frame while sessions stream (INFO commandstats, health PINGs aside): 0;
- CPU per audio frame of a node with ``--redis`` beside one without (same load, interleaved).

``python bench/bench_redis.py [--reps 2] [--clients 8] [--seconds 4]`` (a couple of minutes).
Steal is read from /proc/stat around each CPU measurement and reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "scaleout")]

from cluster import bearer, http, send_reliable, start_nodes  # noqa: E402
from daemons import start_daemon  # noqa: E402
from redisd import RedisServer  # noqa: E402
from voiceclient import VoiceClient  # noqa: E402

FRAME = b"\x10\x00" * 320  # 20 ms of 16 kHz PCM


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def steal() -> tuple[int, int]:
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return int(cpu[7]), sum(int(x) for x in cpu)


def fanout(a, b, members_per_node: int, events: int) -> dict:
    clients = [VoiceClient(n.url) for n in (a, b) for _ in range(members_per_node)]
    local, remote = [], []
    try:
        for i, c in enumerate(clients):
            send_reliable(c, "conversation_start", f"j{i}", {"conversation_id": "bench-conv"})
        time.sleep(0.2)
        for k in range(events):
            sent = time.time()
            status, _ = http("POST", f"http://127.0.0.1:{a.port}/events",
                             {"event_type": "tick", "conversation_id": "bench-conv", "data": {"k": k}},
                             token=bearer("ops", scope="txvoice:broadcast"))
            assert status == 202
            for i, c in enumerate(clients):
                t, _ = c.until(lambda m: isinstance(m, dict) and m.get("type") == "status" and m["data"].get("k") == k)[-1]
                # the reader thread stamps perf_counter; convert via the offset taken now
                arrival = time.time() - (time.perf_counter() - t)
                (local if i < members_per_node else remote).append((arrival - sent) * 1000)
            time.sleep(0.02)
    finally:
        for c in clients:
            c.close()
    return {"local_ms": (round(pct(local, .5), 2), round(pct(local, .99), 2)),
            "across_redis_ms": (round(pct(remote, .5), 2), round(pct(remote, .99), 2)), "events": events}


def resume_times(a, b, count: int) -> dict:
    times = []
    for i in range(count):
        c = VoiceClient(a.url)
        token = c.greeting["data"]["resume_token"]
        send_reliable(c, "ping", f"r{i}")
        c.close()
        time.sleep(0.05)
        t0 = time.perf_counter()
        again = VoiceClient(b.url)
        again.send_json("connect", {"resume_token": token}, message_id="x")
        answer = again.until(lambda m: isinstance(m, dict) and m.get("type") == "connect" and "resumed" in m["data"])[-1][1]
        times.append((time.perf_counter() - t0) * 1000)
        assert answer["data"]["resumed"] is True
        again.close()
    return {"resume_ms_p50_p99": (round(pct(times, .5), 1), round(pct(times, .99), 1)), "resumes": count}


def stream(node, clients: int, seconds: float, redis=None, counted: dict | None = None) -> int:
    """Stream ``seconds`` of 20 ms frames from ``clients`` sessions; with ``redis``, count its commands meanwhile."""
    cs = [VoiceClient(node.url) for _ in range(clients)]
    for c in cs:
        c.send_json("voice_start", {"codec": "pcm_s16le", "sample_rate": 16000, "mode": "push_to_talk"}, message_id="vs")
        c.until(lambda m: isinstance(m, dict) and m.get("type") == "voice_start")
    frames = 0
    before = redis.commandstats() if redis is not None else {}
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds:
        for c in cs:
            c.ws.send(FRAME)
            frames += 1
        n += 1
        delay = start + n * 0.02 - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    for c in cs:  # every frame has reached the node once its status answer is back
        c.send_json("status", {}, message_id="st")
        c.until(lambda m: isinstance(m, dict) and m.get("type") == "status" and m["data"].get("reply_to") == "st")
    if redis is not None and counted is not None:
        after = redis.commandstats()
        counted.update({k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)})
    for c in cs:
        c.close()
    return frames


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis = RedisServer(tmp).start()
        started: list = []
        try:
            a, b = start_nodes(tmp, redis.url, 2, "--redis-session-ttl", "300")
            started += [a, b]
            plain = start_daemon(tmp, "--jwt-secret", "x" * 32)
            started.append(plain)
            result: dict = {"fanout": fanout(a, b, 5, 40), "resume": resume_times(a, b, 20)}
            moved: dict[str, int] = {}
            frames = stream(a, args.clients, 2.0, redis, moved)  # sessions open before, close after the count
            moved.pop("ping", None)
            moved.pop("info", None)
            per_frame = sum(moved.values()) / frames
            result["redis_commands_per_frame"] = {"frames": frames, "commands": moved, "per_frame": per_frame}
            cpu: dict[str, list[float]] = {"with --redis": [], "without": []}
            steals = []
            for _ in range(args.reps):
                for label, node in (("with --redis", a), ("without", plain)):
                    s0, t0 = steal()
                    c0 = cpu_seconds(node.proc.pid)
                    f = stream(node, args.clients, args.seconds)
                    cpu[label].append((cpu_seconds(node.proc.pid) - c0) / f * 1e6)
                    s1, t1 = steal()
                    steals.append(100.0 * (s1 - s0) / max(1, t1 - t0))
            result["cpu_us_per_frame"] = {k: [round(v, 1) for v in vs] for k, vs in cpu.items()}
            result["cpu_ratio_with_over_without"] = round(statistics.median(cpu["with --redis"]) / statistics.median(cpu["without"]), 3)
            result["steal_percent"] = [round(s, 1) for s in steals]
        finally:
            for n in started:
                n.stop()
            redis.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
