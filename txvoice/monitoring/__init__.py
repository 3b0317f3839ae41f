"""
Operations building blocks: Prometheus metrics, rolling history for the S1 metrics API,
threshold alerts and a reactor lag probe.
"""

from txvoice.monitoring.alerts import AlertManager
from txvoice.monitoring.history import MetricsHistory, ProcessCPUSampler
from txvoice.monitoring.metrics import MetricsResource, VoiceMetrics
from txvoice.monitoring.reactorlag import ReactorLagProbe

__all__ = [
    "VoiceMetrics",
    "MetricsResource",
    "MetricsHistory",
    "ProcessCPUSampler",
    "AlertManager",
    "ReactorLagProbe",
]
