"""Session tokens: single use, expiry on a fake clock, and the POST /auth/websocket resource."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from txvoice.security.interfaces import ISessionTokenStore, Principal
from txvoice.security.jwt_auth import JWTAuthenticator
from txvoice.security.origins import OriginPolicy
from txvoice.security.session_tokens import (
    AuthWebSocketResource,
    MemorySessionTokenStore,
    SessionTokenIssuer,
    SessionTokenStoreFull,
)

SECRET = "s3cret-for-tests-0123456789abcdef-0123456789"
T0 = 1_700_000_000.0


def fired(d: defer.Deferred):
    results: list = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


def ok(d: defer.Deferred):
    r = fired(d)
    if isinstance(r, Failure):
        r.raiseException()
    return r


def code(d: defer.Deferred) -> str:
    r = fired(d)
    assert isinstance(r, Failure), r
    return r.value.code


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(T0)
    return c


@pytest.fixture
def issuer(clock) -> SessionTokenIssuer:
    return SessionTokenIssuer(clock=clock, ttl=60)


ALICE = Principal(user_id="alice", tenant="acme")


def test_issue_and_redeem_once(issuer):
    token, expires_at = ok(issuer.issue(ALICE))
    assert expires_at == T0 + 60
    assert len(token) >= 43
    assert ok(issuer.redeem(token)) == ALICE
    assert code(issuer.redeem(token)) == "auth_failed"


def test_tokens_are_unique(issuer):
    tokens = {ok(issuer.issue(ALICE))[0] for _ in range(50)}
    assert len(tokens) == 50


def test_expiry(issuer, clock):
    token, _ = ok(issuer.issue(ALICE))
    clock.advance(59.9)
    other, _ = ok(issuer.issue(ALICE))
    clock.advance(0.1)  # exactly at expiry: expired
    assert code(issuer.redeem(token)) == "token_expired"
    assert ok(issuer.redeem(other)) == ALICE  # 0.1 s old


def test_expired_token_is_still_consumed(issuer, clock):
    token, _ = ok(issuer.issue(ALICE))
    clock.advance(120)
    assert code(issuer.redeem(token)) == "token_expired"
    assert code(issuer.redeem(token)) == "auth_failed"


def test_never_outlives_the_principal(issuer, clock):
    p = Principal(user_id="bob", expires_at=T0 + 10)
    token, expires_at = ok(issuer.issue(p))
    assert expires_at == T0 + 10
    clock.advance(10)
    assert code(issuer.redeem(token)) == "token_expired"


def test_expired_principal_cannot_get_a_token(issuer):
    assert code(issuer.issue(Principal(user_id="x", expires_at=T0 - 1))) == "token_expired"


def test_purpose_is_checked(issuer):
    token, _ = ok(issuer.issue(ALICE, purpose="websocket"))
    assert code(issuer.redeem(token, purpose="admin")) == "auth_failed"
    assert code(issuer.redeem(token)) == "auth_failed"  # consumed by the failed attempt


@pytest.mark.parametrize("token", [None, ""])
def test_missing(issuer, token):
    assert code(issuer.redeem(token)) == "token_missing"


def test_unknown_and_oversized(issuer):
    assert code(issuer.redeem("nope")) == "auth_failed"
    assert code(issuer.redeem("x" * 10_000)) == "auth_failed"


def test_store_holds_digests_only(clock):
    store = MemorySessionTokenStore(clock)
    assert ISessionTokenStore.providedBy(store)
    issuer = SessionTokenIssuer(store, clock=clock)
    token, _ = ok(issuer.issue(ALICE))
    assert store.size == 1
    assert token not in store._records
    assert all(token not in key for key in store._records)


def test_store_capacity_and_eviction(clock):
    store = MemorySessionTokenStore(clock, max_entries=2)
    issuer = SessionTokenIssuer(store, clock=clock, ttl=60)
    ok(issuer.issue(ALICE))
    ok(issuer.issue(ALICE))
    r = fired(issuer.issue(ALICE))
    assert isinstance(r, Failure) and r.check(SessionTokenStoreFull)
    assert r.value.code == "server_full"
    clock.advance(60)  # both expire; the next put evicts them
    ok(issuer.issue(ALICE))
    assert store.size == 1


def test_bad_ttl():
    with pytest.raises(ValueError):
        SessionTokenIssuer(clock=Clock(), ttl=0)


# POST /auth/websocket -----------------------------------------------------------------------


def jwt_for(sub: str = "alice", **extra) -> str:
    payload = {"sub": sub, "tenant": "acme", "exp": int(time.time()) + 300, **extra}
    return jwt.encode(payload, SECRET, algorithm="HS256")


@pytest.fixture
def resource(issuer):
    return AuthWebSocketResource(
        JWTAuthenticator(secret=SECRET), issuer, ws_url_hint="wss://voice.example/ws"
    )


def request(method: bytes = b"POST", authorization: bytes | None = None, origin: bytes | None = None):
    req = DummyRequest([b""])
    req.method = method
    if authorization is not None:
        req.requestHeaders.addRawHeader(b"authorization", authorization)
    if origin is not None:
        req.requestHeaders.addRawHeader(b"origin", origin)
    return req


def render(resource, req) -> dict:
    result = resource.render(req)
    if isinstance(result, bytes):
        req.write(result)
        req.finish()
    assert req.finished, "response not finished"
    body = b"".join(req.written)
    return json.loads(body) if body else {}


def header(req, name: bytes):
    values = req.responseHeaders.getRawHeaders(name)
    return values[0] if values else None


def test_post_exchanges_jwt(resource, issuer):
    req = request(authorization=b"Bearer " + jwt_for().encode())
    body = render(resource, req)
    assert req.responseCode == 200
    assert set(body) == {"token", "expires_in", "ws_url_hint"}
    assert body["expires_in"] == 60
    assert body["ws_url_hint"] == "wss://voice.example/ws"
    assert header(req, b"cache-control") == b"no-store"
    assert header(req, b"content-type").startswith(b"application/json")
    principal = ok(issuer.redeem(body["token"]))
    assert (principal.user_id, principal.tenant) == ("alice", "acme")


def test_post_without_token(resource):
    req = request()
    body = render(resource, req)
    assert req.responseCode == 401
    assert body["error"]["code"] == "token_missing"
    assert header(req, b"www-authenticate").startswith(b"Bearer")


def test_post_with_bad_jwt(resource):
    forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "wrong" * 10, "HS256")
    req = request(authorization=b"Bearer " + forged.encode())
    body = render(resource, req)
    assert req.responseCode == 401
    assert body["error"]["code"] == "token_invalid_signature"
    assert forged not in json.dumps(body)


def test_jwt_in_query_is_ignored(resource):
    req = request()
    req.addArg(b"token", jwt_for().encode())
    render(resource, req)
    assert req.responseCode == 401


@pytest.mark.parametrize("method", [b"GET", b"PUT", b"DELETE", b"OPTIONS"])
def test_other_methods(resource, method):
    req = request(method=method)
    body = render(resource, req)
    assert req.responseCode == 405
    assert header(req, b"allow") == b"POST"
    assert body["error"]["code"] == "method_not_allowed"


def test_store_full_is_503(clock):
    issuer = SessionTokenIssuer(MemorySessionTokenStore(clock, max_entries=0), clock=clock)
    res = AuthWebSocketResource(JWTAuthenticator(secret=SECRET), issuer)
    req = request(authorization=b"Bearer " + jwt_for().encode())
    body = render(res, req)
    assert req.responseCode == 503
    assert body["error"]["code"] == "server_full"


def test_client_gone_before_answer(issuer):
    pending: defer.Deferred = defer.Deferred()

    class Slow:
        def authenticate(self, credentials):
            return pending

    res = AuthWebSocketResource(Slow(), issuer)
    req = request(authorization=b"Bearer whatever")
    res.render(req)
    req.processingFailed(Failure(ConnectionError("gone")))
    pending.callback(Principal(user_id="late"))
    assert req.written == []


def test_origin_policy(issuer):
    res = AuthWebSocketResource(
        JWTAuthenticator(secret=SECRET), issuer, origins=OriginPolicy(["localhost:3000"])
    )
    bad = request(authorization=b"Bearer " + jwt_for().encode(), origin=b"https://evil.example")
    assert render(res, bad)["error"]["code"] == "origin_not_allowed"
    assert bad.responseCode == 403

    good = request(authorization=b"Bearer " + jwt_for().encode(), origin=b"http://localhost:3000")
    assert "token" in render(res, good)
    assert header(good, b"access-control-allow-origin") == b"http://localhost:3000"

    pre = request(method=b"OPTIONS", origin=b"http://localhost:3000")
    render(res, pre)
    assert pre.responseCode == 204
    assert b"Authorization" in header(pre, b"access-control-allow-headers")

    pre_bad = request(method=b"OPTIONS", origin=b"http://localhost:9999")
    render(res, pre_bad)
    assert pre_bad.responseCode == 403


class Refusing:
    """An authenticator that must not be reached."""

    def authenticate(self, credentials):
        raise AssertionError("a throttled request reached the authenticator")


@pytest.mark.parametrize("wait, retry_after", [(0.2, b"1"), (9.01, b"10"), (30.0, b"30")])
def test_throttled_request_is_429_before_the_jwt_is_checked(issuer, wait, retry_after):
    seen = []
    res = AuthWebSocketResource(Refusing(), issuer, throttle=lambda req: seen.append(req) or wait)
    req = request(authorization=b"Bearer " + jwt_for().encode())
    body = render(res, req)
    assert seen == [req]
    assert req.responseCode == 429
    assert header(req, b"retry-after") == retry_after
    assert body["error"]["code"] == "rate_limited"
    assert retry_after.decode() in body["error"]["message"]


def test_unthrottled_request_goes_on(issuer):
    res = AuthWebSocketResource(JWTAuthenticator(secret=SECRET), issuer, throttle=lambda req: 0.0)
    req = request(authorization=b"Bearer " + jwt_for().encode())
    assert "token" in render(res, req) and req.responseCode == 200


def test_preflights_are_not_throttled(issuer):
    res = AuthWebSocketResource(Refusing(), issuer, origins=OriginPolicy(["localhost:3000"]),
                                throttle=lambda req: 5.0)
    pre = request(method=b"OPTIONS", origin=b"http://localhost:3000")
    render(res, pre)
    assert pre.responseCode == 204
    # A refused origin is answered 403 before it counts against its address.
    bad = request(authorization=b"Bearer x", origin=b"https://evil.example")
    assert render(res, bad)["error"]["code"] == "origin_not_allowed"


def test_unused_tokens_per_principal_are_capped(clock):
    issuer = SessionTokenIssuer(clock=clock, ttl=60, max_per_principal=2)
    bob = Principal(user_id="bob", tenant="acme")
    first, _ = ok(issuer.issue(ALICE))
    ok(issuer.issue(ALICE))
    clock.advance(10)
    refused = fired(issuer.issue(ALICE))
    assert refused.value.code == "too_many_session_tokens" and refused.value.http_status == 429
    assert refused.value.retry_after == 50  # the oldest of the two expires 50 s from now
    # Other users, and the same user name in another tenant, have their own allowance.
    ok(issuer.issue(bob))
    ok(issuer.issue(Principal(user_id="alice", tenant="other")))
    # Using a token gives its place back; so does letting one expire.
    ok(issuer.redeem(first))
    ok(issuer.issue(ALICE))
    assert code(issuer.issue(ALICE)) == "too_many_session_tokens"
    clock.advance(60)
    ok(issuer.issue(ALICE))


def test_a_refused_redeem_still_frees_the_place(clock):
    issuer = SessionTokenIssuer(clock=clock, ttl=60, max_per_principal=1)
    token, _ = ok(issuer.issue(ALICE))
    assert code(issuer.redeem(token, purpose="other")) == "auth_failed"  # consumed all the same
    ok(issuer.issue(ALICE))


def test_a_failed_store_does_not_hold_a_place(clock):
    full = SessionTokenIssuer(MemorySessionTokenStore(clock, max_entries=0), clock=clock, max_per_principal=1)
    for _ in range(3):
        assert code(full.issue(ALICE)) == "server_full"  # never "too many": nothing was stored


def test_expired_places_of_principals_that_never_return_are_dropped(clock):
    issuer = SessionTokenIssuer(clock=clock, ttl=60, max_per_principal=5)
    for i in range(100):
        ok(issuer.issue(Principal(user_id=f"user-{i}")))
    assert len(issuer.quota.local) == 100
    clock.advance(61)
    ok(issuer.issue(ALICE))
    assert len(issuer.quota.local) == 1


def test_too_many_tokens_is_429_with_retry_after(clock):
    issuer = SessionTokenIssuer(clock=clock, ttl=60, max_per_principal=1)
    res = AuthWebSocketResource(JWTAuthenticator(secret=SECRET), issuer)
    assert "token" in render(res, request(authorization=b"Bearer " + jwt_for().encode()))
    clock.advance(0.5)
    req = request(authorization=b"Bearer " + jwt_for().encode())
    body = render(res, req)
    assert req.responseCode == 429 and body["error"]["code"] == "too_many_session_tokens"
    assert header(req, b"retry-after") == b"60"  # 59.5 s, rounded up
