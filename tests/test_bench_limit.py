"""
The benchmark's instrument: the C reference server ``c-limit`` (bench/servers/c_limit.c) speaks
/ws/audio's greeting and ack to an independent client, the generator times round trips from each
frame's intended send time (a generator that stalls reports the stall as latency), and
``bench/run.py`` reads every ladder against c-limit's and keeps disturbed runs visible.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time

import pytest
import websockets

from benchscripts import loaded, stall_once_sending



@pytest.fixture(scope="module")
def bench():
    yield from loaded("run.py", "txvoice_bench_run_limit")


@pytest.fixture(scope="module")
def c_limit(bench):
    """A running c_limit on a free loopback port: its port."""
    binary = bench.build_c_limit()
    port = bench.free_port()
    proc = subprocess.Popen([str(binary), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port
    proc.send_signal(signal.SIGTERM)
    proc.wait(5)


def test_c_limit_greets_and_acknowledges_every_binary_frame_like_ws_audio(c_limit: int) -> None:
    async def session() -> list:
        uri = f"ws://127.0.0.1:{c_limit}/ws/audio?codec=opus&sample_rate=48000&channels=1"
        async with websockets.connect(uri, compression=None) as ws:
            greeting = json.loads(await asyncio.wait_for(ws.recv(), 5))
            for i in range(5):
                await ws.send(bytes([i]) * (100 + i * 300))  # 7- and 16-bit lengths
            acks = [await asyncio.wait_for(ws.recv(), 5) for _ in range(5)]
            await ws.send("text")
            error = json.loads(await asyncio.wait_for(ws.recv(), 5))
            pong = await ws.ping(b"hi")
            await asyncio.wait_for(pong, 5)
            return [greeting, acks, error]

    greeting, acks, error = asyncio.run(session())
    assert greeting["status"] == "connected" and greeting["session_id"]
    assert greeting["config"] == {"sample_rate": 48000, "channels": 1, "sample_width": 2,
                                  "max_message_size": 1048576, "codec": "opus"}
    assert acks == ['{"status":"chunk_received"}'] * 5  # the text vocal.py sends, byte for byte
    assert error["status"] == "error" and error["code"] == "unexpected_text"


def test_c_limit_serves_the_lag_probe_in_lagprobe_format(bench, c_limit: int) -> None:
    time.sleep(0.6)  # two ticks of 250 ms
    spec = bench.SERVERS[bench.LIMIT]
    doc = bench.read_lag(spec, c_limit, since=0)
    assert doc["count"] >= 2 and len(doc["samples"]) == doc["count"]
    assert doc["buckets"][-1] == (float("inf"), doc["count"])
    assert all(0 <= s < 1 for s in doc["samples"])


def test_latency_counts_from_the_intended_send_time_when_the_generator_stalls(bench, c_limit: int) -> None:
    """Stop the generator for 300 ms mid-run: its frames go out late, and that delay is latency."""
    bench.build_loadgen()
    frames = bench.make_payloads()["opus"]
    gen = subprocess.Popen([str(bench.LOADGEN), "--port", str(c_limit), "--frames", str(frames), "--sessions", "5",
                            "--duration", "2", "--warmup", "0.2", "--drain", "1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stall_once_sending(gen)
    out, _ = gen.communicate(timeout=20)
    g = json.loads(out)
    assert g["frames_lost"] == 0 and g["frames_acked"] == g["frames_sent"] == 5 * 100
    assert g["latency_us"]["max"] >= 250_000, g["latency_us"]  # the stall is in the latency ...
    # ... not in the send-to-answer time.  Not its max: a frame already on the wire when SIGSTOP lands has its
    # answer read after SIGCONT, so that one frame (at most one per session, 5 of 500) carries the stall from its
    # send too; that race failed this assertion once in ~10 runs under load.
    assert g["latency_from_send_us"]["p99"] < 250_000, g["latency_from_send_us"]
    assert g["send_slip_us"]["max"] >= 250_000 and g["slip_over_limit"]
    assert not g["saturated"]  # a slip is not saturation: the generator's CPU was idle


def step(server: str, rep: int, n: int, *, passed: bool = True, p99: float = 10.0, **extra) -> dict:
    return {"server": server, "kind": "ladder", "workload": "opus", "rep": rep, "sessions": n, "passed": passed,
            "passed_strict": passed and p99 < 20, "discarded": False, "p99_ms": p99, **extra}


def plan(bench, servers: list[str], runs: list[dict]):
    opts = bench.Options(duration=10, warmup=2, drain=3, quick=False)
    return bench.Plan(servers=servers, workloads=["opus"], reps=1, fixed_n=50, ladder=[50, 100, 200], opts=opts,
                      runs=runs)


def test_a_ladder_as_long_as_the_limits_is_marked_as_bounded_by_it(bench) -> None:
    runs = [step("c-limit", 0, 50), step("c-limit", 0, 100),
            step("c-limit", 0, 200, passed=False, p99=70, generator={"gen_cpu_frac": 0.95}),
            step("autobahn-echo", 0, 50), step("autobahn-echo", 0, 100), step("autobahn-echo", 0, 200, passed=False),
            step("txvoice", 0, 50), step("txvoice", 0, 100, passed=False, p99=80)]
    s = bench.summarize(plan(bench, ["txvoice", "autobahn-echo", "c-limit"], runs))
    assert s["autobahn-echo"]["at_limit_p99_50ms"] and not s["txvoice"]["at_limit_p99_50ms"]
    assert s["c-limit"]["limit_failed_at"]["sessions"] == 200
    assert s["c-limit"]["limit_failed_at"]["gen_cpu_frac"] == 0.95
    result = {"config": {"workloads": ["opus"], "fixed_n": 50, "cpu_ns": [], "warmup_s": 2}, "summary": s,
              "reference": "txvoice"}
    table = "\n".join(bench.table_lines(result))
    assert "| `autobahn-echo` |" in table and "100 (= the limit)" in table
    assert "`c-limit` failed first at N=200" in table and "95% of its core" in table


def test_a_superseded_attempt_gives_no_figure_and_disturbed_runs_are_counted(bench) -> None:
    runs = [step("txvoice", 0, 50), step("txvoice", 0, 100, passed=False, p99=90, superseded=True,
                                            stolen={"server_cpu": 0.3, "generator_cpu": 0.1}),
            step("txvoice", 0, 100, disturbed=True, stolen={"server_cpu": 0.12, "generator_cpu": 0.0}),
            step("txvoice", 0, 200, passed=False, p99=90)]
    s = bench.summarize(plan(bench, ["txvoice"], runs))["txvoice"]
    assert s["max_sessions_p99_50ms"] == 100  # the less stolen attempt at 100 passed
    assert (s["disturbed_runs"], s["superseded_runs"], s["runs_total"]) == (1, 1, 4)


def test_other_work_on_the_cores_is_read_from_proc_stat(bench) -> None:
    before = {"busy": {"0": 100, "1": 200}, "loadavg": (1.0, 0, 0), "t": 10.0}
    after = {"busy": {"0": 100 + 2 * bench.CLK_TCK, "1": 200 + bench.CLK_TCK}, "loadavg": (2.0, 0, 0), "t": 12.0}
    m = bench.machine_load(before, after, own_cpu_s=1.0)  # 3 s busy in 2 s, 1 s of it ours
    assert m == {"others_cores": 1.0, "busy_cores": 1.5, "busy_by_core": {"0": 1.0, "1": 0.5}, "loadavg_1m": [1.0, 2.0]}
    assert bench.parse_cpu_busy("cpu0 1 2 3 4 5 6 7 8 0 0\n", ("0",)) == {"0": 1 + 2 + 3 + 6 + 7}


def test_a_failed_ladder_step_passes_on_two_of_three_runs(bench, monkeypatch) -> None:
    """One stall on a shared VM fails a run at any N: the step is run again, two of three decide."""
    outcomes = iter([True, True])  # the two re-runs both pass

    def fake_measure(plan, spec, workload, n, rep, kind):
        r = step(spec.name, rep, n, passed=next(outcomes))
        plan.runs.append(r)
        return r

    monkeypatch.setattr(bench, "measure", fake_measure)
    p = plan(bench, ["c-limit"], [])
    first = step("c-limit", 0, 100, passed=False, p99=60)
    p.runs.append(first)
    last = bench.vote(p, bench.SERVERS["c-limit"], "opus", 100, 0, first)
    assert last["passed"] and last["votes"] == "2 of 3" and first["superseded"]
    assert [r for r in bench.counted(p.runs)] == [last]

    outcomes = iter([False])  # a second failure ends it
    p = plan(bench, ["c-limit"], [])
    first = step("c-limit", 0, 100, passed=False, p99=60)
    p.runs.append(first)
    last = bench.vote(p, bench.SERVERS["c-limit"], "opus", 100, 0, first)
    assert not last["passed"] and last["votes"] == "0 of 2"
