"""The admission policy's limit on POST /auth/websocket: per client address, behind trusted proxies."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from txvoice.config import VoiceConfig
from txvoice.server.admission import AdmissionPolicy


def post(peer: str, forwarded_for: str | None = None) -> DummyRequest:
    req = DummyRequest([b"auth", b"websocket"])
    req.method = b"POST"
    req.client = IPv4Address("TCP", peer, 40000)
    if forwarded_for is not None:
        req.requestHeaders.addRawHeader(b"x-forwarded-for", forwarded_for.encode())
    return req


def policy(**settings) -> tuple[AdmissionPolicy, Clock, list[str]]:
    clock = Clock()
    refused: list[str] = []
    return AdmissionPolicy(VoiceConfig(**settings), clock, on_refused=refused.append), clock, refused


def test_each_client_behind_a_trusted_proxy_has_its_own_budget() -> None:
    admission, clock, refused = policy(auth_rate_limit=3, trusted_proxies="10.0.0.0/8")
    waits = [admission.throttle_token_request(post("10.0.0.5", "203.0.113.9")) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] > 0
    assert refused == ["token_rate_limited"]
    # Another client through the same proxy is not affected.
    assert admission.throttle_token_request(post("10.0.0.5", "198.51.100.1")) == 0.0
    # Time refills the first client's budget: one request every 20 s at 3 a minute.
    assert waits[3] == 20.0
    clock.advance(20.0)
    assert admission.throttle_token_request(post("10.0.0.5", "203.0.113.9")) == 0.0


def test_an_untrusted_peer_cannot_pick_its_address() -> None:
    admission, _, _ = policy(auth_rate_limit=2)
    for spoof in ("203.0.113.1", "203.0.113.2"):
        assert admission.throttle_token_request(post("192.0.2.7", spoof)) == 0.0
    assert admission.throttle_token_request(post("192.0.2.7", "203.0.113.3")) > 0


def test_zero_turns_the_limit_off() -> None:
    admission, _, refused = policy(auth_rate_limit=0)
    assert all(admission.throttle_token_request(post("192.0.2.7")) == 0.0 for _ in range(100))
    assert admission.token_requests is None and refused == []


def test_peers_without_an_ip_address_are_not_limited() -> None:
    admission, _, refused = policy(auth_rate_limit=1)
    req = post("127.0.0.1")
    req.client = UNIXAddress(b"/run/txvoice.sock")
    assert all(admission.throttle_token_request(req) == 0.0 for _ in range(5))
    assert refused == [] and admission.token_requests.tracked == 0


def test_clients_of_a_trusted_unix_socket_proxy_have_their_own_budgets() -> None:
    admission, _, refused = policy(auth_rate_limit=1, trusted_proxies="unix")

    def via_proxy(client: str) -> DummyRequest:
        req = post("127.0.0.1", client)
        req.client = UNIXAddress(b"/run/txvoice.sock")
        return req

    assert admission.throttle_token_request(via_proxy("203.0.113.9")) == 0.0
    assert admission.throttle_token_request(via_proxy("203.0.113.9")) > 0
    assert admission.throttle_token_request(via_proxy("198.51.100.1")) == 0.0
    assert refused == ["token_rate_limited"]
