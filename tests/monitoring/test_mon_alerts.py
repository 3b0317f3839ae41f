"""Threshold alerts: fire, hold, clear with hysteresis, periodic evaluation on a Clock."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from txvoice.monitoring.alerts import AlertManager


class Source:
    def __init__(self, **values) -> None:
        self.values = dict(values)

    def __call__(self):
        return dict(self.values)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def manager(source, clock, **kwargs) -> tuple[AlertManager, list[dict]]:
    events: list[dict] = []
    m = AlertManager(source, clock=clock, **kwargs)
    m.add_listener(events.append)
    return m, events


def test_fire_and_clear(clock):
    src = Source(avg_latency_ms=100.0)
    m, events = manager(src, clock, hysteresis=0.1, clear_after=1)
    m.set_alert_threshold("max_latency_ms", 500)
    assert m.evaluate() == []
    src.values["avg_latency_ms"] = 650.0
    clock.advance(7)
    fired = m.evaluate()
    assert len(fired) == 1 and events == fired
    e = events[0]
    assert e["type"] == "performance_alert"
    assert (e["alert"], e["metric"], e["value"], e["threshold"], e["state"]) == (
        "max_latency_ms", "avg_latency_ms", 650.0, 500.0, "firing")
    assert e["timestamp"] == 7
    assert m.active_alerts()["max_latency_ms"]["since"] == 7
    # still high: no new event
    assert m.evaluate() == []
    # back below the threshold but inside the hysteresis band (> 450): still firing
    src.values["avg_latency_ms"] = 480.0
    assert m.evaluate() == []
    assert "max_latency_ms" in m.active_alerts()
    # below the band: cleared
    src.values["avg_latency_ms"] = 440.0
    clock.advance(3)
    cleared = m.evaluate()
    assert len(cleared) == 1
    c = cleared[0]
    assert c["type"] == "performance_alert_cleared"
    assert c["state"] == "cleared"
    assert c["duration"] == 3
    assert m.active_alerts() == {}
    assert len(events) == 2


def test_no_flapping_around_threshold(clock):
    src = Source(error_rate=0.0)
    m, events = manager(src, clock, hysteresis=0.2, clear_after=1)
    m.set_alert_threshold("max_error_rate", 0.05)
    for v in [0.06, 0.049, 0.051, 0.045, 0.055, 0.041, 0.06]:
        src.values["error_rate"] = v
        m.evaluate()
    assert [e["state"] for e in events] == ["firing"]
    src.values["error_rate"] = 0.039
    m.evaluate()
    assert [e["state"] for e in events] == ["firing", "cleared"]


def test_fire_after_and_clear_after(clock):
    src = Source(cpu_percent=95.0)
    m, events = manager(src, clock, fire_after=3, clear_after=2)
    m.set_alert_threshold("max_cpu_usage", 80)
    m.evaluate()
    m.evaluate()
    src.values["cpu_percent"] = 50.0  # streak broken
    m.evaluate()
    src.values["cpu_percent"] = 95.0
    m.evaluate()
    m.evaluate()
    assert events == []
    m.evaluate()
    assert [e["state"] for e in events] == ["firing"]
    src.values["cpu_percent"] = 10.0
    m.evaluate()
    assert len(events) == 1
    m.evaluate()
    assert [e["state"] for e in events] == ["firing", "cleared"]


def test_missing_data_keeps_state(clock):
    src = Source(avg_latency_ms=900.0)
    m, events = manager(src, clock)
    m.set_alert_threshold("max_latency_ms", 500)
    m.evaluate()
    src.values["avg_latency_ms"] = None
    for _ in range(5):
        m.evaluate()
    assert [e["state"] for e in events] == ["firing"]


def test_periodic_evaluation_and_log(clock):
    src = Source(cpu_percent=10.0)
    m, events = manager(src, clock, interval=5.0, clear_after=1)
    m.set_alert_threshold("max_cpu_usage", 80)
    m.startService()
    with capturedLogs() as logs:
        clock.advance(5)
        assert events == []
        src.values["cpu_percent"] = 99.0
        clock.advance(4.9)
        assert events == []
        clock.advance(0.1)
        assert [e["state"] for e in events] == ["firing"]
        src.values["cpu_percent"] = 1.0
        clock.advance(5)
        assert [e["state"] for e in events] == ["firing", "cleared"]
    levels = [(e["log_level"], e.get("state")) for e in logs if e.get("alert") == "max_cpu_usage"]
    assert levels == [(LogLevel.warn, "firing"), (LogLevel.info, "cleared")]
    m.stopService()
    assert not clock.getDelayedCalls()


def test_listener_errors_are_isolated(clock):
    src = Source(cpu_percent=99.0)
    m, events = manager(src, clock)

    def broken(event):
        raise RuntimeError("listener bug")

    def broken_async(event):
        return defer.fail(RuntimeError("async listener bug"))

    m.add_listener(broken)
    m.add_listener(broken_async)
    later: list[dict] = []
    m.add_listener(later.append)
    m.set_alert_threshold("max_cpu_usage", 80)
    with capturedLogs() as logs:
        m.evaluate()
    assert len(events) == 1 and len(later) == 1
    assert sum(1 for e in logs if e.get("log_failure") is not None) == 2


def test_threshold_management(clock):
    src = Source(avg_latency_ms=900.0, custom=3.0)
    m, events = manager(src, clock)
    with pytest.raises(ValueError):
        m.set_alert_threshold("max_unknown", 1)
    m.set_alert_threshold("max_latency_ms", 500)
    m.set_alert_threshold("max_custom", 2, metric="custom")
    assert m.thresholds() == {"max_latency_ms": 500.0, "max_custom": 2.0}
    m.evaluate()
    assert {e["alert"] for e in events} == {"max_latency_ms", "max_custom"}
    # raising the threshold keeps the alert until the value falls below the band
    m.set_alert_threshold("max_latency_ms", 2000)
    m.evaluate()
    m.evaluate()
    assert [e["state"] for e in events if e["alert"] == "max_latency_ms"] == ["firing", "cleared"]
    m.remove_alert_threshold("max_custom")
    assert events[-1]["alert"] == "max_custom" and events[-1]["state"] == "cleared"
    assert m.active_alerts() == {}


def test_source_failure_is_logged_not_raised(clock):
    def broken():
        raise RuntimeError("nope")

    m, events = manager(broken, clock)
    m.set_alert_threshold("max_cpu_usage", 1)
    with capturedLogs() as logs:
        assert m.evaluate() == []
    assert any(e.get("log_failure") is not None for e in logs)
