"""
S4 call sessions across nodes (#24), short: two real daemons on one real redis-server, loopback,
S4's flow from Python ``websockets`` (token exchange, ``/realtime/ws``, ``session_start``).

- resume of an idle call: ``session_start`` on A, drop, ``session_start`` of that call on B
  (time from the ``session_start`` sent to ``session_started`` received), beside the same on A
  (the node that holds it: no Redis hand-over) -- p50/p99;
- take-over of a live call from the other node (A's connection closed with 4005), p50/p99;
- resume on B right after a drop mid-reply (the old node finishes the reply first), p50/max;
- steal and the machine's load around the run.

``python bench/bench_redis_calls.py [--count 30] [--replies 5]`` (well under a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests" / "scaleout"),
                str(HERE.parent / "tests" / "realtime"), str(HERE.parent / "tests" / "audio")]

from bench_redis import pct, steal  # noqa: E402
from cluster import start_nodes  # noqa: E402
from redisd import RedisServer  # noqa: E402
from rtsupport import S4Client, is_type  # noqa: E402
from signal_speech import speak  # noqa: E402
from test_scaleout_calls import start, token  # noqa: E402


def timed_start(client: S4Client, node, user: str, call: str) -> tuple[float, dict]:
    tok = token(node, user, call)
    t0 = time.perf_counter()
    answer = client.start(node, user=user, call=call, token=tok)
    return (time.perf_counter() - t0) * 1000, answer


def resumes(first_node, second_node, count: int, tag: str) -> list[float]:
    times = []
    for i in range(count):
        call = f"{tag}-{i}"
        c = S4Client(first_node)
        start(c, first_node, "bench", call)
        c.close()
        time.sleep(0.05)
        again = S4Client(second_node)
        ms, answer = timed_start(again, second_node, "bench", call)
        assert answer["data"]["resumed"] is True, answer
        times.append(ms)
        again.send("session_end", call)
        again.until(is_type("connection_status", status="session_ended"))
        again.close()
    return times


def takeovers(a, b, count: int) -> list[float]:
    times = []
    for i in range(count):
        call = f"take-{i}"
        live = S4Client(a)
        start(live, a, "bench", call)
        other = S4Client(b)
        ms, answer = timed_start(other, b, "bench", call)
        assert answer["data"]["resumed"] is True, answer
        live.until(is_type("connection_status", status="taken_over"), timeout=5)
        times.append(ms)
        live.close()
        other.send("session_end", call)
        other.until(is_type("connection_status", status="session_ended"))
        other.close()
    return times


def mid_reply(a, b, count: int) -> list[float]:
    pcm = speak("what time is it", 16000, pad_ms=(200, 0)).tobytes()
    times = []
    for i in range(count):
        call = f"reply-{i}"
        first = S4Client(a)
        start(first, a, "bench", call)
        first.ws.send(pcm)
        first.until(is_type("processing_status", status="speech_start"), timeout=5)
        first.close()
        again = S4Client(b)
        ms, answer = timed_start(again, b, "bench", call)
        assert answer["data"]["resumed"] is True and answer["data"]["queued"] >= 4, answer
        times.append(ms)
        again.until(is_type("audio_response", status="end"), timeout=10)
        again.send("session_end", call)
        again.until(is_type("connection_status", status="session_ended"))
        again.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--replies", type=int, default=5)
    args = parser.parse_args()
    load0 = os.getloadavg()
    s0, t0 = steal()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis = RedisServer(tmp).start()
        nodes: list = []
        try:
            nodes = start_nodes(tmp, redis.url, 2, "--redis-session-ttl", "300", "--auth-rate-limit", "0")
            a, b = nodes
            same = resumes(a, a, args.count, "same")
            cross = resumes(a, b, args.count, "cross")
            take = takeovers(a, b, args.count)
            reply = mid_reply(a, b, args.replies)
        finally:
            for n in nodes:
                n.stop()
            redis.stop()
    s1, t1 = steal()

    def p(values: list[float]) -> tuple[float, float]:
        return round(pct(values, .5), 1), round(pct(values, .99), 1)

    print(json.dumps({
        "idle_call_resume_ms_p50_p99": {"same node": p(same), "other node": p(cross)},
        "live_call_takeover_from_other_node_ms_p50_p99": p(take),
        "resume_mid_reply_on_other_node_ms_p50_max": (round(pct(reply, .5), 1), round(max(reply), 1)),
        "counts": {"resumes": args.count, "mid_reply": args.replies},
        "steal_percent": round(100.0 * (s1 - s0) / max(1, t1 - t0), 1),
        "loadavg_before_after": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
    }, indent=2))


if __name__ == "__main__":
    main()
