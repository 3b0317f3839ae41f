"""Per-IP and global connection limits; client IP behind trusted proxies."""

from __future__ import annotations

import pytest

from txvoice.errors import VoiceError
from txvoice.security.iplimits import (
    ConnectionLimiter,
    SERVER_FULL,
    ConnectionRefused,
    client_ip,
    parse_trusted_proxies,
)


def refused(limiter: ConnectionLimiter, ip: str) -> ConnectionRefused:
    with pytest.raises(ConnectionRefused) as info:
        limiter.acquire(ip)
    assert isinstance(info.value, VoiceError)
    return info.value


def test_per_ip_limit():
    limiter = ConnectionLimiter(max_per_ip=2)
    a, b = limiter.acquire("1.2.3.4"), limiter.acquire("1.2.3.4")
    err = refused(limiter, "1.2.3.4")
    assert (err.code, err.http_status) == ("too_many_connections_per_ip", 429)
    limiter.acquire("5.6.7.8")  # other addresses unaffected
    a.release()
    limiter.acquire("1.2.3.4")
    assert limiter.count("1.2.3.4") == 2
    assert b.key == "1.2.3.4"


def test_global_limit():
    limiter = ConnectionLimiter(max_per_ip=10, max_total=3)
    leases = [limiter.acquire(f"10.0.0.{i}") for i in range(3)]
    err = refused(limiter, "10.0.0.99")
    assert (err.code, err.http_status) == ("server_full", 503)
    leases[0].release()
    limiter.acquire("10.0.0.99")
    assert limiter.total == 3


def test_release_is_idempotent():
    limiter = ConnectionLimiter(max_per_ip=1, max_total=5)
    lease = limiter.acquire("1.1.1.1")
    other = limiter.acquire("2.2.2.2")
    lease.release()
    lease.release()
    assert limiter.total == 1
    assert limiter.count("2.2.2.2") == 1
    other.release()
    assert limiter.total == 0
    assert limiter._per_key == {}


def test_zero_means_unlimited():
    limiter = ConnectionLimiter()
    for _ in range(1000):
        limiter.acquire("1.1.1.1")
    assert limiter.total == 1000


def test_ipv6_counted_per_64():
    limiter = ConnectionLimiter(max_per_ip=2)
    limiter.acquire("2001:db8:1:2::1")
    limiter.acquire("2001:db8:1:2:ffff::9")
    assert refused(limiter, "2001:db8:1:2::abcd").code == "too_many_connections_per_ip"
    limiter.acquire("2001:db8:1:3::1")  # another /64


def test_ipv6_full_address_when_configured():
    limiter = ConnectionLimiter(max_per_ip=1, ipv6_prefix=128)
    limiter.acquire("2001:db8::1")
    limiter.acquire("2001:db8::2")


def test_ipv4_mapped_is_ipv4():
    limiter = ConnectionLimiter(max_per_ip=1)
    limiter.acquire("::ffff:1.2.3.4")
    assert refused(limiter, "1.2.3.4").code == "too_many_connections_per_ip"


PROXIES = "10.0.0.0/8, 192.168.1.1, fd00::/8"


@pytest.mark.parametrize(
    "peer, xff, expected",
    [
        # untrusted peer: XFF is ignored whatever it says
        ("203.0.113.5", "1.1.1.1", "203.0.113.5"),
        ("203.0.113.5", None, "203.0.113.5"),
        # trusted peer: the rightmost untrusted hop
        ("10.0.0.2", "198.51.100.7", "198.51.100.7"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.7", "198.51.100.7"),  # spoofed left entry ignored
        ("10.0.0.2", "198.51.100.7, 10.1.1.1, 192.168.1.1", "198.51.100.7"),
        # trusted peer without XFF, or with all hops trusted
        ("10.0.0.2", None, "10.0.0.2"),
        ("10.0.0.2", "10.9.9.9, 10.8.8.8", "10.9.9.9"),
        # garbage stops the walk at the hop that added it
        ("10.0.0.2", "198.51.100.7, garbage", "10.0.0.2"),
        ("10.0.0.2", "garbage, 10.3.3.3", "10.3.3.3"),
        ("10.0.0.2", "", "10.0.0.2"),
        # ports and IPv6
        ("10.0.0.2", "198.51.100.7:5555", "198.51.100.7"),
        ("10.0.0.2", "[2001:db8::1]:443", "2001:db8::1"),
        ("fd00::1", "2001:db8::5", "2001:db8::5"),
        ("::ffff:10.0.0.2", "198.51.100.7", "198.51.100.7"),
    ],
)
def test_client_ip(peer, xff, expected):
    headers = {} if xff is None else {"X-Forwarded-For": xff}
    assert client_ip(peer, headers, PROXIES) == expected


def test_client_ip_repeated_headers_and_bytes():
    headers = {b"x-forwarded-for": [b"6.6.6.6, 198.51.100.7", b"10.2.2.2"]}
    assert client_ip("10.0.0.2", headers, parse_trusted_proxies(PROXIES)) == "198.51.100.7"


def test_client_ip_without_trusted_proxies():
    assert client_ip("10.0.0.2", {"x-forwarded-for": "1.1.1.1"}, None) == "10.0.0.2"
    assert client_ip("10.0.0.2", {"x-forwarded-for": "1.1.1.1"}, []) == "10.0.0.2"


def test_client_ip_accepts_list_of_strings():
    assert client_ip("10.0.0.2", {"x-forwarded-for": "1.1.1.1"}, ["10.0.0.0/8"]) == "1.1.1.1"


def test_non_ip_peer_passes_through():
    assert client_ip("/tmp/sock", {"x-forwarded-for": "1.1.1.1"}, PROXIES) == "/tmp/sock"


def test_bad_proxy_config():
    with pytest.raises(ValueError):
        parse_trusted_proxies("10.0.0.0/33")


def test_peers_without_an_ip_address_count_in_the_total_only() -> None:
    # Over a UNIX socket every client arrives with the same (empty) peer host: a local proxy.
    limiter = ConnectionLimiter(max_per_ip=2, max_total=4)
    leases = [limiter.acquire("") for _ in range(4)]
    with pytest.raises(ConnectionRefused) as info:
        limiter.acquire("")
    assert info.value.code == SERVER_FULL
    leases[0].release()
    limiter.acquire("1.2.3.4")
    assert limiter.total == 4


@pytest.mark.parametrize(
    "trusted, xff, expected",
    [
        # A UNIX-socket peer (no address) is believed only when "unix" is trusted.
        ("10.0.0.0/8", "198.51.100.7", ""),
        (None, "198.51.100.7", ""),
        ("unix", "198.51.100.7", "198.51.100.7"),
        ("UNIX, 10.0.0.0/8", "198.51.100.7, 10.1.1.1", "198.51.100.7"),
        ("unix", "6.6.6.6, 198.51.100.7", "198.51.100.7"),  # the spoofed left entry is still ignored
        ("unix", None, ""),
        ("unix", "garbage", ""),
    ],
)
def test_client_ip_behind_a_unix_socket_proxy(trusted, xff, expected):
    headers = {} if xff is None else {"X-Forwarded-For": xff}
    assert client_ip("", headers, trusted) == expected


def test_unix_trust_does_not_make_any_ip_a_proxy():
    proxies = parse_trusted_proxies("unix")
    assert [repr(p) for p in proxies] == ["unix"]
    assert client_ip("203.0.113.5", {"X-Forwarded-For": "1.1.1.1"}, proxies) == "203.0.113.5"
    assert client_ip("::1", {"X-Forwarded-For": "1.1.1.1"}, proxies) == "::1"
