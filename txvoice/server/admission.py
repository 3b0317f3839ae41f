"""
Who may open a connection, decided before the WebSocket upgrade completes.

In order: the client's address (``X-Forwarded-For`` only from trusted proxies), its Origin (403),
the global and per-IP connection limits (503 / 429), and its credentials: a JWT or a single-use
session token from ``Authorization: Bearer`` or ``?token=`` (401 on failure).  A client without
a token is admitted when authentication is optional, or when its dialect can authenticate
in-protocol (the native ``auth`` message); everything it may do then is decided by the dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txvoice.config import VoiceConfig
from txvoice.security.interfaces import AuthError, Credentials, IAuthenticator, Principal
from txvoice.security.iplimits import (
    ConnectionLimiter,
    ConnectionRefused,
    Lease,
    client_ip,
    parse_trusted_proxies,
)
from txvoice.security.jwt_auth import JWTAuthenticator, extract_token
from txvoice.security.origins import OriginPolicy
from txvoice.security.ratelimit import RateLimitPolicy
from txvoice.security.requestlimits import AddressRateLimiter
from txvoice.security.session_tokens import SessionTokenIssuer

log = Logger(namespace="txvoice.auth")


@dataclass(slots=True)
class Admission:
    """A connection that may open: from where, holding which lease, as whom (None: not yet known)."""

    ip: str
    lease: Lease
    principal: Principal | None


def build_authenticator(config: VoiceConfig) -> IAuthenticator | None:
    """The JWT authenticator the configuration describes, or None when no key is configured."""
    keys = [k.strip() for k in config.jwt_public_keys.split(",") if k.strip()]
    if not config.jwt_secret and not keys:
        if config.auth_required:
            raise ValueError("auth_required needs jwt_secret or jwt_public_keys")
        return None
    return JWTAuthenticator(
        secret=config.jwt_secret or None,
        public_keys=[Path(k) if not k.startswith("-----BEGIN") else k for k in keys],
        audience=config.jwt_audience or None,
        issuer=config.jwt_issuer or None,
        leeway=config.jwt_leeway,
        tenant_claim=config.jwt_tenant_claim,
    )


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


class AdmissionPolicy:
    """Origin, limits and credentials for every WebSocket upgrade of one server."""

    def __init__(self, config: VoiceConfig, clock: IReactorTime,
                 on_refused: Callable[[str], object] | None = None) -> None:
        self.config = config
        self.origins = OriginPolicy.from_setting(config.allowed_origins)
        self.limiter = ConnectionLimiter(max_per_ip=config.max_connections_per_ip, max_total=config.max_connections)
        self.trusted_proxies = parse_trusted_proxies(config.trusted_proxies)
        self.authenticator = build_authenticator(config)
        self.issuer = SessionTokenIssuer(
            clock=clock, ttl=config.session_token_ttl, max_per_principal=config.session_tokens_per_user
        )
        self.rate_policy = RateLimitPolicy.from_settings(
            window_ms=config.rate_limit_window_ms,
            max_requests=config.rate_limit_max_requests,
            strike_limit=config.rate_limit_strikes,
        )
        self.token_requests = (
            AddressRateLimiter(config.auth_rate_limit, key=self.limiter.key_for) if config.auth_rate_limit > 0 else None
        )
        self._clock = clock
        self._on_refused = on_refused or (lambda reason: None)

    def throttle_token_request(self, request: Any) -> float:
        """
        ``POST /auth/websocket``: 0 to go on, else the seconds its client must wait (HTTP 429).
        """
        if self.token_requests is None:
            return 0.0
        headers = dict(request.requestHeaders.getAllRawHeaders())
        ip = client_ip(getattr(request.getClientAddress(), "host", None) or "", headers, self.trusted_proxies)
        wait = self.token_requests.check(ip, self._clock.seconds())
        if wait > 0:
            self._on_refused("token_rate_limited")
            log.info("refused a session token request: {reason}", reason="rate_limited", client=ip)
        return wait

    def _refuse(self, reason: str, status: int, message: str) -> ConnectionDeny:
        self._on_refused(reason)
        log.info("refused a connection: {reason}", reason=reason)
        return ConnectionDeny(status, message)

    def admit(self, request: ConnectionRequest, peer_host: str, in_protocol_auth: bool) -> Deferred[Admission]:
        """Fire with an :class:`Admission`, or fail with a ``ConnectionDeny`` (HTTP status)."""
        try:
            ip = client_ip(peer_host, request.headers, self.trusted_proxies)
            if not self.origins.allows(request.origin):
                raise self._refuse("origin_not_allowed", 403, "origin not allowed")
            try:
                lease = self.limiter.acquire(ip)
            except ConnectionRefused as e:
                raise self._refuse(e.code, e.http_status, e.message) from None
            token = extract_token(request.headers, request.params)
        except ConnectionDeny as refused:
            d: Deferred[Admission] = Deferred()
            d.errback(Failure(refused))
            return d
        if token is None or self.authenticator is None:
            if self.config.auth_required and not in_protocol_auth:
                lease.release()
                return _failed(self._refuse("auth_failed", 401, "token_missing: authentication required"))
            return succeed(Admission(ip, lease, None))

        def accepted(principal: Principal) -> Admission:
            return Admission(ip, lease, principal)

        def rejected(failure: Failure) -> Failure:
            lease.release()
            error = failure.value
            code = getattr(error, "code", "auth_failed")
            if not isinstance(error, AuthError):
                log.failure("authenticating an upgrade failed", failure)
            return Failure(self._refuse("auth_failed", 401, f"{code}: authentication failed"))

        return self.authenticate(token).addCallbacks(accepted, rejected)

    def authenticate(self, token: str, user_id: str | None = None) -> Deferred[Principal]:
        """A JWT (checked by the authenticator) or a session token (redeemed once) -> Principal."""
        if self.authenticator is None:
            return succeed(Principal(user_id=user_id or "anonymous"))
        if _looks_like_jwt(token):
            return self.authenticator.authenticate(Credentials(token, user_id))
        return self.issuer.redeem(token)


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(Failure(error))
    return d
