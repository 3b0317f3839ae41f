"""
Server-initiated application heartbeats (S4's ``heartbeat`` message), beside WebSocket pings.

Browsers answer WebSocket pings themselves, so a page whose script has hung still looks alive to
them; S4 therefore has the server send ``{type: 'heartbeat'}`` messages that the page's own code
answers with ``{type: 'heartbeat', data: {pong: true}}``.  Every ``interval`` seconds one
:class:`AppHeartbeat` sends a beat and counts the earlier beats still unanswered ``timeout``
seconds after they were sent; once ``max_missed`` have gone unanswered in a row the connection is
closed with :data:`CLOSE_HEARTBEAT_MISSED` (4004).  Any answer proves life and clears the count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from txvoice.errors import ProtocolError

#: Close code when ``max_missed`` heartbeats went unanswered (4001-4003 are idle/age/token expiry).
CLOSE_HEARTBEAT_MISSED = 4004

#: Shortest interval accepted from a client (``updateHeartbeatConfig`` / ``session_start``), seconds.
MIN_INTERVAL = 0.05


@dataclass(frozen=True)
class HeartbeatConfig:
    """S4's heartbeat configuration (seconds here; S4's milliseconds on the wire)."""

    interval: float = 30.0
    timeout: float = 60.0
    max_missed: int = 3
    enabled: bool = True

    def updated(self, s4: Mapping[str, Any]) -> "HeartbeatConfig":
        """Apply S4's ``updateHeartbeatConfig`` fields (``interval``/``timeout`` in ms, ``maxMissed``, ``enabled``)."""
        changes: dict[str, Any] = {}
        for key, name in (("interval", "interval"), ("timeout", "timeout")):
            if key in s4:
                value = s4[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < MIN_INTERVAL * 1000:
                    raise ProtocolError(f"heartbeat.{key} must be a number of ms >= {MIN_INTERVAL * 1000:g}",
                                        code="invalid_field", field=key)
                changes[name] = float(value) / 1000.0
        if "maxMissed" in s4:
            value = s4["maxMissed"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProtocolError("heartbeat.maxMissed must be an integer >= 1", code="invalid_field",
                                    field="maxMissed")
            changes["max_missed"] = value
        if "enabled" in s4:
            if not isinstance(s4["enabled"], bool):
                raise ProtocolError("heartbeat.enabled must be true or false", code="invalid_field", field="enabled")
            changes["enabled"] = s4["enabled"]
        return replace(self, **changes)

    def as_s4(self) -> dict[str, Any]:
        return {"interval": round(self.interval * 1000), "timeout": round(self.timeout * 1000),
                "maxMissed": self.max_missed, "enabled": self.enabled}


class AppHeartbeat:
    """
    The heartbeat of one connection: ``send(seq, config)`` sends a beat, ``expire()`` closes the
    connection; ``answered()`` is called for each ``pong`` the client sends.
    """

    def __init__(
        self,
        clock: IReactorTime,
        config: HeartbeatConfig,
        send: Callable[[int, HeartbeatConfig], None],
        expire: Callable[[int], None],
    ) -> None:
        self.clock = clock
        self.config = config
        self.send = send
        self.expire = expire
        self.seq = 0
        self.missed = 0
        self.answers = 0
        self._outstanding: dict[int, float] = {}  # seq -> when sent
        self._loop: LoopingCall | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def start(self) -> None:
        self.stop()
        if not self.config.enabled:
            return
        self._loop = LoopingCall(self._beat)
        self._loop.clock = self.clock
        self._loop.start(self.config.interval, now=False)

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def reconfigure(self, config: HeartbeatConfig) -> None:
        """Take a new configuration (S4's ``updateHeartbeatConfig``); the count starts over."""
        self.config = config
        self.missed = 0
        self._outstanding.clear()
        if self._loop is not None or config.enabled:
            self.start()

    def answered(self, seq: Any = None) -> None:
        """The client answered (``pong``): it is alive."""
        self.answers += 1
        self.missed = 0
        self._outstanding.clear()

    def _beat(self) -> None:
        now = self.clock.seconds()
        # A beat is missed at the first tick at least `timeout` after it was sent; a quarter interval
        # of slack keeps a tick that fires a little early (timer jitter) from giving it one more.
        due = self.config.timeout - self.config.interval / 4
        for seq, sent in list(self._outstanding.items()):
            if now - sent >= due:
                del self._outstanding[seq]
                self.missed += 1
        if self.missed >= self.config.max_missed:
            self.stop()
            self.expire(self.missed)
            return
        self.seq += 1
        self._outstanding[self.seq] = now
        self.send(self.seq, self.config)


def config_heartbeat(config: Any) -> HeartbeatConfig:
    """The heartbeat the server configuration describes (``--realtime-heartbeat-*``)."""
    return HeartbeatConfig(interval=config.realtime_heartbeat_interval, timeout=config.realtime_heartbeat_timeout,
                           max_missed=config.realtime_heartbeat_max_missed, enabled=True)


def native_heartbeat(protocol: Any) -> AppHeartbeat:
    """
    ``--native-heartbeat``: the same heartbeat on the native protocol, as ``heartbeat`` envelopes
    ``{ping: true, seq, interval}``; the client answers ``{type: heartbeat, data: {pong: true}}``.
    """
    server = protocol.server

    def send(seq: int, config: HeartbeatConfig) -> None:
        protocol.sendEnvelope("heartbeat", {"ping": True, "seq": seq, "interval": round(config.interval * 1000)})

    def expire(missed: int) -> None:
        from txvoice.errors import VoiceError

        server.stats.heartbeat_drops += 1
        server.metrics.heartbeat_drop()
        protocol.reportError(VoiceError(f"{missed} heartbeats went unanswered", code="heartbeat_timeout"))
        protocol.closeSession(CLOSE_HEARTBEAT_MISSED, "heartbeat timeout")

    heartbeat = AppHeartbeat(server.clock, config_heartbeat(server.config), send, expire)
    heartbeat.start()
    return heartbeat
