"""
The authentication and admission matrix against one real daemon: every way in a hostile client
would try, each refused with its documented answer (doc/security.md), and the daemon alive after.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
import urllib.request

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from daemons import start_daemon

SECRET = "matrix-secret-for-tests-only-0123456789"
AUD, ISS = "txvoice-matrix", "https://issuer.matrix.test"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def claims(**extra) -> dict:
    now = int(time.time())
    body = {"sub": "alice", "tenant": "acme", "aud": AUD, "iss": ISS, "iat": now, "exp": now + 300, **extra}
    return {k: v for k, v in body.items() if v is not None}


def hs(**extra) -> str:
    return jwt.encode(claims(**extra), SECRET, algorithm="HS256")


def rs(**extra) -> str:
    return jwt.encode(claims(**extra), RSA_KEY, algorithm="RS256")


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def alg_none() -> str:
    return (b64(b'{"alg":"none","typ":"JWT"}') + b"." + b64(json.dumps(claims()).encode()) + b".").decode()


def confused() -> str:
    """HS256 with the server's RSA public key (PEM) as the HMAC secret: the classic key confusion."""
    head = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims()).encode())
    return (head + b"." + b64(hmac.new(RSA_PEM, head, hashlib.sha256).digest())).decode()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    (tmp / "rsa.pem").write_bytes(RSA_PEM)
    d = start_daemon(
        tmp, "--auth-required", "--jwt-audience", AUD, "--jwt-issuer", ISS,
        "--jwt-public-keys", str(tmp / "rsa.pem"), "--allowed-origins", "https://app.example.com",
        "--jwt-leeway", "1",
        env={"TXVOICE_JWT_SECRET": SECRET},
    )
    yield d
    d.stop()
    assert "Traceback" not in d.log()


def ws(daemon, path="/", headers=None, query="", **kw):
    return connect(f"ws://127.0.0.1:{daemon.port}{path}{query}", additional_headers=headers or {},
                   subprotocols=["txvoice.v1"], open_timeout=5, close_timeout=3, **kw)


def status_of(daemon, path="/", headers=None, query="") -> int:
    try:
        with ws(daemon, path, headers, query):
            return 101
    except InvalidStatus as e:
        return e.response.status_code


def recv(conn) -> dict:
    return json.loads(conn.recv(timeout=5))


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def alive(daemon):
    """After each case the daemon still serves a well-behaved session."""
    yield
    with ws(daemon, headers=bearer(hs(sub="control"))) as conn:
        assert recv(conn)["data"]["authenticated"] is True
        conn.send(json.dumps({"type": "ping", "message_id": "alive"}))
        assert recv(conn)["data"]["reply_to"] == "alive"


BAD = {
    "alg-none": alg_none,
    "wrong-key": lambda: jwt.encode(claims(), "another-secret-entirely-0123456789abc", algorithm="HS256"),
    "wrong-rsa-key": lambda: jwt.encode(claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048),
                                        algorithm="RS256"),
    "rs-hs-confusion": confused,
    "expired": lambda: hs(exp=int(time.time()) - 60),
    "not-yet-valid": lambda: hs(nbf=int(time.time()) + 600),
    "wrong-audience": lambda: hs(aud="someone-else"),
    "wrong-issuer": lambda: rs(iss="https://evil.test"),
    "string-exp": lambda: hs(exp=str(int(time.time()) + 300)),
    "string-nbf": lambda: hs(nbf=str(int(time.time()) - 10)),
    "string-iat": lambda: hs(iat=str(int(time.time()))),
    "bool-exp": lambda: hs(exp=True),
    "numeric-sub": lambda: hs(sub=12345),
    "object-tenant": lambda: hs(tenant={"id": "acme"}),
    "no-exp": lambda: jwt.encode({k: v for k, v in claims().items() if k != "exp"}, SECRET, algorithm="HS256"),
    "garbage": lambda: "not.a.jwt",
    "oversize-token": lambda: hs(pad="x" * 9000),
}

#: The code an in-protocol ``auth`` answers each with (``auth_failed`` data.code).
IN_PROTOCOL_CODE = {
    "alg-none": "token_algorithm_not_allowed", "expired": "token_expired", "not-yet-valid": "token_not_yet_valid",
    "wrong-audience": "token_invalid_audience", "wrong-issuer": "token_invalid_issuer",
    "string-exp": "token_malformed", "string-nbf": "token_malformed", "string-iat": "token_malformed",
    "numeric-sub": "token_malformed", "object-tenant": "token_malformed",
}


def test_good_tokens_both_algorithms(daemon, alive) -> None:
    for token in (hs(), rs()):
        with ws(daemon, headers=bearer(token)) as conn:
            assert recv(conn)["data"]["authenticated"] is True


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_token_is_refused_on_the_upgrade_and_in_protocol(daemon, alive, case: str) -> None:
    token = BAD[case]()
    assert status_of(daemon, headers=bearer(token)) == 401
    assert status_of(daemon, query="?token=" + token) == 401
    with ws(daemon) as conn:
        recv(conn)
        conn.send(json.dumps({"type": "auth", "data": {"token": token}, "message_id": "a"}))
        answer = recv(conn)
        assert answer["type"] == "auth_failed", answer
        if case in IN_PROTOCOL_CODE:
            assert answer["data"]["code"] == IN_PROTOCOL_CODE[case]
        conn.send(json.dumps({"type": "voice_start", "message_id": "v"}))
        err = recv(conn)
        assert err["type"] == "error" and err["data"]["code"] == "auth_required"


def test_no_token(daemon, alive) -> None:
    assert status_of(daemon, "/ws/audio") == 401  # a dialect without in-protocol auth
    with ws(daemon) as conn:  # the native one: connected, but nothing before auth
        assert recv(conn)["data"]["authenticated"] is False
        conn.send(b"\x00" * 320)
        assert recv(conn)["data"]["code"] == "auth_required"


def test_the_session_closes_at_the_validated_exp(daemon, alive) -> None:
    with ws(daemon) as conn:
        recv(conn)
        conn.send(json.dumps({"type": "auth", "data": {"token": hs(exp=int(time.time()) + 3)}, "message_id": "a"}))
        assert recv(conn)["type"] == "auth_success"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as info:
            while True:
                msg = recv(conn)
                if msg["type"] == "error":
                    assert msg["data"]["code"] == "token_expired"
        assert info.value.rcvd is not None and info.value.rcvd.code == 4003
        assert time.monotonic() - started < 6


def test_a_single_use_session_token_works_once(daemon, alive) -> None:
    req = urllib.request.Request(daemon.http + "/auth/websocket", method="POST", headers=bearer(hs()))
    with urllib.request.urlopen(req, timeout=5) as r:
        single = json.load(r)["token"]
    assert status_of(daemon, query="?token=" + single) == 101
    assert status_of(daemon, query="?token=" + single) == 401


def test_a_resume_token_does_not_authenticate(daemon, alive) -> None:
    with ws(daemon, headers=bearer(hs(sub="victim"))) as victim:
        resume_token = recv(victim)["data"]["resume_token"]
    time.sleep(0.2)  # the victim's session is closed and kept for resuming
    with ws(daemon) as climber:  # no credentials
        recv(climber)
        climber.send(json.dumps({"type": "connect", "data": {"resume_token": resume_token}, "message_id": "c"}))
        greeting = recv(climber)["data"]
        assert greeting["resumed"] is False and greeting["resume_error"] == "authentication_required"
        assert greeting["authenticated"] is False
        climber.send(json.dumps({"type": "status", "message_id": "s"}))
        assert recv(climber)["data"]["code"] == "auth_required"
    # The token was used up by the attempt.
    with ws(daemon, headers=bearer(hs(sub="victim"))) as again:
        recv(again)
        again.send(json.dumps({"type": "connect", "data": {"resume_token": resume_token}, "message_id": "c"}))
        assert recv(again)["data"]["resumed"] is False


def test_the_same_user_resumes(daemon, alive) -> None:
    with ws(daemon, headers=bearer(hs(sub="roamer"))) as first:
        resume_token = recv(first)["data"]["resume_token"]
    time.sleep(0.2)
    with ws(daemon, headers=bearer(hs(sub="roamer"))) as second:
        recv(second)
        second.send(json.dumps({"type": "connect", "data": {"resume_token": resume_token}, "message_id": "c"}))
        assert recv(second)["data"]["resumed"] is True


@pytest.mark.parametrize("origin", ["https://evil.example.com", "null", "http://app.example.com",
                                    "https://app.example.com.evil.test"])
def test_refused_origins_are_403(daemon, alive, origin: str) -> None:
    assert status_of(daemon, headers={**bearer(hs()), "Origin": origin}) == 403


def test_an_allowed_origin(daemon, alive) -> None:
    assert status_of(daemon, headers={**bearer(hs()), "Origin": "https://app.example.com"}) == 101


@pytest.mark.parametrize("size", [20_000, 300_000])
def test_oversize_headers_are_refused_before_txvoice(daemon, alive, size: int) -> None:
    """Twisted's request-head limit (16 KiB a line): a 400 or a closed connection, never an upgrade."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        request = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                   b"Authorization: Bearer " + hs().encode() + b"\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
        try:
            s.sendall(request)
            answer = s.recv(100)
        except OSError:
            answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer


def test_too_many_headers_are_400(daemon, alive) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(600)) + b"\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
