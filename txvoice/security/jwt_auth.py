"""
Authenticators: JWT (PyJWT), a wrapper for a user-supplied validator, allow-all for development,
and :func:`extract_token` to find the bearer token in a handshake.

JWT algorithms are pinned per key: an HMAC secret verifies only ``HS256`` tokens, an RSA public
key only ``RS256``, an EC P-256 key only ``ES256``.  A token's ``alg`` header picks which keys
are tried, never how a key is used, so ``alg: none`` and the HS/RS key-confusion attack (an
``HS256`` token whose MAC key is the server's RSA public key) both fail.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, ed448, rsa
from cryptography.x509 import load_pem_x509_certificate
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txvoice.security.interfaces import (
    AUTH_FAILED,
    TOKEN_ALGORITHM_NOT_ALLOWED,
    TOKEN_EXPIRED,
    TOKEN_INVALID_AUDIENCE,
    TOKEN_INVALID_ISSUER,
    TOKEN_INVALID_SIGNATURE,
    TOKEN_MALFORMED,
    TOKEN_MISSING,
    TOKEN_NOT_YET_VALID,
    AuthError,
    Credentials,
    IAuthenticator,
    Principal,
)

__all__ = [
    "VerificationKey",
    "load_key_material",
    "JWTAuthenticator",
    "CallableAuthenticator",
    "AllowAll",
    "extract_token",
]

log = Logger(namespace="txvoice.auth")

#: Tokens longer than this are refused before any parsing (a cheap DoS guard).
MAX_TOKEN_LENGTH = 8192

_EC_CURVE_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})


@dataclass(frozen=True)
class VerificationKey:
    """One key a JWT may be verified with, the single algorithm it is used with, an optional kid."""

    key: Any  # bytes (HMAC secret) or a cryptography public key object
    algorithm: str
    kid: str | None = None


def load_key_material(value: str | bytes | os.PathLike[str]) -> bytes:
    """
    Return PEM bytes from config: PEM text as is, otherwise the contents of the file it names.

    Raises ``ValueError`` for a value that is neither, so a typo in a path fails at start-up
    instead of at the first login.
    """
    if isinstance(value, bytes):
        data = value
    else:
        text = os.fspath(value)
        if "-----BEGIN" in text:
            data = text.encode("ascii")
        elif os.path.isfile(text):
            with open(text, "rb") as f:
                data = f.read()
        else:
            raise ValueError("public key is neither PEM text nor a readable file path")
    if b"-----BEGIN" not in data:
        raise ValueError("public key material is not PEM")
    return data


def _public_key_from_pem(pem: bytes) -> Any:
    if b"PRIVATE KEY" in pem:
        raise ValueError("a private key was configured where a public key belongs")
    if b"BEGIN CERTIFICATE" in pem:
        return load_pem_x509_certificate(pem).public_key()
    return serialization.load_pem_public_key(pem)


def _algorithm_for(public_key: Any) -> str:
    """The one algorithm a public key of this type verifies by default."""
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise ValueError("RSA keys shorter than 2048 bits are refused")
        return "RS256"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        try:
            return _EC_CURVE_ALGORITHMS[public_key.curve.name]
        except KeyError:
            raise ValueError(f"unsupported EC curve {public_key.curve.name}") from None
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return "EdDSA"
    raise ValueError(f"unsupported public key type {type(public_key).__name__}")


def _check_compatible(public_key: Any, algorithm: str) -> None:
    if isinstance(public_key, rsa.RSAPublicKey) and algorithm in _RSA_ALGORITHMS:
        return
    if isinstance(public_key, ec.EllipticCurvePublicKey) and algorithm == _algorithm_for(public_key):
        return
    if isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)) and algorithm == "EdDSA":
        return
    raise ValueError(f"algorithm {algorithm} cannot be used with a {type(public_key).__name__}")


def _fail(message: str, code: str) -> AuthError:
    return AuthError(message, code=code)


_MISSING_CLAIM_CODES = {"aud": TOKEN_INVALID_AUDIENCE, "iss": TOKEN_INVALID_ISSUER}


def _map_pyjwt_error(e: jwt.PyJWTError) -> AuthError:
    """Map a PyJWT exception to our stable code (the order matters: subclasses first)."""
    if isinstance(e, jwt.ExpiredSignatureError):
        return _fail("token has expired", TOKEN_EXPIRED)
    if isinstance(e, jwt.ImmatureSignatureError):
        return _fail("token is not yet valid", TOKEN_NOT_YET_VALID)
    if isinstance(e, jwt.InvalidAudienceError):
        return _fail("token audience is not accepted", TOKEN_INVALID_AUDIENCE)
    if isinstance(e, jwt.InvalidIssuerError):
        return _fail("token issuer is not accepted", TOKEN_INVALID_ISSUER)
    if isinstance(e, jwt.InvalidSignatureError):
        return _fail("token signature is invalid", TOKEN_INVALID_SIGNATURE)
    if isinstance(e, jwt.InvalidAlgorithmError):
        return _fail("token algorithm is not allowed", TOKEN_ALGORITHM_NOT_ALLOWED)
    if isinstance(e, jwt.MissingRequiredClaimError):
        code = _MISSING_CLAIM_CODES.get(e.claim, TOKEN_MALFORMED)
        return _fail(f"token lacks the required claim {e.claim!r}", code)
    if isinstance(e, (jwt.DecodeError, jwt.InvalidTokenError)):
        return _fail("token is malformed", TOKEN_MALFORMED)
    return _fail("authentication failed", AUTH_FAILED)


_TIME_CLAIMS = ("exp", "nbf", "iat")
_MAX_NUMERIC_DATE = 1e13  # some 300,000 years: later is no time, and 10**400 would not fit a float


def _is_numeric_date(value: Any) -> bool:
    """A JSON number that is a time (not a bool, not a string, finite, within a float's reach)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= _MAX_NUMERIC_DATE and (isinstance(value, int) or math.isfinite(value))


def _as_credentials(credentials: Credentials | str | None) -> Credentials:
    if isinstance(credentials, Credentials):
        return credentials
    return Credentials(token=credentials)


@implementer(IAuthenticator)
class JWTAuthenticator:
    """
    Verify JWTs with an HS256 secret and/or RS256/ES256 public keys; map claims to a Principal.

    ``exp`` is required by default; ``nbf``/``iat`` are checked when present; ``aud`` and
    ``iss`` are checked when configured.  Verification is synchronous (tens of µs) and runs on
    the reactor thread; the result is an already-fired Deferred.
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        public_keys: Iterable[str | bytes | os.PathLike[str] | VerificationKey] = (),
        audience: str | Sequence[str] | None = None,
        issuer: str | Sequence[str] | None = None,
        leeway: float = 30.0,
        user_claim: str = "sub",
        tenant_claim: str = "tenant",
        require_exp: bool = True,
        require_tenant: bool = False,
        min_secret_bytes: int = 32,
    ) -> None:
        keys: list[VerificationKey] = []
        if secret is not None:
            secret_bytes = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
            if not secret_bytes:
                raise ValueError("empty JWT secret")
            if b"-----BEGIN" in secret_bytes:
                # The classic key-confusion set-up: never use PEM text as an HMAC secret.
                raise ValueError("a PEM key was configured as the HS256 secret")
            if len(secret_bytes) < min_secret_bytes:
                log.warn(
                    "JWT secret is {length} bytes; HS256 wants at least {minimum}",
                    length=len(secret_bytes),
                    minimum=min_secret_bytes,
                )
            keys.append(VerificationKey(secret_bytes, "HS256"))
        for entry in public_keys:
            if isinstance(entry, VerificationKey):
                if entry.algorithm in _HMAC_ALGORITHMS:
                    if not isinstance(entry.key, bytes) or b"-----BEGIN" in entry.key:
                        raise ValueError("HMAC keys must be raw secret bytes, never PEM")
                else:
                    _check_compatible(entry.key, entry.algorithm)
                keys.append(entry)
            else:
                public_key = _public_key_from_pem(load_key_material(entry))
                keys.append(VerificationKey(public_key, _algorithm_for(public_key)))
        if not keys:
            raise ValueError("JWTAuthenticator needs a secret or at least one public key")
        self._keys: tuple[VerificationKey, ...] = tuple(keys)
        self._allowed = frozenset(k.algorithm for k in keys)
        self._audience = audience
        self._issuer = issuer
        self._leeway = float(leeway)
        self._user_claim = user_claim
        self._tenant_claim = tenant_claim
        self._require_tenant = require_tenant
        required = [user_claim]
        if require_exp:
            required.append("exp")
        self._options: dict[str, Any] = {
            "require": required,
            "verify_aud": audience is not None,
            "verify_iss": issuer is not None,
        }

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms a token may use (one per configured key type)."""
        return self._allowed

    def authenticate(self, credentials: Credentials | str | None) -> defer.Deferred[Principal]:
        """Verify the token; Deferred (already fired) with a Principal or an AuthError."""
        try:
            return defer.succeed(self.verify(_as_credentials(credentials).token))
        except AuthError as e:
            log.info("JWT rejected: {code}", code=e.code)
            return defer.fail(e)

    def verify(self, token: str | None) -> Principal:
        """Synchronous core of :meth:`authenticate`; raises :class:`AuthError`."""
        if not token:
            raise _fail("no token presented", TOKEN_MISSING)
        if len(token) > MAX_TOKEN_LENGTH:
            raise _fail("token is too long", TOKEN_MALFORMED)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _fail("token is malformed", TOKEN_MALFORMED) from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._allowed:
            raise _fail("token algorithm is not allowed", TOKEN_ALGORITHM_NOT_ALLOWED)
        kid = header.get("kid")
        candidates = [
            k
            for k in self._keys
            if k.algorithm == alg and (k.kid is None or kid is None or k.kid == kid)
        ]
        claims: dict[str, Any] | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.algorithm],
                    audience=self._audience,
                    issuer=self._issuer,
                    leeway=self._leeway,
                    options=self._options,  # type: ignore[arg-type]
                )
                break
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
                continue  # try the next key of the same algorithm
            except jwt.PyJWTError as e:
                raise _map_pyjwt_error(e) from None
        if claims is None:
            raise _fail("token signature is invalid", TOKEN_INVALID_SIGNATURE)
        return self._principal(claims)

    def _principal(self, claims: Mapping[str, Any]) -> Principal:
        for name in _TIME_CLAIMS:
            # PyJWT reads these with int(), so "exp": "1796560030" passes its checks; RFC 7519
            # says NumericDate, a JSON number, and the expiry timer needs one: anything else is
            # malformed, never "no expiry".
            if name in claims and not _is_numeric_date(claims[name]):
                raise _fail(f"claim {name!r} must be a number", TOKEN_MALFORMED)
        user_id = claims.get(self._user_claim)
        if not isinstance(user_id, str) or not user_id:
            raise _fail(f"claim {self._user_claim!r} must be a non-empty string", TOKEN_MALFORMED)
        tenant = claims.get(self._tenant_claim)
        if tenant is not None and not isinstance(tenant, str):
            raise _fail(f"claim {self._tenant_claim!r} must be a string", TOKEN_MALFORMED)
        if tenant is None and self._require_tenant:
            raise _fail(f"token lacks the tenant claim {self._tenant_claim!r}", AUTH_FAILED)
        exp = claims.get("exp")
        return Principal(
            user_id=user_id,
            tenant=tenant,
            claims=dict(claims),
            expires_at=float(exp) if exp is not None else None,
        )


@implementer(IAuthenticator)
class CallableAuthenticator:
    """
    Wrap a user validator ``validate(user_id, token)`` returning bool, a Principal, or a
    Deferred of either (S1's custom validator).  False or an exception means ``auth_failed``.
    """

    def __init__(
        self,
        validate: Callable[[str | None, str], Any],
        *,
        anonymous_user: str = "anonymous",
        tenant: str | None = None,
    ) -> None:
        self._validate = validate
        self._anonymous_user = anonymous_user
        self._tenant = tenant

    def authenticate(self, credentials: Credentials | str | None) -> defer.Deferred[Principal]:
        """Call the validator and turn its verdict into a Principal or an AuthError."""
        creds = _as_credentials(credentials)
        if not creds.token:
            return defer.fail(_fail("no token presented", TOKEN_MISSING))
        d = defer.maybeDeferred(self._validate, creds.user_id, creds.token)
        d.addCallbacks(self._verdict, self._error, callbackArgs=(creds,))
        return d

    def _verdict(self, result: Any, creds: Credentials) -> Principal:
        if isinstance(result, Principal):
            return result
        if result is True:
            return Principal(user_id=creds.user_id or self._anonymous_user, tenant=self._tenant)
        raise _fail("credentials were rejected", AUTH_FAILED)

    def _error(self, failure: Any) -> Any:
        if failure.check(AuthError):
            return failure
        log.failure("custom validator raised", failure)
        raise _fail("authentication failed", AUTH_FAILED)


@implementer(IAuthenticator)
class AllowAll:
    """Accept everyone (development only; logs a warning when created)."""

    def __init__(self, user_id: str = "anonymous", tenant: str | None = None) -> None:
        self._user_id = user_id
        self._tenant = tenant
        log.warn("authentication is disabled (AllowAll): do not use in production")

    def authenticate(self, credentials: Credentials | str | None) -> defer.Deferred[Principal]:
        """Return a Principal for the claimed user id, or the default one."""
        creds = _as_credentials(credentials)
        return defer.succeed(Principal(user_id=creds.user_id or self._user_id, tenant=self._tenant))


_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)


def _text(value: Any) -> str | None:
    """First value of a header/query entry given as str, bytes or a list of them."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, bytes):
        try:
            return value.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            return None
    return value if isinstance(value, str) else None


def _lookup(mapping: Mapping[Any, Any], name: str) -> Any:
    for key, value in mapping.items():
        k = key.decode("latin-1") if isinstance(key, bytes) else key
        if isinstance(k, str) and k.lower() == name:
            return value
    return None


def extract_token(
    headers: Mapping[Any, Any] | None, query: Mapping[Any, Any] | None = None
) -> str | None:
    """
    The bearer token from ``Authorization: Bearer <t>``, else from the ``token`` query parameter.

    Accepts autobahn's ``ConnectionRequest.headers``/``.params`` and twisted.web's bytes
    mappings alike (header names are matched case-insensitively).  Browsers cannot set headers on
    a WebSocket, hence the query form; prefer short-lived session tokens there, since URLs end up
    in access logs.
    """
    if headers:
        auth = _text(_lookup(headers, "authorization"))
        if auth:
            m = _BEARER.match(auth)
            if m:
                return m.group(1)
    if query:
        token = _text(_lookup(query, "token"))
        if token:
            return token
    return None
