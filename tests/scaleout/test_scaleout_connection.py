"""The Redis connection service in a real daemon: settings, /health while Redis is down and back."""

from __future__ import annotations

import time

import pytest

from cluster import health, start_node, wait_connected, wait_for
from redisd import RedisServer
from txvoice.config import VoiceConfig
from txvoice.scaleout.settings import parse_redis_settings


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
    d = start_node(tmp_path, f"redis://127.0.0.1:{redis.port}/2", "--redis-password", "pw", "--node-id", "node-a")
    try:
        h = wait_for(lambda: (lambda h: h if "redis_down" in h["reasons"] else None)(health(d.http)), 5, "redis_down")
        assert h["status"] == "degraded" and h["node_id"] == "node-a"  # degraded, not unhealthy: it serves
        redis.start()
        wait_connected(d)
        redis.stop()
        wait_for(lambda: "redis_down" in health(d.http)["reasons"], 10, "degraded after Redis stopped")
        redis.start()
        wait_connected(d)
        assert d.proc.poll() is None
    finally:
        d.stop()
        redis.stop()


@pytest.mark.slow
def test_without_redis_nothing_changes(daemon):
    h = health(daemon.http)
    assert h["node_id"] is None and not [r for r in h["reasons"] if r.startswith("redis")]


def self_signed(tmp_path) -> tuple:
    """A certificate for 127.0.0.1 (and its key), made here."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "redis.crt", tmp_path / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.slow
def test_rediss_tls_with_a_ca_file(tmp_path):
    """rediss:// to a TLS-only redis-server: healthy with its CA; degraded (not connected) without it."""
    cert, key = self_signed(tmp_path)
    redis = RedisServer(tmp_path, tls=(cert, key)).start()
    daemons = []
    try:
        good = start_node(tmp_path, redis.url, "--redis-ca-file", str(cert))
        daemons.append(good)
        untrusted = start_node(tmp_path, redis.url)
        daemons.append(untrusted)
        wait_connected(good)
        time.sleep(1.5)
        assert "redis_down" in health(untrusted.http)["reasons"]  # the system does not trust this certificate
    finally:
        for d in daemons:
            d.stop()
        redis.stop()


def _stall_watch():
    """A connection's stall watchdog on a fake clock, with one command in flight since now."""
    from twisted.internet.task import Clock

    from txvoice.scaleout.connection import STALL_CHECK, RedisConnection

    clock = Clock()
    conn = RedisConnection(parse_redis_settings(VoiceConfig(redis="redis://127.0.0.1")), clock)
    conn._stall_check.start(STALL_CHECK, now=False)
    conn._inflight, conn._waiting_since = 1, clock.seconds()
    return conn, clock, STALL_CHECK


def test_a_command_unanswered_past_stalled_while_the_reactor_runs_is_a_stall() -> None:
    conn, clock, step = _stall_watch()
    for _ in range(4):
        clock.advance(step)  # on time: the reactor polled its sockets every 0.1 s, no answer
    assert conn._stalled
    conn._stall_check.stop()


def test_time_the_reactor_itself_was_held_is_not_redis_stalling() -> None:
    """A late check (the node's reactor held 0.75 s): the wait counts from then, not from the send."""
    conn, clock, step = _stall_watch()
    clock.advance(step)
    clock.advance(0.75)  # one late tick: what went in flight may not even have been written
    clock.advance(0)  # the confirmation a turn later, had a stall been concluded
    assert not conn._stalled and conn._waiting_since == clock.seconds()
    clock.advance(step)
    assert not conn._stalled
    for _ in range(3):
        clock.advance(step)  # unanswered for 0.3 s of a running reactor from then: a stall after all
    assert conn._stalled
    conn._stall_check.stop()
