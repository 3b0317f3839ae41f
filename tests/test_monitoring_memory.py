"""Alerts fire and clear, and metrics are pushed to subscribers, under a fake clock."""

from __future__ import annotations


from txvoice.service.monitoring import MonitoringService
from wsmemory import MemoryClient, memory_server


def events(client: MemoryClient) -> list[dict]:
    return [m for m in client.messages() if m["type"] == "status"]


def test_error_rate_alert_fires_and_clears() -> None:
    server = memory_server(alert_max_error_rate=0.2, alert_max_cpu_usage=1e9, alert_max_latency_ms=1e9,
                           metrics_interval=0)
    monitoring = MonitoringService(server)
    monitoring.startService()
    watcher, noisy = MemoryClient(server, port=1), MemoryClient(server, port=2)
    watcher.messages(), noisy.messages()
    watcher.send_json({"type": "metrics", "data": {"subscribe": True}})
    watcher.messages()
    for second in range(10):
        for _ in range(5):
            noisy.send_text("{")
        server.clock.advance(1)
    fired = [e for e in events(watcher) if e["data"]["event_type"] == "performance_alert"]
    assert fired and fired[0]["data"]["state"] == "firing"
    assert fired[0]["data"]["alert"] == "max_error_rate" and fired[0]["data"]["value"] > 0.2
    # Clean traffic for over a minute: the window forgets the errors and the alert clears.
    for second in range(75):
        noisy.send_json({"type": "ping"})
        server.clock.advance(1)
    noisy.messages()
    cleared = [e for e in events(watcher) if e["data"]["event_type"] == "performance_alert_cleared"]
    assert cleared and cleared[0]["data"]["state"] == "cleared"
    assert not monitoring.alerts.active_alerts()
    monitoring.stopService()


def test_subscribers_get_periodic_metrics() -> None:
    server = memory_server(metrics_interval=5)
    monitoring = MonitoringService(server)
    monitoring.startService()
    sub, other = MemoryClient(server, port=1), MemoryClient(server, port=2)
    sub.messages(), other.messages()
    sub.send_json({"type": "metrics", "data": {"subscribe": True}, "message_id": "m"})
    (answer,) = sub.messages()
    assert answer["data"]["subscribed"] is True and "realtime" in answer["data"]
    for _ in range(3):  # a LoopingCall skips intervals a jump of the clock misses: step through them
        server.clock.advance(5)
    pushed = [m for m in sub.messages() if m["type"] == "metrics"]
    assert len(pushed) == 3
    assert [m for m in other.messages() if m["type"] == "metrics"] == []
    sub.send_json({"type": "metrics", "data": {"subscribe": False}})
    sub.messages()
    server.clock.advance(5)
    server.clock.advance(5)
    assert [m for m in sub.messages() if m["type"] == "metrics"] == []
    monitoring.stopService()
