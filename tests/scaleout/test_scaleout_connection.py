"""The Redis connection service in a real daemon: settings, /health while Redis is down and back."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from daemons import start_daemon
from redisd import RedisServer
from txvoice.config import VoiceConfig
from txvoice.scaleout.settings import parse_redis_settings


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        return json.loads(r.read())


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_settings_from_url_and_options():
    s = parse_redis_settings(VoiceConfig(redis="rediss://user:s%40cret@redis.example:6380/3", redis_prefix="a:"))
    assert (s.host, s.port, s.db, s.username, s.password, s.tls, s.prefix) == (
        "redis.example", 6380, 3, "user", "s@cret", True, "a:")
    assert "s@cret" not in s.address
    s = parse_redis_settings(VoiceConfig(redis="redis://127.0.0.1", redis_db=5, redis_password="pw"))
    assert (s.port, s.db, s.password, s.tls) == (6379, 5, "pw", False)
    with pytest.raises(ValueError):
        parse_redis_settings(VoiceConfig(redis="http://127.0.0.1:6379"))


def test_env_names():
    assert VoiceConfig.from_env({"REDIS_URL": "redis://h:1/0"}).redis == "redis://h:1/0"
    assert VoiceConfig.from_env({"TXVOICE_REDIS_URL": "redis://a:1/0", "REDIS_URL": "redis://b:1/0"}).redis == "redis://a:1/0"
    assert VoiceConfig.from_env({"TXVOICE_REDIS": "redis://c:1/0", "REDIS_URL": "redis://b:1/0"}).redis == "redis://c:1/0"
    assert VoiceConfig.from_env({"REDIS_PASSWORD": "x"}).redis_password == "x"


@pytest.mark.slow
def test_health_degraded_while_redis_is_down_then_healthy(tmp_path):
    """Redis down at start: the node starts and says why it is degraded; healthy once Redis is up."""
    redis = RedisServer(tmp_path, password="pw")
    d = start_daemon(tmp_path, "--redis", f"redis://127.0.0.1:{redis.port}/2", "--redis-password", "pw",
                     "--node-id", "node-a", "--redis-reconnect-max-delay", "0.5")
    try:
        h = wait_for(lambda: (lambda h: h if "redis_down" in h["reasons"] else None)(health(d.port)), 5, "redis_down")
        assert h["status"] == "degraded" and h["node_id"] == "node-a"
        redis.start()
        wait_for(lambda: health(d.port)["status"] == "healthy", 10, "healthy after Redis started")
        redis.stop()
        wait_for(lambda: "redis_down" in health(d.port)["reasons"], 10, "degraded after Redis stopped")
        redis.start()
        wait_for(lambda: health(d.port)["status"] == "healthy", 10, "healthy after Redis restarted")
        assert d.proc.poll() is None
    finally:
        d.stop()
        redis.stop()


@pytest.mark.slow
def test_without_redis_nothing_changes(daemon):
    h = health(daemon.port)
    assert h["node_id"] is None and not [r for r in h["reasons"] if r.startswith("redis")]
