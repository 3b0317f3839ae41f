"""Rolling per-second / per-minute history on a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from txvoice.monitoring.history import MetricsHistory, ProcessCPUSampler


class FakeCPU:
    def __init__(self, value: float = 10.0) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1000)
    return c


@pytest.fixture
def history(clock):
    h = MetricsHistory(clock=clock, minutes=3, seconds=120, realtime_window=10, cpu_percent=FakeCPU())
    h.startService()
    yield h
    h.stopService()


def test_per_second_buckets(history, clock):
    for _ in range(5):
        history.message_in(100)
    history.message_out(640)
    history.error("invalid_message")
    clock.advance(1)
    history.message_in(1)
    clock.advance(1)
    seconds = history.get_per_second_metrics(10)
    assert [s["messages_in"] for s in seconds] == [5, 1]
    assert seconds[0]["bytes_in"] == 500
    assert seconds[0]["bytes_out"] == 640
    assert seconds[0]["errors"] == 1
    assert seconds[0]["error_rate"] == pytest.approx(0.2)
    assert seconds[0]["timestamp"] == 1000
    assert seconds[1]["timestamp"] == 1001
    assert seconds[0]["cpu_percent"] == 10.0


def test_unclosed_second_is_not_reported(history, clock):
    history.message_in(1)
    assert history.get_per_second_metrics() == []
    clock.advance(0.5)
    assert history.get_per_second_metrics() == []


def test_second_window_is_bounded(history, clock):
    for _ in range(200):
        history.message_in(1)
        clock.advance(1)
    assert len(history.get_per_second_metrics(1000)) == 120
    assert len(history.get_per_second_metrics(30)) == 30


def test_minutes(history, clock):
    for second in range(150):
        history.message_in(10)
        if second % 60 == 0:
            history.latency("total", 0.2)
        clock.advance(1)
    minutes = history.get_historical_metrics(60)
    assert [m["partial"] for m in minutes] == [False, False, True]
    assert [m["seconds"] for m in minutes] == [60, 60, 30]
    assert minutes[0]["messages_in"] == 60
    assert minutes[0]["messages_per_second_in"] == 1.0
    assert minutes[0]["timestamp"] == 1000
    assert minutes[1]["timestamp"] == 1060
    assert minutes[0]["latency_ms"] == {"count": 1, "avg": pytest.approx(200), "max": pytest.approx(200)}
    assert history.get_historical_metrics(1) == minutes[-1:]
    assert history.get_historical_metrics(0) == []


def test_minute_window_is_bounded(history, clock):
    clock.pump([1] * (60 * 10))
    minutes = history.get_historical_metrics(60)
    assert len([m for m in minutes if not m["partial"]]) == 3


def test_missed_ticks_fill_empty_seconds(history, clock):
    history.message_in(1)
    clock.advance(5)  # one stalled reactor turn: the loop runs once with count=5
    seconds = history.get_per_second_metrics()
    assert len(seconds) == 5
    assert [s["messages_in"] for s in seconds] == [1, 0, 0, 0, 0]


def test_real_time(history, clock):
    history.connection_opened()
    history.connection_opened()
    history.connection_closed()
    for i in range(20):
        history.message_in(50)
        history.message_out(10)
        if i < 2:
            history.error()
        history.latency("total", 0.1 * (i % 2 + 1))  # 100 ms and 200 ms
        history.latency("stt", 0.05)
        clock.advance(1)
    rt = history.get_real_time_metrics()
    assert rt["window_seconds"] == 10
    assert rt["active_connections"] == 1
    assert rt["messages_in"] == 10
    assert rt["messages_per_second_in"] == 1.0
    assert rt["error_rate"] == 0.0  # the errors were more than 10 s ago
    assert rt["avg_latency_ms"] == pytest.approx(150)
    assert rt["max_latency_ms"] == pytest.approx(200)
    assert rt["stages"]["stt"]["avg"] == pytest.approx(50)
    assert rt["cpu_percent"] == 10.0
    assert rt["timestamp"] == clock.seconds()


def test_real_time_error_rate(history, clock):
    for _ in range(10):
        history.message_in(1)
    history.error()
    clock.advance(1)
    assert history.get_real_time_metrics()["error_rate"] == pytest.approx(0.1)


def test_real_time_empty(history):
    rt = history.get_real_time_metrics()
    assert rt["avg_latency_ms"] is None
    assert rt["error_rate"] == 0.0


def test_reactor_lag_and_connection_details(clock):
    details = {"c1": {"id": "c1", "state": "streaming"}}
    h = MetricsHistory(
        clock=clock,
        cpu_percent=FakeCPU(),
        reactor_lag=lambda: {"p50": 0.001, "p99": 0.02},
        connection_details=details.get,
    )
    assert h.get_real_time_metrics()["reactor_lag"] == {"p50": 0.001, "p99": 0.02}
    assert h.get_connection_details("c1") == {"id": "c1", "state": "streaming"}
    assert h.get_connection_details("nope") is None
    assert MetricsHistory(clock=clock, cpu_percent=FakeCPU()).get_connection_details("c1") is None


def test_stop_service_stops_ticks(clock):
    h = MetricsHistory(clock=clock, cpu_percent=FakeCPU())
    h.startService()
    clock.advance(3)
    h.stopService()
    clock.advance(10)
    assert len(h.get_per_second_metrics()) == 3
    assert not clock.getDelayedCalls()


def test_failing_cpu_sampler_is_tolerated(clock):
    def broken() -> float:
        raise OSError("no /proc")

    h = MetricsHistory(clock=clock, cpu_percent=broken)
    h.startService()
    clock.advance(1)
    assert h.get_per_second_metrics()[0]["cpu_percent"] is None
    h.stopService()


def test_process_cpu_sampler():
    wall = iter([0.0, 2.0, 3.0])
    cpu = iter([0.0, 1.0, 1.0])
    sampler = ProcessCPUSampler(wall=lambda: next(wall), cpu=lambda: next(cpu))
    assert sampler() == pytest.approx(50.0)
    assert sampler() == pytest.approx(0.0)
