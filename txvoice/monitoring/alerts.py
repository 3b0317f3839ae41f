"""
Performance alerts over thresholds (S1 ``set_alert_threshold(name, value)``).

Every ``interval`` seconds the manager reads a metrics snapshot (normally
``MetricsHistory.get_real_time_metrics``) and compares each threshold's metric with it.  An
alert fires when the value goes above the threshold for ``fire_after`` evaluations in a row and
clears only when it has fallen to ``threshold * (1 - hysteresis)`` or below for ``clear_after``
evaluations in a row, so a value hovering around the threshold does not flap.  Listeners get a
``performance_alert`` event on firing and a ``performance_alert_cleared`` one (``state:
"cleared"``) on clearing; both are also logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.logger import Logger

__all__ = ["THRESHOLD_METRICS", "ALERT_EVENT", "ALERT_CLEARED_EVENT", "AlertManager"]

log = Logger(namespace="txvoice.monitoring.alerts")

#: S1 threshold names and the snapshot key each is compared with.
THRESHOLD_METRICS = {
    "max_latency_ms": "avg_latency_ms",
    "max_error_rate": "error_rate",
    "max_cpu_usage": "cpu_percent",
}

ALERT_EVENT = "performance_alert"
ALERT_CLEARED_EVENT = "performance_alert_cleared"


def _log_listener_failure(failure: Failure, listener: object) -> None:
    log.failure("alert listener {listener!r} failed", failure, listener=listener)


@dataclass
class _Threshold:
    name: str
    metric: str
    value: float
    firing: bool = False
    since: float | None = None
    above: int = 0  # consecutive evaluations over the threshold
    below: int = 0  # consecutive evaluations at or under the clearing level
    last_value: float | None = None


class AlertManager(Service):
    """Evaluate thresholds periodically and notify listeners of state changes."""

    name = "txvoice-alerts"

    def __init__(
        self,
        source: Callable[[], Mapping[str, Any]],
        clock: IReactorTime | None = None,
        interval: float = 5.0,
        hysteresis: float = 0.1,
        fire_after: int = 1,
        clear_after: int = 2,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        if not 0 <= hysteresis < 1:
            raise ValueError("hysteresis is a fraction in [0, 1)")
        self._source = source
        self._clock: IReactorTime = clock  # type: ignore[assignment]
        self.interval = interval
        self.hysteresis = hysteresis
        self.fire_after = max(1, fire_after)
        self.clear_after = max(1, clear_after)
        self._thresholds: dict[str, _Threshold] = {}
        self._listeners: list[Callable[[dict[str, Any]], Any]] = []
        self._loop: LoopingCall | None = None

    # Configuration ---------------------------------------------------------------------------

    def set_alert_threshold(self, name: str, value: float, metric: str | None = None) -> None:
        """
        Set (or change) threshold ``name``: one of :data:`THRESHOLD_METRICS`, or any name with an
        explicit snapshot key ``metric``.  Changing a value keeps the alert's current state.
        """
        if metric is None:
            try:
                metric = THRESHOLD_METRICS[name]
            except KeyError:
                raise ValueError(f"unknown alert threshold {name!r}") from None
        existing = self._thresholds.get(name)
        if existing is not None:
            existing.value, existing.metric = float(value), metric
        else:
            self._thresholds[name] = _Threshold(name, metric, float(value))

    def remove_alert_threshold(self, name: str) -> None:
        """Drop a threshold; a firing alert is cleared first."""
        t = self._thresholds.pop(name, None)
        if t is not None and t.firing:
            self._emit(t, ALERT_CLEARED_EVENT, t.last_value)

    def thresholds(self) -> dict[str, float]:
        return {name: t.value for name, t in self._thresholds.items()}

    def add_listener(self, listener: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``listener(event)`` on every fire/clear (exceptions are logged, not raised)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[dict[str, Any]], Any]) -> None:
        self._listeners.remove(listener)

    def active_alerts(self) -> dict[str, dict[str, Any]]:
        """Alerts firing now: name -> {metric, threshold, value, since}."""
        return {
            t.name: {"metric": t.metric, "threshold": t.value, "value": t.last_value,
                     "since": t.since}
            for t in self._thresholds.values()
            if t.firing
        }

    # Evaluation ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.evaluate)
        self._loop.clock = self._clock
        d = self._loop.start(self.interval, now=False)
        d.addErrback(lambda f: log.failure("alert evaluation loop stopped", f))

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        super().stopService()

    def evaluate(self) -> list[dict[str, Any]]:
        """Compare every threshold with a fresh snapshot; return the events emitted."""
        if not self._thresholds:
            return []
        try:
            snapshot = self._source()
        except Exception:
            log.failure("reading metrics for alerts failed")
            return []
        events = []
        for t in list(self._thresholds.values()):
            value = snapshot.get(t.metric)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # no data this round: keep state and counters as they are
            value = float(value)
            t.last_value = value
            if not t.firing:
                t.above = t.above + 1 if value > t.value else 0
                if t.above >= self.fire_after:
                    t.firing, t.since, t.above, t.below = True, self._clock.seconds(), 0, 0
                    events.append(self._emit(t, ALERT_EVENT, value))
            else:
                t.below = t.below + 1 if value <= t.value * (1.0 - self.hysteresis) else 0
                if t.below >= self.clear_after:
                    events.append(self._emit(t, ALERT_CLEARED_EVENT, value))
                    t.firing, t.since, t.above, t.below = False, None, 0, 0
        return events

    def _emit(self, t: _Threshold, kind: str, value: float | None) -> dict[str, Any]:
        now = self._clock.seconds()
        event: dict[str, Any] = {
            "type": kind,
            "alert": t.name,
            "metric": t.metric,
            "value": value,
            "threshold": t.value,
            "state": "firing" if kind == ALERT_EVENT else "cleared",
            "timestamp": now,
        }
        if kind == ALERT_EVENT:
            log.warn(
                "performance alert {alert}: {metric}={value} above {threshold}",
                alert=t.name, metric=t.metric, value=value, threshold=t.value, state="firing",
            )
        else:
            event["duration"] = now - t.since if t.since is not None else None
            log.info(
                "performance alert {alert} cleared: {metric}={value}",
                alert=t.name, metric=t.metric, value=value, threshold=t.value, state="cleared",
            )
        for listener in list(self._listeners):
            try:
                result = listener(dict(event))
                if isinstance(result, Deferred):
                    result.addErrback(_log_listener_failure, listener)
            except Exception:
                log.failure("alert listener {listener!r} failed", listener=listener)
        return event
