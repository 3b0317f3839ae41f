"""
Monitoring as a service: the reactor-lag probe, the metrics history, alert thresholds, and the
periodic ``metrics`` push to clients that subscribed to it.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from txvoice.logging import NamespaceLogger
from txvoice.monitoring.alerts import AlertManager
from txvoice.server.context import VoiceServer


class MonitoringService(MultiService):
    name = "monitoring"
    log = NamespaceLogger(namespace="txvoice.monitoring")

    def __init__(self, server: VoiceServer) -> None:
        super().__init__()
        self.server = server
        config = server.config
        server.lag.setServiceParent(self)
        server.history.setServiceParent(self)
        self.alerts = AlertManager(server.history.get_real_time_metrics, server.clock)
        self.alerts.set_alert_threshold("max_latency_ms", config.alert_max_latency_ms)
        self.alerts.set_alert_threshold("max_error_rate", config.alert_max_error_rate)
        self.alerts.set_alert_threshold("max_cpu_usage", config.alert_max_cpu_usage)
        self.alerts.add_listener(self.alertChanged)
        self.alerts.setServiceParent(self)
        self._push: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        if self.server.config.metrics_interval > 0:
            self._push = LoopingCall(self.pushMetrics)
            self._push.clock = self.server.clock
            self._push.start(self.server.config.metrics_interval, now=False)

    def stopService(self) -> Deferred[Any]:
        if self._push is not None and self._push.running:
            self._push.stop()
        self._push = None
        stopped: Deferred[Any] = super().stopService()  # MultiService's: its children's, together
        return stopped

    def subscribers(self) -> list[Any]:
        return [s.connection for s in self.server.registry if s.metrics_subscribed and s.connection is not None]

    def pushMetrics(self) -> None:
        for connection in self.subscribers():
            connection.pushMetrics()

    def alertChanged(self, event: dict[str, Any]) -> None:
        """A threshold was crossed or cleared: tell monitoring subscribers (S1 PERFORMANCE_ALERT)."""
        event_type = event.get("type", "performance_alert")
        for protocol in self.subscribers():
            protocol.deliverEvent(event_type, {k: v for k, v in event.items() if k != "type"}, None)
