"""S4's ``POST /auth/websocket`` body form: ``{token, userId, callId}`` -> ``{sessionToken, expiresIn}``, bound."""

from __future__ import annotations

import io
import json
import time

import jwt
import pytest
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from txvoice.security.jwt_auth import JWTAuthenticator
from txvoice.security.session_tokens import BINDING_CLAIM, AuthWebSocketResource, SessionTokenIssuer

SECRET = "s4-test-secret-0123456789abcdef0123"


def jwt_for(sub: str = "user-123") -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")


@pytest.fixture
def issuer() -> SessionTokenIssuer:
    clock = Clock()
    clock.advance(time.time())
    return SessionTokenIssuer(clock=clock, ttl=60)


@pytest.fixture
def resource(issuer):
    return AuthWebSocketResource(JWTAuthenticator(secret=SECRET), issuer)


def post(resource, body: bytes, authorization: bytes | None = None):
    req = DummyRequest([b""])
    req.method = b"POST"
    req.content = io.BytesIO(body)
    req.requestHeaders.addRawHeader(b"content-type", b"application/json")
    if authorization is not None:
        req.requestHeaders.addRawHeader(b"authorization", authorization)
    result = resource.render(req)
    if isinstance(result, bytes):
        req.write(result)
        req.finish()
    assert req.finished
    return req, json.loads(b"".join(req.written))


def redeemed(issuer, token):
    out = []
    issuer.redeem(token).addBoth(out.append)
    return out[0]


def test_s4_body_gets_session_token_bound_to_user_and_call(resource, issuer):
    body = json.dumps({"token": jwt_for(), "userId": "user-123", "callId": "call-456"}).encode()
    req, answer = post(resource, body)
    assert req.responseCode == 200
    assert answer["sessionToken"] == answer["token"] and answer["expiresIn"] == 60
    assert answer["userId"] == "user-123" and answer["callId"] == "call-456"
    principal = redeemed(issuer, answer["sessionToken"])
    assert principal.user_id == "user-123"
    assert principal.claims[BINDING_CLAIM] == {"userId": "user-123", "callId": "call-456"}


def test_body_user_must_be_the_jwt_user(resource):
    body = json.dumps({"token": jwt_for("mallory"), "userId": "user-123", "callId": "c"}).encode()
    req, answer = post(resource, body)
    assert req.responseCode == 403 and answer["error"]["code"] == "user_mismatch"


@pytest.mark.parametrize("raw, code", [(b"{not json", "invalid_body"), (b"[1]", "invalid_body"),
                                       (b'{"token": 5}', "invalid_body"), (b'{"userId": "u"}', "token_missing")])
def test_bad_bodies(resource, raw, code):
    req, answer = post(resource, raw)
    assert req.responseCode in (400, 401) and answer["error"]["code"] == code


def test_header_form_unchanged_with_body_binding(resource, issuer):
    body = json.dumps({"callId": "call-9"}).encode()
    req, answer = post(resource, body, authorization=b"Bearer " + jwt_for().encode())
    assert req.responseCode == 200 and answer["callId"] == "call-9"
    assert redeemed(issuer, answer["token"]).claims[BINDING_CLAIM] == {"callId": "call-9"}
