"""How ``bench/bench_processes.py`` splits a run's CPU over the server's processes and the machine's cores."""

from __future__ import annotations

import os

import pytest

from benchscripts import loaded



@pytest.fixture(scope="module")
def bench():
    yield from loaded("bench_processes.py", "txvoice_bench_processes")


def test_per_process_shares_frames_by_sessions(bench):
    # Parent 10 -> 13 s, worker 20 -> 21 s over 5 s; 75 and 25 sessions of 10,000 acked frames.
    rows = bench.per_process({1: 10.0, 2: 20.0}, {1: 13.0, 2: 21.0}, {1: 75, 2: 25}, 10_000, 5.0)
    assert rows == [
        {"pid": 1, "sessions": 75, "cores": 0.6, "cpu_us_per_frame": 400.0},
        {"pid": 2, "sessions": 25, "cores": 0.2, "cpu_us_per_frame": 400.0},
    ]


def test_per_process_idle_worker_and_vanished_process(bench):
    # A worker that got no session has no per-frame figure (not a division by zero); a process
    # that exited mid-run (no reading) is left out rather than counted as idle.
    rows = bench.per_process({1: 0.0, 2: 0.0, 3: 1.0}, {1: 2.0, 2: 0.1, 3: None}, {1: 40, 2: 0}, 1000, 2.0)
    assert [(r["pid"], r["sessions"], r["cores"], r["cpu_us_per_frame"]) for r in rows] == [
        (1, 40, 1.0, 2000.0), (2, 0, 0.05, None)]


def test_capacity_accounts_for_every_core(bench):
    c = bench.capacity(1.1, 0.35, 0.2, {"0": 0.1, "1": 0.15}, 220, ncpus=2)
    assert c == {"gen_cores": 0.35, "others_cores": 0.2, "stolen_cores": 0.25, "idle_cores": 0.1,
                 "sessions_per_server_core": 200.0}
    assert bench.capacity(0.0, 0.1, 0.0, {}, 10)["sessions_per_server_core"] is None


def test_sessions_per_process_reads_this_process_sockets(bench):
    # A real loopback connection: the accepted socket is ESTABLISHED on the listening port and
    # held by this process, so it is counted for os.getpid() and for no other pid.
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        counts = bench.sessions_per_process(port, [os.getpid(), os.getppid()])
        assert counts[os.getpid()] == 1
        assert counts[os.getppid()] == 0
    finally:
        accepted.close()
        client.close()
        server.close()


def test_disturbed_needs_a_full_machine_and_someone_else(bench):
    # p2 N=150 of the first run with these columns: others 1.018 cores, 0.001 idle.
    assert bench.disturbed({"others_cores": 1.018, "stolen_cores": 0.003, "idle_cores": 0.001})
    # Full, but by the server and the generator alone: the server's own limit, not disturbed.
    assert not bench.disturbed({"others_cores": 0.05, "stolen_cores": 0.02, "idle_cores": 0.0})
    # Others busy, but a core's worth left idle: the machine was not what stopped it.
    assert not bench.disturbed({"others_cores": 0.6, "stolen_cores": 0.0, "idle_cores": 0.5})
    # Steal counts like others' work.
    assert bench.disturbed({"others_cores": 0.1, "stolen_cores": 0.3, "idle_cores": 0.05})
    assert not bench.disturbed({"error": "boom"})


def test_busiest_others_leaves_ours_out_and_counts_newcomers(bench):
    before = {1: ("twistd", 10.0), 2: ("pytest", 5.0), 3: ("idle", 1.0)}
    after = {1: ("twistd", 12.0), 2: ("pytest", 6.0), 3: ("idle", 1.0), 4: ("wstest", 0.5)}
    assert bench.busiest_others(before, after, {1}, 2.0) == ["pytest:2 0.50", "wstest:4 0.25"]
    assert bench.busiest_others(before, after, {1}, 2.0, top=1) == ["pytest:2 0.50"]
    # The real table of this machine: readable, and this process is in it.
    assert os.getpid() in bench.all_cpu()


def test_doubling_budget_from_the_largest_passing_step(bench):
    runs = [
        {"sessions": 150, "passed": True, "cpu_cores": 1.02, "gen_cores": 0.195},
        {"sessions": 200, "passed": True, "cpu_cores": 1.06, "gen_cores": 0.2},
        {"sessions": 250, "passed": False, "cpu_cores": 1.1, "gen_cores": 0.21},
    ]
    b = bench.doubling_budget(runs, 2)
    assert b == {"p1_sessions": 200, "p1_server_cores": 1.06, "p1_gen_cores": 0.2, "cores_needed_for_2x": 2.52,
                 "cores": 2, "fits": False}
    assert bench.doubling_budget(runs, 4)["fits"]
    assert bench.doubling_budget([{"sessions": 10, "passed": False, "cpu_cores": 0.1, "gen_cores": 0.01}], 2) is None
