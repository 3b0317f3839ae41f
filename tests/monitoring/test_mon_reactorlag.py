"""Reactor lag probe on a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from txvoice.monitoring.reactorlag import ReactorLagProbe, percentile


def test_on_time_ticks_have_no_lag():
    clock = Clock()
    probe = ReactorLagProbe(clock=clock, interval=0.25)
    probe.startService()
    clock.pump([0.25] * 8)
    stats = probe.stats()
    assert stats["samples"] == 8
    assert stats["p50"] == stats["p99"] == stats["max"] == 0.0
    probe.stopService()
    assert not clock.getDelayedCalls()


def test_late_tick_is_measured():
    clock = Clock()
    seen: list[float] = []
    probe = ReactorLagProbe(clock=clock, interval=0.25, on_sample=seen.append)
    probe.startService()
    clock.advance(0.25)  # on time
    clock.advance(0.35)  # due at 0.5, runs at 0.6
    assert seen == [0.0, pytest.approx(0.1)]


def test_stall_longer_than_interval():
    clock = Clock()
    probe = ReactorLagProbe(clock=clock, interval=0.25)
    probe.startService()
    clock.advance(0.25)
    clock.advance(2.25)  # due at 0.5, runs at 2.5: 2 s late, several ticks swallowed
    assert probe.last == pytest.approx(2.0)
    clock.advance(0.25)  # back on the grid (next due at 2.75)
    assert probe.last == pytest.approx(0.0)


def test_percentiles_over_window():
    clock = Clock()
    probe = ReactorLagProbe(clock=clock, interval=1.0, window=100.0, warn_above=10)
    probe.startService()
    # 99 on-time ticks then one 0.5 s late
    clock.pump([1.0] * 99)
    clock.advance(1.5)
    stats = probe.stats()
    assert stats["samples"] == 100
    assert stats["p50"] == 0.0
    assert stats["p99"] == 0.0
    assert stats["max"] == pytest.approx(0.5)
    # another late one: now it reaches the 99th percentile
    clock.advance(1.5)  # due at 101 (the grid point after 100.5), runs at 102: 1 s late
    stats = probe.stats()
    assert stats["samples"] == 100  # the oldest sample fell out of the window
    assert stats["max"] == pytest.approx(1.0)
    assert stats["p99"] == pytest.approx(0.5)  # 99th of 100 ascending: the second largest


def test_window_forgets_old_samples():
    clock = Clock()
    probe = ReactorLagProbe(clock=clock, interval=1.0, window=5.0, warn_above=10)
    probe.startService()
    clock.advance(3.0)  # first tick 2 s late
    assert probe.stats()["max"] == pytest.approx(2.0)
    clock.pump([1.0] * 5)
    assert probe.stats()["samples"] == 5
    assert probe.stats()["max"] == 0.0


def test_warns_on_big_lag():
    clock = Clock()
    probe = ReactorLagProbe(clock=clock, interval=0.5, warn_above=0.2)
    probe.startService()
    with capturedLogs() as logs:
        clock.advance(0.5)
        clock.advance(0.9)
    assert [e["lag"] for e in logs if "lag" in e] == [pytest.approx(0.4)]


def test_percentile():
    assert percentile([], 0.5) == 0.0
    values = sorted(float(i) for i in range(1, 101))
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0], 0.99) == 3.0


def test_bad_interval():
    with pytest.raises(ValueError):
        ReactorLagProbe(clock=Clock(), interval=0)


def test_own_lag_leaves_out_the_run_queue_wait():
    """A tick late because the thread waited for a CPU is the machine's; the rest is the process's."""
    clock = Clock()
    waited = [1.0]
    own: list[float] = []
    probe = ReactorLagProbe(clock=clock, interval=0.25, cpu_wait=lambda: waited[0], on_own_sample=own.append)
    probe.startService()
    clock.advance(0.25)  # on time
    waited[0] += 0.03
    clock.advance(0.30)  # 50 ms late, 30 of them waiting for a CPU: 20 ms own
    waited[0] += 0.2
    clock.advance(0.25)  # back on the grid (due at 0.75, ran at 0.8): 50 ms late, all of it the machine's
    assert probe.last == pytest.approx(0.05)
    assert own == [0.0, pytest.approx(0.02), 0.0]


def test_runqueue_wait_reads_this_threads_schedstat():
    from txvoice.monitoring.reactorlag import runqueue_wait, runqueue_wait_available

    assert runqueue_wait_available()  # Linux, as every machine this project runs on
    first = runqueue_wait()
    assert 0.0 <= first <= runqueue_wait()
