"""JWT authentication: the good paths and every attack we know of."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import defer
from twisted.python.failure import Failure

from txvoice.errors import VoiceError
from txvoice.security.interfaces import AuthError, Credentials, IAuthenticator, Principal
from txvoice.security.jwt_auth import (
    AllowAll,
    CallableAuthenticator,
    JWTAuthenticator,
    VerificationKey,
    extract_token,
    load_key_material,
)

SECRET = "s3cret-for-tests-0123456789abcdef-0123456789"
AUD = "txvoice"
ISS = "https://issuer.example"


def fired(d: defer.Deferred):
    results: list = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


def principal_of(d: defer.Deferred) -> Principal:
    r = fired(d)
    if isinstance(r, Failure):
        r.raiseException()
    assert isinstance(r, Principal)
    return r


def auth_code(d: defer.Deferred) -> str:
    r = fired(d)
    assert isinstance(r, Failure), f"expected a failure, got {r!r}"
    assert r.check(AuthError), r
    assert isinstance(r.value, VoiceError)
    return r.value.code


def _pem_public(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def claims(**overrides):
    now = int(time.time())
    base = {"sub": "user-1", "tenant": "acme", "aud": AUD, "iss": ISS, "iat": now, "exp": now + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs_token(secret: str = SECRET, **overrides) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm="HS256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(header: dict, payload: dict, mac_key: bytes | None = None) -> str:
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    sig = b""
    if mac_key is not None:
        sig = hmac.new(mac_key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + b64(sig)


@pytest.fixture
def hs_auth():
    return JWTAuthenticator(secret=SECRET, audience=AUD, issuer=ISS, leeway=30)


@pytest.fixture
def rs_auth(rsa_key):
    return JWTAuthenticator(public_keys=[_pem_public(rsa_key).decode()], audience=AUD, issuer=ISS)


# Good paths ---------------------------------------------------------------------------------


def test_provides_interface(hs_auth):
    assert IAuthenticator.providedBy(hs_auth)
    assert hs_auth.algorithms == {"HS256"}


def test_hs256_good_token(hs_auth):
    c = claims()
    p = principal_of(hs_auth.authenticate(Credentials(token=jwt.encode(c, SECRET, "HS256"))))
    assert p.user_id == "user-1"
    assert p.tenant == "acme"
    assert p.expires_at == float(c["exp"])
    assert p.claims["iss"] == ISS
    assert not p.expired(time.time())


def test_bare_string_credentials(hs_auth):
    assert principal_of(hs_auth.authenticate(hs_token())).user_id == "user-1"


def test_rs256_good_token(rs_auth, rsa_key):
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert principal_of(rs_auth.authenticate(token)).user_id == "user-1"


def test_es256_good_token(ec_key):
    auth = JWTAuthenticator(public_keys=[_pem_public(ec_key)], audience=AUD, issuer=ISS)
    assert auth.algorithms == {"ES256"}
    token = jwt.encode(claims(sub="es-user"), ec_key, algorithm="ES256")
    assert principal_of(auth.authenticate(token)).user_id == "es-user"


def test_public_key_from_file(tmp_path, ec_key):
    path = tmp_path / "key.pem"
    path.write_bytes(_pem_public(ec_key))
    auth = JWTAuthenticator(public_keys=[str(path)], audience=AUD, issuer=ISS)
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    assert principal_of(auth.authenticate(token)).user_id == "user-1"


def test_custom_tenant_claim():
    auth = JWTAuthenticator(secret=SECRET, tenant_claim="org")
    p = principal_of(auth.authenticate(hs_token(org="org-9", aud=None, iss=None)))
    assert p.tenant == "org-9"


def test_leeway_accepts_slightly_expired(hs_auth):
    now = int(time.time())
    assert principal_of(hs_auth.authenticate(hs_token(exp=now - 5))).user_id == "user-1"


def test_several_keys_of_one_type(rsa_key, other_rsa_key):
    auth = JWTAuthenticator(
        public_keys=[_pem_public(rsa_key), _pem_public(other_rsa_key)], audience=AUD, issuer=ISS
    )
    token = jwt.encode(claims(), other_rsa_key, algorithm="RS256")
    assert principal_of(auth.authenticate(token)).user_id == "user-1"


def test_kid_selects_key(rsa_key, other_rsa_key):
    keys = [
        VerificationKey(rsa_key.public_key(), "RS256", kid="a"),
        VerificationKey(other_rsa_key.public_key(), "RS256", kid="b"),
    ]
    auth = JWTAuthenticator(public_keys=keys, audience=AUD, issuer=ISS)
    good = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"kid": "b"})
    assert principal_of(auth.authenticate(good)).user_id == "user-1"
    lying = jwt.encode(claims(), other_rsa_key, algorithm="RS256", headers={"kid": "a"})
    assert auth_code(auth.authenticate(lying)) == "token_invalid_signature"


# Attacks and bad tokens ---------------------------------------------------------------------


@pytest.mark.parametrize("creds", [None, "", Credentials(token=None), Credentials(token="")])
def test_no_token(hs_auth, creds):
    assert auth_code(hs_auth.authenticate(creds)) == "token_missing"


def test_expired(hs_auth):
    now = int(time.time())
    assert auth_code(hs_auth.authenticate(hs_token(exp=now - 3600))) == "token_expired"


def test_not_yet_valid(hs_auth):
    now = int(time.time())
    assert auth_code(hs_auth.authenticate(hs_token(nbf=now + 3600))) == "token_not_yet_valid"


def test_issued_in_the_future(hs_auth):
    now = int(time.time())
    assert auth_code(hs_auth.authenticate(hs_token(iat=now + 3600))) == "token_not_yet_valid"


def test_wrong_audience(hs_auth):
    assert auth_code(hs_auth.authenticate(hs_token(aud="someone-else"))) == "token_invalid_audience"


def test_missing_audience(hs_auth):
    assert auth_code(hs_auth.authenticate(hs_token(aud=None))) == "token_invalid_audience"


def test_wrong_issuer(hs_auth):
    assert auth_code(hs_auth.authenticate(hs_token(iss="https://evil.example"))) == "token_invalid_issuer"


def test_missing_issuer(hs_auth):
    assert auth_code(hs_auth.authenticate(hs_token(iss=None))) == "token_invalid_issuer"


def test_forged_signature_other_secret(hs_auth):
    forged = hs_token(secret="not-the-secret-0123456789abcdef-0123456789")
    assert auth_code(hs_auth.authenticate(forged)) == "token_invalid_signature"


def test_tampered_payload(hs_auth):
    header, _, sig = hs_token().split(".")
    payload = b64(json.dumps(claims(sub="admin")).encode())
    assert auth_code(hs_auth.authenticate(f"{header}.{payload}.{sig}")) == "token_invalid_signature"


def test_signature_checked_before_claims(hs_auth):
    now = int(time.time())
    forged = hs_token(secret="x" * 40, exp=now - 3600)  # forged AND expired
    assert auth_code(hs_auth.authenticate(forged)) == "token_invalid_signature"


def test_forged_rs256(rs_auth, other_rsa_key):
    token = jwt.encode(claims(), other_rsa_key, algorithm="RS256")
    assert auth_code(rs_auth.authenticate(token)) == "token_invalid_signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none(hs_auth, rs_auth, alg):
    token = raw_token({"alg": alg, "typ": "JWT"}, claims())
    assert auth_code(hs_auth.authenticate(token)) == "token_algorithm_not_allowed"
    assert auth_code(rs_auth.authenticate(token)) == "token_algorithm_not_allowed"


def test_alg_none_from_pyjwt(hs_auth):
    token = jwt.encode(claims(), None, algorithm="none")
    assert auth_code(hs_auth.authenticate(token)) == "token_algorithm_not_allowed"


def test_hs256_signed_with_rs_public_key_rs_only(rs_auth, rsa_key):
    """Key confusion: the attacker MACs with the server's public key PEM."""
    pem = _pem_public(rsa_key)
    token = raw_token({"alg": "HS256", "typ": "JWT"}, claims(), mac_key=pem)
    assert auth_code(rs_auth.authenticate(token)) == "token_algorithm_not_allowed"


def test_hs256_signed_with_rs_public_key_mixed(rsa_key):
    """With both an HS secret and an RS key configured, the PEM is still never an HMAC key."""
    pem = _pem_public(rsa_key)
    auth = JWTAuthenticator(secret=SECRET, public_keys=[pem], audience=AUD, issuer=ISS)
    assert auth.algorithms == {"HS256", "RS256"}
    for key in (pem, pem.strip(), pem.decode().replace("\n", "\r\n").encode()):
        token = raw_token({"alg": "HS256", "typ": "JWT"}, claims(), mac_key=key)
        assert auth_code(auth.authenticate(token)) == "token_invalid_signature"
    # and both legitimate kinds still work
    assert principal_of(auth.authenticate(hs_token())).user_id == "user-1"
    assert principal_of(auth.authenticate(jwt.encode(claims(), rsa_key, "RS256"))).user_id == "user-1"


def test_es_token_against_rs_only(rs_auth, ec_key):
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    assert auth_code(rs_auth.authenticate(token)) == "token_algorithm_not_allowed"


def test_rs512_not_allowed_for_rs256_key(rs_auth, rsa_key):
    token = jwt.encode(claims(), rsa_key, algorithm="RS512")
    assert auth_code(rs_auth.authenticate(token)) == "token_algorithm_not_allowed"


@pytest.mark.parametrize(
    "token",
    ["abc", "a.b.c", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9.!!!.abc", "x" * 9000, "ab c.d.e"],
)
def test_malformed(hs_auth, token):
    assert auth_code(hs_auth.authenticate(token)) == "token_malformed"


def test_missing_subject(hs_auth):
    assert auth_code(hs_auth.authenticate(hs_token(sub=None))) == "token_malformed"


def test_non_string_subject(hs_auth):
    assert auth_code(hs_auth.authenticate(hs_token(sub=42))) == "token_malformed"


def test_missing_exp(hs_auth):
    assert auth_code(hs_auth.authenticate(hs_token(exp=None))) == "token_malformed"


def test_require_tenant():
    auth = JWTAuthenticator(secret=SECRET, require_tenant=True)
    assert auth_code(auth.authenticate(hs_token(tenant=None, aud=None, iss=None))) == "auth_failed"


def test_error_message_never_contains_token(hs_auth):
    token = hs_token(aud="nope")
    failure = fired(hs_auth.authenticate(token))
    assert token not in str(failure.value)
    assert token not in repr(failure.value.details)


# Configuration errors -----------------------------------------------------------------------


def test_pem_as_secret_refused(rsa_key):
    with pytest.raises(ValueError):
        JWTAuthenticator(secret=_pem_public(rsa_key))


def test_private_key_refused(rsa_key):
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError):
        JWTAuthenticator(public_keys=[pem])


def test_no_keys_refused():
    with pytest.raises(ValueError):
        JWTAuthenticator()


def test_bad_key_path_refused():
    with pytest.raises(ValueError):
        load_key_material("/nonexistent/key.pem")


def test_hmac_verification_key_must_not_be_pem(rsa_key):
    with pytest.raises(ValueError):
        JWTAuthenticator(public_keys=[VerificationKey(_pem_public(rsa_key), "HS256")])


# Other authenticators -----------------------------------------------------------------------


def test_callable_sync_true():
    auth = CallableAuthenticator(lambda user, token: user == "bob" and token == "t")
    p = principal_of(auth.authenticate(Credentials(token="t", user_id="bob")))
    assert p.user_id == "bob"
    assert auth_code(auth.authenticate(Credentials(token="bad", user_id="bob"))) == "auth_failed"


def test_callable_deferred():
    pending: list[defer.Deferred] = []

    def validate(user, token):
        d: defer.Deferred = defer.Deferred()
        pending.append(d)
        return d

    auth = CallableAuthenticator(validate)
    d1 = auth.authenticate(Credentials(token="t", user_id="u1"))
    d2 = auth.authenticate(Credentials(token="t", user_id="u2"))
    pending[0].callback(True)
    pending[1].callback(False)
    assert principal_of(d1).user_id == "u1"
    assert auth_code(d2) == "auth_failed"


def test_callable_truthy_but_not_true_is_rejected():
    auth = CallableAuthenticator(lambda user, token: "yes")
    assert auth_code(auth.authenticate(Credentials(token="t", user_id="u"))) == "auth_failed"


def test_callable_exception_and_auth_error():
    def boom(user, token):
        raise RuntimeError("database down")

    def expired(user, token):
        raise AuthError("expired", code="token_expired")

    assert auth_code(CallableAuthenticator(boom).authenticate("t")) == "auth_failed"
    assert auth_code(CallableAuthenticator(expired).authenticate("t")) == "token_expired"


def test_callable_may_return_principal_and_needs_token():
    auth = CallableAuthenticator(lambda u, t: Principal(user_id="x", tenant="y"))
    assert principal_of(auth.authenticate("t")).tenant == "y"
    assert auth_code(auth.authenticate(Credentials(token=None, user_id="u"))) == "token_missing"


def test_allow_all():
    auth = AllowAll()
    assert principal_of(auth.authenticate(None)).user_id == "anonymous"
    assert principal_of(auth.authenticate(Credentials(token=None, user_id="dev"))).user_id == "dev"


# extract_token ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, query, expected",
    [
        ({"authorization": "Bearer abc"}, {}, "abc"),
        ({"Authorization": "bearer   abc  "}, {}, "abc"),
        ({b"Authorization": [b"Bearer abc"]}, None, "abc"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, {}, None),
        ({"authorization": "Bearer"}, {}, None),
        ({}, {"token": ["q1"]}, "q1"),
        ({}, {"token": "q2"}, "q2"),
        ({}, {b"token": [b"q3"]}, "q3"),
        ({"authorization": "Bearer hdr"}, {"token": ["q"]}, "hdr"),
        ({"authorization": "Basic x"}, {"token": ["q"]}, "q"),
        (None, None, None),
        ({}, {"token": [""]}, None),
    ],
)
def test_extract_token(headers, query, expected):
    assert extract_token(headers, query) == expected
