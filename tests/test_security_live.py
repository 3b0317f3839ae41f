"""
Security and operations over real sockets: every attack a hostile client would try, against a
real daemon, with a control session that must stay unaffected throughout.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from daemons import start_daemon

SECRET = "s3cret-for-tests-only-0123456789abcdef"
AUD, ISS = "txvoice-tests", "https://issuer.test"


def token(**claims) -> str:
    now = int(time.time())
    body = {"sub": "alice", "tenant": "acme", "aud": AUD, "iss": ISS, "iat": now, "exp": now + 300, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    d = start_daemon(
        tmp_path_factory.mktemp("secured"),
        "--auth-required", "--jwt-audience", AUD, "--jwt-issuer", ISS,
        "--allowed-origins", "https://app.example.com,localhost:3000",
        "--max-connections-per-ip", "3", "--max-connections", "6",
        "--trusted-proxies", "127.0.0.1/32",
        "--rate-limit-max-requests", "600", "--rate-limit-strikes", "5",
        "--auth-rate-limit", "4", "--session-tokens-per-user", "3",
        "--health-max-error-rate", "0.5",
        env={"TXVOICE_JWT_SECRET": SECRET},
    )
    yield d
    d.stop()


def ws(daemon, path="/", headers=None, query="", **kw):
    return connect(f"ws://127.0.0.1:{daemon.port}{path}{query}", additional_headers=headers or {},
                   open_timeout=5, close_timeout=3, **kw)


def status_of(daemon, path="/", headers=None, query="") -> int:
    try:
        with ws(daemon, path, headers, query):
            return 101
    except InvalidStatus as e:
        return e.response.status_code


def recv(conn) -> dict:
    return json.loads(conn.recv(timeout=5))


def bearer(t: str) -> dict:
    return {"Authorization": f"Bearer {t}"}


@pytest.fixture
def control(secured):
    """A well-behaved session that must keep working whatever the others do."""
    with ws(secured, headers=bearer(token(sub="control"))) as conn:
        assert recv(conn)["data"]["authenticated"] is True
        yield conn
        conn.send(json.dumps({"type": "ping", "message_id": "alive"}))
        assert recv(conn)["data"]["reply_to"] == "alive"


def test_good_token_on_the_upgrade(secured, control) -> None:
    with ws(secured, headers=bearer(token())) as conn:
        greeting = recv(conn)["data"]
        assert greeting["authenticated"] is True
        conn.send(json.dumps({"type": "status", "message_id": "s"}))
        assert recv(conn)["data"]["session"]["user_id"] == "alice"
    with ws(secured, query="?token=" + token(sub="bob")) as conn:
        assert recv(conn)["data"]["authenticated"] is True


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: token(exp=int(time.time()) - 120), id="expired"),
        pytest.param(lambda: token(nbf=int(time.time()) + 600), id="not-yet-valid"),
        pytest.param(lambda: token(aud="someone-else"), id="wrong-audience"),
        pytest.param(lambda: token(iss="https://evil.test"), id="wrong-issuer"),
        pytest.param(lambda: jwt.encode({"sub": "alice", "aud": AUD, "iss": ISS, "exp": int(time.time()) + 60},
                                        "not-the-secret-but-long-enough-0123456", algorithm="HS256"), id="forged"),
        pytest.param(lambda: jwt.encode({"sub": "alice", "aud": AUD, "iss": ISS, "exp": int(time.time()) + 60},
                                        None, algorithm="none"), id="alg-none"),
        pytest.param(lambda: token()[:-4] + "AAAA", id="tampered"),
        pytest.param(lambda: "garbage.token.here", id="malformed"),
    ],
)
def test_bad_tokens_are_refused_with_401_before_any_frame(secured, control, bad) -> None:
    assert status_of(secured, headers=bearer(bad())) == 401
    assert status_of(secured, query="?token=" + bad()) == 401


def test_no_token_native_must_auth_in_protocol(secured, control) -> None:
    with ws(secured) as conn:
        greeting = recv(conn)["data"]
        assert greeting["auth_required"] is True and greeting["authenticated"] is False
        conn.send(json.dumps({"type": "voice_start", "message_id": "v"}))
        err = recv(conn)
        assert err["type"] == "error" and err["data"]["code"] == "auth_required"
        conn.send(b"\x00" * 320)
        assert recv(conn)["data"]["code"] == "auth_required"
        conn.send(json.dumps({"type": "auth", "data": {"token": token(exp=int(time.time()) - 100)}, "message_id": "a0"}))
        failed = recv(conn)
        assert failed["type"] == "auth_failed" and failed["data"]["code"] == "token_expired"
        conn.send(json.dumps({"type": "auth", "data": {"token": token(sub="carol")}, "message_id": "a1"}))
        ok = recv(conn)
        assert ok["type"] == "auth_success" and ok["data"]["user_id"] == "carol" and ok["data"]["tenant"] == "acme"
        conn.send(json.dumps({"type": "voice_start", "message_id": "v2"}))
        assert recv(conn)["type"] == "voice_start"


def test_no_token_on_a_dialect_without_in_protocol_auth_is_401(secured, control) -> None:
    assert status_of(secured, "/ws/audio") == 401
    assert status_of(secured, "/ws/audio", headers=bearer(token())) == 101


def test_session_token_exchange_is_single_use(secured, control) -> None:
    req = urllib.request.Request(secured.http + "/auth/websocket", method="POST", headers=bearer(token()))
    with urllib.request.urlopen(req, timeout=5) as r:
        body = json.load(r)
    assert body["expires_in"] <= 60 and "." not in body["token"]
    assert status_of(secured, query="?token=" + body["token"]) == 101
    assert status_of(secured, query="?token=" + body["token"]) == 401  # used once already
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(secured.http + "/auth/websocket", method="POST",
                                                      headers=bearer(token(aud="x"))), timeout=5)
    assert info.value.code == 401


def post_for_token(daemon, headers: dict) -> tuple[int, dict, dict]:
    req = urllib.request.Request(daemon.http + "/auth/websocket", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.load(e)


def test_session_token_requests_are_limited_per_client(secured, control) -> None:
    answers = [post_for_token(secured, {**bearer(token(sub=f"flooder-{i}")), "X-Forwarded-For": "203.0.113.77"})
               for i in range(6)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200, 429, 429]
    status, headers, body = answers[-1]
    assert body["error"]["code"] == "rate_limited" and 1 <= int(headers["Retry-After"]) <= 15
    # Refused before the JWT is looked at: a garbage token is 429 too, not 401.
    assert post_for_token(secured, {"Authorization": "Bearer x.y.z", "X-Forwarded-For": "203.0.113.77"})[0] == 429
    # The tokens issued before the limit still work, and other clients still get theirs.
    with ws(secured, query="?token=" + answers[0][2]["token"]) as conn:
        assert recv(conn)["data"]["authenticated"] is True
    other = post_for_token(secured, {**bearer(token()), "X-Forwarded-For": "198.51.100.77"})
    assert other[0] == 200 and other[2]["token"]
    metrics = urllib.request.urlopen(secured.http + "/metrics", timeout=5).read().decode()
    refused = {s.labels["reason"]: s.value for f in text_string_to_metric_families(metrics)
               for s in f.samples if s.name == "txvoice_connections_refused_total"}
    assert refused.get("token_rate_limited") == 3


def test_unused_session_tokens_are_capped_per_user_across_addresses(secured, control) -> None:
    hoarder = bearer(token(sub="hoarder"))
    issued = [post_for_token(secured, {**hoarder, "X-Forwarded-For": f"198.51.100.{20 + i}"}) for i in range(3)]
    assert [status for status, _, _ in issued] == [200, 200, 200]
    status, headers, body = post_for_token(secured, {**hoarder, "X-Forwarded-For": "198.51.100.30"})
    assert status == 429 and body["error"]["code"] == "too_many_session_tokens"
    assert 1 <= int(headers["Retry-After"]) <= 60
    # Another user is not affected; using one of the hoarder's tokens gives its place back.
    assert post_for_token(secured, {**bearer(token(sub="someone")), "X-Forwarded-For": "198.51.100.31"})[0] == 200
    with ws(secured, query="?token=" + issued[0][2]["token"]) as conn:
        assert recv(conn)["data"]["authenticated"] is True
    assert post_for_token(secured, {**hoarder, "X-Forwarded-For": "198.51.100.32"})[0] == 200


def test_origins(secured, control) -> None:
    good = bearer(token())
    assert status_of(secured, headers={**good, "Origin": "https://evil.example.com"}) == 403
    assert status_of(secured, headers={**good, "Origin": "https://app.example.com"}) == 101
    assert status_of(secured, headers={**good, "Origin": "http://localhost:3000"}) == 101


def test_per_ip_and_global_limits_with_trusted_forwarding(secured, control) -> None:
    good = bearer(token())
    held = []
    try:
        for _ in range(3):
            held.append(ws(secured, headers={**good, "X-Forwarded-For": "203.0.113.7"}).__enter__())
        assert status_of(secured, headers={**good, "X-Forwarded-For": "203.0.113.7"}) == 429
        # Other addresses still get in, until the server is full (6, the control session included).
        held.append(ws(secured, headers={**good, "X-Forwarded-For": "198.51.100.1"}).__enter__())
        held.append(ws(secured, headers={**good, "X-Forwarded-For": "198.51.100.2"}).__enter__())
        assert status_of(secured, headers={**good, "X-Forwarded-For": "198.51.100.3"}) == 503
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.3)
    assert status_of(secured, headers={**good, "X-Forwarded-For": "203.0.113.7"}) == 101


def test_a_message_flood_is_limited_then_closed_1008(secured, control) -> None:
    with ws(secured, headers=bearer(token())) as conn:
        recv(conn)
        try:
            for i in range(800):
                conn.send(json.dumps({"type": "ping", "message_id": f"f{i}"}))
        except ConnectionClosed:
            pass  # the server may close (1008) before the whole flood is out; what it said is read below
        codes = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                m = recv(conn)
                if m["type"] == "error":
                    codes.append(m["data"]["code"])
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
        assert codes and set(codes) == {"rate_limited"}


def test_oversized_frames(secured, control) -> None:
    with ws(secured, headers=bearer(token()), max_size=None) as conn:
        recv(conn)
        conn.send(b"\x00" * (1024 * 1024 + 1))
        assert recv(conn)["data"]["code"] == "message_too_large"
        conn.send(b"\x00" * (16 * 1024 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as info:
            conn.recv(timeout=10)
        assert info.value.rcvd.code == 1009


def scrape(daemon) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(daemon.http + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_move_as_traffic_flows(secured, control) -> None:
    before = scrape(secured)
    with ws(secured, headers=bearer(token())) as conn:
        recv(conn)
        conn.send(json.dumps({"type": "voice_start", "message_id": "v"}))
        recv(conn)
        for _ in range(10):
            conn.send(b"\x01\x02" * 160)
        conn.send("{not json")
        assert recv(conn)["data"]["code"] == "invalid_json"
    assert status_of(secured, headers=bearer(token(aud="nope"))) == 401
    time.sleep(0.3)
    after = scrape(secured)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("txvoice_messages_total", direction="in", kind="binary") == 10
    assert delta("txvoice_message_bytes_total", direction="in", kind="binary") == 3200
    assert delta("txvoice_audio_frames_total", direction="in") == 10
    assert delta("txvoice_messages_total", direction="in", kind="text") >= 2
    assert delta("txvoice_errors_total", code="invalid_json") == 1
    assert delta("txvoice_connections_total") == 1
    assert delta("txvoice_connections_refused_total", reason="auth_failed") == 1
    assert ("txvoice_stage_latency_seconds_count", (("stage", "total"),)) in after
    assert any(name == "txvoice_reactor_lag_seconds_count" for name, _ in after)


def test_health_turns_degraded_when_errors_cross_the_threshold(tmp_path) -> None:
    # A daemon of its own: the error rate is over the last minute of this server's traffic.
    d = start_daemon(tmp_path, "--health-max-error-rate", "0.5")

    def health():
        try:
            with urllib.request.urlopen(d.http + "/health", timeout=5) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.load(e)

    assert health()["status"] == "healthy"
    with ws(d) as conn:
        recv(conn)
        for _ in range(40):
            conn.send("{")
            recv(conn)
        deadline = time.monotonic() + 5
        body = health()
        while "error_rate" not in body["reasons"] and time.monotonic() < deadline:
            time.sleep(0.25)
            body = health()
    d.stop()
    assert body["status"] == "degraded" and "error_rate" in body["reasons"]
    assert body["error_rate"] > 0.5 and body["thresholds"]["max_error_rate"] == 0.5


def test_monitoring_api_needs_a_token(secured, control) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(secured.http + "/monitoring", timeout=5)
    assert info.value.code == 401
    req = urllib.request.Request(secured.http + "/monitoring/sessions", headers=bearer(token()))
    with urllib.request.urlopen(req, timeout=5) as r:
        sessions = json.load(r)["sessions"]
    assert any(s["user_id"] == "control" for s in sessions)
    req = urllib.request.Request(secured.http + "/monitoring/history?minutes=5", headers=bearer(token()))
    with urllib.request.urlopen(req, timeout=5) as r:
        assert isinstance(json.load(r)["minutes"], list)


def test_key_confusion_and_es256(tmp_path) -> None:
    """RS256 key configured: an HS256 token signed with the public key as secret is refused; ES256 works."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pems = []
    for name, key in [("rsa.pem", rsa_key), ("ec.pem", ec_key)]:
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        (tmp_path / name).write_bytes(pem)
        pems.append(pem)
    d = start_daemon(tmp_path, "--auth-required", "--jwt-public-keys",
                     f"{tmp_path / 'rsa.pem'},{tmp_path / 'ec.pem'}")
    try:
        claims = {"sub": "dave", "exp": int(time.time()) + 60}
        good_rs = jwt.encode(claims, rsa_key, algorithm="RS256")
        good_es = jwt.encode(claims, ec_key, algorithm="ES256")
        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        import hashlib
        import hmac
        sig = base64.urlsafe_b64encode(hmac.new(pems[0], header + b"." + body, hashlib.sha256).digest()).rstrip(b"=")
        confused = (header + b"." + body + b"." + sig).decode()
        assert status_of(d, headers=bearer(good_rs)) == 101
        assert status_of(d, headers=bearer(good_es)) == 101
        assert status_of(d, headers=bearer(confused)) == 401
    finally:
        d.stop()
