"""
Short-lived, single-use WebSocket session tokens (S4 ``POST /auth/websocket``).

A client with a JWT (sent in a header, where it stays out of URLs and access logs) exchanges it
for an opaque token good for one WebSocket handshake within ``ttl`` seconds (60 by default, and
never past the JWT's own ``exp``).  Only a SHA-256 digest of the token is stored, so a dump of
the store (Redis later) yields nothing usable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from txvoice.errors import VoiceError
from txvoice.security.interfaces import (
    AUTH_FAILED,
    TOKEN_EXPIRED,
    TOKEN_MISSING,
    AuthError,
    Credentials,
    IAuthenticator,
    ISessionTokenStore,
    Principal,
)
from txvoice.security.jwt_auth import extract_token
from txvoice.security.token_quota import ITokenQuota, LocalTokenQuota

__all__ = [
    "DEFAULT_TTL",
    "WEBSOCKET_PURPOSE",
    "BINDING_CLAIM",
    "SessionTokenStoreFull",
    "TooManySessionTokens",
    "MemorySessionTokenStore",
    "record_to_json",
    "record_from_json",
    "SessionTokenIssuer",
    "AuthWebSocketResource",
]

log = Logger(namespace="txvoice.auth")

DEFAULT_TTL = 60.0
WEBSOCKET_PURPOSE = "websocket"
_MAX_TOKEN_LENGTH = 256
#: The claim of a session token's principal that holds what the token was bound to (S4's body).
BINDING_CLAIM = "txvoice_binding"
_MAX_BODY = 8192


class SessionTokenStoreFull(VoiceError):
    """Too many outstanding session tokens; try again shortly (HTTP 503)."""

    code = "server_full"
    http_status = 503


class TooManySessionTokens(VoiceError):
    """The caller already holds as many unused session tokens as it may (HTTP 429)."""

    code = "too_many_session_tokens"
    http_status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Record:
    principal: Principal
    purpose: str
    expires_at: float


def record_to_json(record: _Record) -> str:
    """A session token's record as JSON (what a networked store keeps)."""
    p = record.principal
    return json.dumps({"user_id": p.user_id, "tenant": p.tenant, "claims": dict(p.claims),
                       "principal_expires_at": p.expires_at, "purpose": record.purpose,
                       "expires_at": record.expires_at}, separators=(",", ":"), default=str)


def record_from_json(raw: str) -> _Record:
    doc = json.loads(raw)
    principal = Principal(doc["user_id"], doc.get("tenant"), doc.get("claims") or {}, doc.get("principal_expires_at"))
    return _Record(principal, doc["purpose"], float(doc["expires_at"]))


def _default_clock() -> IReactorTime:
    from twisted.internet import reactor

    return reactor


@implementer(ISessionTokenStore)
class MemorySessionTokenStore:
    """
    In-process store, bounded to ``max_entries``; expired records are dropped lazily from the
    oldest end on every ``put`` (amortised O(1)).
    """

    def __init__(self, clock: IReactorTime | None = None, max_entries: int = 100_000) -> None:
        self._clock = clock or _default_clock()
        self._max = max_entries
        self._records: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    @property
    def size(self) -> int:
        return len(self._records)

    def put(self, key: str, record: Any, expires_at: float) -> defer.Deferred[None]:
        """Store a record; fails with :class:`SessionTokenStoreFull` at capacity."""
        self._evict(self._clock.seconds())
        if len(self._records) >= self._max:
            return defer.fail(SessionTokenStoreFull("too many outstanding session tokens"))
        self._records[key] = (expires_at, record)
        return defer.succeed(None)

    def take(self, key: str) -> defer.Deferred[Any]:
        """Remove and return the record (None if unknown or already taken)."""
        entry = self._records.pop(key, None)
        return defer.succeed(None if entry is None else entry[1])

    def _evict(self, now: float) -> None:
        records = self._records
        while records:
            key, (expires_at, _) = next(iter(records.items()))
            if expires_at > now:
                break
            del records[key]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class SessionTokenIssuer:
    """Issue and redeem single-use, single-purpose session tokens."""

    def __init__(
        self,
        store: ISessionTokenStore | None = None,
        clock: IReactorTime | None = None,
        ttl: float = DEFAULT_TTL,
        purpose: str = WEBSOCKET_PURPOSE,
        max_per_principal: int = 0,
        quota: ITokenQuota | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if max_per_principal < 0:
            raise ValueError("max_per_principal must be >= 0")
        self._clock = clock or _default_clock()
        self._store = store if store is not None else MemorySessionTokenStore(self._clock)
        self.ttl = float(ttl)
        self.purpose = purpose
        #: Unused tokens one principal may hold at once (0: no limit but the store's).
        self.max_per_principal = max_per_principal
        #: Where the unused tokens per principal are counted (--redis: across the cluster).
        self.quota: ITokenQuota = quota if quota is not None else LocalTokenQuota()

    def seconds(self) -> float:
        """The issuer's notion of now (its clock), for computing ``expires_in``."""
        return self._clock.seconds()

    def issue(
        self, principal: Principal, purpose: str | None = None
    ) -> defer.Deferred[tuple[str, float]]:
        """Deferred ``(token, expires_at)``; the token expires no later than the principal."""
        now = self._clock.seconds()
        if principal.expired(now):
            return defer.fail(AuthError("credentials have expired", code=TOKEN_EXPIRED))
        who = (principal.user_id, principal.tenant)
        expires_at = now + self.ttl
        if principal.expires_at is not None:
            expires_at = min(expires_at, principal.expires_at)
        token = secrets.token_urlsafe(32)
        digest = _digest(token)
        record = _Record(principal, purpose or self.purpose, expires_at)
        limit = self.max_per_principal

        def counted(refused: float | None) -> defer.Deferred[None]:
            if refused is not None:
                raise TooManySessionTokens(
                    f"{limit} unused session tokens are outstanding for this account; use or let one expire first",
                    retry_after=max(0.0, refused),
                )
            return self._store.put(digest, record, expires_at)

        def stored(_: object) -> tuple[str, float]:
            return token, expires_at

        def failed(failure: Failure) -> Failure:
            if limit and not failure.check(TooManySessionTokens):
                self.quota.release(who, digest)
            return failure

        # Counted before it is stored: issues in flight count too.
        d = self.quota.reserve(who, digest, expires_at - now, limit, now) if limit else defer.succeed(None)
        issued: defer.Deferred[tuple[str, float]] = d.addCallback(counted).addCallbacks(stored, failed)
        return issued

    def redeem(self, token: str | None, purpose: str | None = None) -> defer.Deferred[Principal]:
        """
        Deferred Principal; the token is consumed whatever the outcome.  Unknown, reused or
        wrong-purpose tokens fail with ``auth_failed``, expired ones with ``token_expired``
        (a store that drops expired records itself reports those as ``auth_failed``).
        """
        if not token:
            return defer.fail(AuthError("no session token presented", code=TOKEN_MISSING))
        if len(token) > _MAX_TOKEN_LENGTH:
            return defer.fail(AuthError("unknown session token", code=AUTH_FAILED))
        digest = _digest(token)
        d = self._store.take(digest)
        d.addCallback(self._check, purpose or self.purpose, digest)
        return d

    def _check(self, record: _Record | None, purpose: str, digest: str) -> Principal:
        if record is None:
            raise AuthError("unknown or already used session token", code=AUTH_FAILED)
        if self.max_per_principal:
            self.quota.release((record.principal.user_id, record.principal.tenant), digest)
        if record.purpose != purpose:
            raise AuthError("session token is not valid for this purpose", code=AUTH_FAILED)
        if self._clock.seconds() >= record.expires_at:
            raise AuthError("session token has expired", code=TOKEN_EXPIRED)
        return record.principal


def _json(request: Any, status: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"pragma", b"no-cache")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _read_body(request: Any) -> dict[str, Any]:
    """S4's JSON body (``{}`` when there is none); ValueError when it is not a JSON object."""
    content = getattr(request, "content", None)
    if content is None:
        return {}
    content.seek(0)
    raw = content.read(_MAX_BODY + 1)
    if not raw.strip():
        return {}
    if len(raw) > _MAX_BODY:
        raise ValueError(f"the body is larger than {_MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except ValueError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    for key in ("token", "userId", "callId"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise ValueError(f"{key} must be a string")
    return body


def _bind(principal: Principal, binding: dict[str, Any]) -> Principal:
    """The principal a bound session token stands for: the JWT's user, with what it is bound to."""
    user = binding.get("userId")
    if user is not None and user != principal.user_id:
        raise UserMismatch(f"userId {user!r} is not the user the token was issued to")
    return dataclasses.replace(principal, claims={**principal.claims, BINDING_CLAIM: dict(binding)})


class UserMismatch(AuthError):
    """S4's body names another user than its JWT (HTTP 403)."""

    code = "user_mismatch"
    http_status = 403


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class AuthWebSocketResource(Resource):
    """
    ``POST /auth/websocket``: ``Authorization: Bearer <JWT>`` in, JSON
    ``{"token", "expires_in", "ws_url_hint"?}`` out; 401 JSON on failure, 405 for other
    methods.  S4's form is a JSON body ``{token, userId, callId}`` (``token``: the JWT, used when
    no header is sent); the answer then also has S4's ``sessionToken`` / ``expiresIn`` and the
    token is bound to ``userId`` (which must be the JWT's user: 403 ``user_mismatch``) and
    ``callId``: its principal carries them in the ``txvoice_binding`` claim.  With an ``origins`` policy (:class:`txvoice.security.origins.OriginPolicy`) it
    also refuses foreign browser origins (403) and answers CORS pre-flights.  With a
    ``throttle`` (request -> seconds to wait, 0 to go on) a request over its client's rate gets
    429 ``rate_limited`` with ``Retry-After`` before any credential is checked.
    """

    isLeaf = True

    def __init__(
        self,
        authenticator: IAuthenticator,
        issuer: SessionTokenIssuer,
        ws_url_hint: str | None = None,
        origins: Any = None,
        throttle: Callable[[Any], float] | None = None,
    ) -> None:
        super().__init__()
        self._authenticator = authenticator
        self._issuer = issuer
        self._ws_url_hint = ws_url_hint
        self._origins = origins
        self._throttle = throttle

    def render(self, request: Any) -> bytes | int:
        method = request.method
        if method == b"POST":
            return self._post(request)
        if method == b"OPTIONS" and self._origins is not None:
            return self._preflight(request)
        request.setHeader(b"allow", b"POST, OPTIONS" if self._origins is not None else b"POST")
        return _json(request, 405, _error_body("method_not_allowed", "use POST"))

    def _origin_ok(self, request: Any) -> bool:
        """Check Origin and, if it is allowed, add the CORS response headers."""
        if self._origins is None:
            return True
        raw = request.getHeader(b"origin")
        origin = raw.decode("latin-1") if raw is not None else None
        if not self._origins.allows(origin):
            return False
        if origin is not None:
            request.setHeader(b"access-control-allow-origin", raw)
            request.setHeader(b"vary", b"Origin")
        return True

    def _preflight(self, request: Any) -> bytes:
        if not self._origin_ok(request):
            return _json(request, 403, _error_body("origin_not_allowed", "origin not allowed"))
        request.setHeader(b"access-control-allow-methods", b"POST")
        request.setHeader(b"access-control-allow-headers", b"Authorization, Content-Type")
        request.setHeader(b"access-control-max-age", b"600")
        request.setResponseCode(204)
        return b""

    def _post(self, request: Any) -> bytes | int:
        if not self._origin_ok(request):
            return _json(request, 403, _error_body("origin_not_allowed", "origin not allowed"))
        if self._throttle is not None:
            wait = self._throttle(request)
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                request.setHeader(b"retry-after", str(retry_after).encode("ascii"))
                return _json(request, 429, _error_body(
                    "rate_limited", f"too many token requests from this address; retry in {retry_after} s"))
        headers = dict(request.requestHeaders.getAllRawHeaders())
        token = extract_token(headers, None)  # header or body only: never a JWT in a URL
        try:
            body = _read_body(request)
        except ValueError as e:
            return _json(request, 400, _error_body("invalid_body", str(e)))
        if token is None and isinstance(body.get("token"), str) and body["token"]:
            token = body["token"]
        binding = {k: body[k] for k in ("userId", "callId") if body.get(k) is not None}
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        # The chain changes what it carries (Principal, issued token, response body): not one type.
        d: defer.Deferred[Any] = self._authenticator.authenticate(Credentials(token=token))
        if binding:
            d.addCallback(_bind, binding)
        d.addCallback(self._issuer.issue)
        d.addCallbacks(self._issued, self._failed, errbackArgs=(request,), callbackArgs=(request, binding if body else None))
        d.addCallback(self._respond, request, gone)
        d.addErrback(lambda f: log.failure("writing /auth/websocket response failed", f))
        return NOT_DONE_YET

    def _issued(self, result: tuple[str, float], request: Any, binding: dict[str, Any] | None) -> bytes:
        token, expires_at = result
        expires_in = max(0, round(expires_at - self._issuer.seconds()))
        body: dict[str, Any] = {"token": token, "expires_in": expires_in}
        if binding is not None:
            # S4's body form: its spelling too (sessionToken, expiresIn in seconds) and the binding.
            body.update(sessionToken=token, expiresIn=expires_in, **binding)
        if self._ws_url_hint:
            body["ws_url_hint"] = self._ws_url_hint
        return _json(request, 200, body)

    def _failed(self, failure: Failure, request: Any) -> bytes:
        err = failure.value
        if isinstance(err, AuthError):
            log.info("session token refused: {code}", code=err.code)
            request.setHeader(b"www-authenticate", b'Bearer error="invalid_token"')
            return _json(request, err.http_status, _error_body(err.code, err.message))
        if isinstance(err, VoiceError):
            status = getattr(err, "http_status", 400)
            retry_after = getattr(err, "retry_after", None)
            if retry_after is not None:
                request.setHeader(b"retry-after", str(max(1, math.ceil(retry_after))).encode("ascii"))
            return _json(request, status, _error_body(err.code, err.message))
        log.failure("session token exchange failed", failure)
        return _json(request, 500, _error_body("internal_error", "internal error"))

    @staticmethod
    def _respond(body: bytes, request: Any, gone: list[bool]) -> None:
        if gone:
            return  # the client went away; nothing to write to
        request.write(body)
        request.finish()
