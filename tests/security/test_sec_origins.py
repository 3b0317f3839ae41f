"""Allowed-origin matching table."""

from __future__ import annotations

import pytest

from txvoice.security.origins import OriginPolicy, parse_origin

S4 = "localhost:3000,localhost:3001"


@pytest.mark.parametrize(
    "allowed, origin, expected",
    [
        # S4's host:port entries, either web scheme
        (S4, "http://localhost:3000", True),
        (S4, "https://localhost:3001", True),
        (S4, "http://localhost:3002", False),
        (S4, "http://localhost", False),
        (S4, "http://127.0.0.1:3000", False),
        (S4, "ws://localhost:3000", False),
        (S4, "http://LOCALHOST:3000", True),
        (S4, "http://localhost.:3000", True),
        (S4, "http://localhost:3000/", True),
        (S4, "http://localhost:3000/path", False),
        (S4, "http://user@localhost:3000", False),
        (S4, "http://evil.com?localhost:3000", False),
        # full origins: scheme and port exact (default ports normalised)
        ("https://app.example.com", "https://app.example.com", True),
        ("https://app.example.com", "https://app.example.com:443", True),
        ("https://app.example.com", "http://app.example.com", False),
        ("https://app.example.com", "https://app.example.com:8443", False),
        ("https://app.example.com", "https://app.example.com.evil.com", False),
        ("https://app.example.com", "https://evilapp.example.com", False),
        ("http://app.example.com:8080", "http://app.example.com:8080", True),
        # bare host: default ports only; host:* any port
        ("example.com", "https://example.com", True),
        ("example.com", "http://example.com", True),
        ("example.com", "https://example.com:8443", False),
        ("example.com:*", "https://example.com:8443", True),
        # wildcards: subdomains at any depth, never the apex or look-alikes
        ("*.example.com", "https://app.example.com", True),
        ("*.example.com", "https://a.b.example.com", True),
        ("*.example.com", "https://example.com", False),
        ("*.example.com", "https://evilexample.com", False),
        ("*.example.com", "https://example.com.evil.net", False),
        ("*.example.com", "https://app.example.com:8443", False),
        ("https://*.example.com", "http://app.example.com", False),
        ("https://*.example.com", "https://app.example.com", True),
        ("*.example.com:8443", "https://app.example.com:8443", True),
        # IPv6 literals
        ("[::1]:3000", "http://[::1]:3000", True),
        ("[::1]:3000", "http://[::2]:3000", False),
        # null origin and garbage
        (S4, "null", False),
        ("null," + S4, "null", True),
        (S4, "not an origin", False),
        (S4, "http://localhost:99999", False),
        # empty list and '*' allow all
        ("", "https://anything.example", True),
        ("*", "https://anything.example", True),
        ("", "null", True),
    ],
)
def test_origin_table(allowed, origin, expected):
    assert OriginPolicy.from_setting(allowed).allows(origin) is expected


@pytest.mark.parametrize("allowed", ["", S4, "*"])
def test_missing_origin_allowed_by_default(allowed):
    assert OriginPolicy.from_setting(allowed).allows(None)
    assert OriginPolicy.from_setting(allowed).allows("")


@pytest.mark.parametrize("allowed", ["", S4])
def test_require_origin(allowed):
    policy = OriginPolicy.from_setting(allowed, require_origin=True)
    assert not policy.allows(None)


def test_whitespace_and_empty_entries():
    policy = OriginPolicy.from_setting(" localhost:3000 , ,localhost:3001 ")
    assert policy.allows("http://localhost:3001")
    assert not policy.allow_all


@pytest.mark.parametrize(
    "entry", ["a*.example.com", "*", "localhost:abc", "localhost:0", "[::1", "://x", "foo://bar"]
)
def test_bad_entries(entry):
    if entry == "*":
        assert OriginPolicy([entry]).allow_all
        return
    with pytest.raises(ValueError):
        OriginPolicy([entry])


def test_parse_origin():
    assert parse_origin("https://Example.COM") == ("https", "example.com", 443)
    assert parse_origin("http://x:81") == ("http", "x", 81)
    assert parse_origin("x") is None
