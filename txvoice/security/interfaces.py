"""
Extension points and value types of authentication.

``IAuthenticator.authenticate`` always returns a :class:`~twisted.internet.defer.Deferred`,
even for checks that are synchronous (a JWT signature check): user validators (S1's
``validate(user_id, token)``) and later back ends (a JWKS fetch, a Redis lookup) are
asynchronous, and one calling convention means the server has a single code path.  The
synchronous implementations return an already-fired Deferred, so they cost no reactor turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from txvoice.errors import VoiceError

__all__ = [
    "AUTH_FAILED",
    "TOKEN_MISSING",
    "TOKEN_EXPIRED",
    "TOKEN_NOT_YET_VALID",
    "TOKEN_INVALID_AUDIENCE",
    "TOKEN_INVALID_ISSUER",
    "TOKEN_INVALID_SIGNATURE",
    "TOKEN_MALFORMED",
    "TOKEN_ALGORITHM_NOT_ALLOWED",
    "AUTH_CODES",
    "AuthError",
    "Credentials",
    "Principal",
    "IAuthenticator",
    "ISessionTokenStore",
]

# Public protocol codes (never rename one).
AUTH_FAILED = "auth_failed"
TOKEN_MISSING = "token_missing"
TOKEN_EXPIRED = "token_expired"
TOKEN_NOT_YET_VALID = "token_not_yet_valid"
TOKEN_INVALID_AUDIENCE = "token_invalid_audience"
TOKEN_INVALID_ISSUER = "token_invalid_issuer"
TOKEN_INVALID_SIGNATURE = "token_invalid_signature"
TOKEN_MALFORMED = "token_malformed"
TOKEN_ALGORITHM_NOT_ALLOWED = "token_algorithm_not_allowed"

AUTH_CODES = frozenset(
    {
        AUTH_FAILED,
        TOKEN_MISSING,
        TOKEN_EXPIRED,
        TOKEN_NOT_YET_VALID,
        TOKEN_INVALID_AUDIENCE,
        TOKEN_INVALID_ISSUER,
        TOKEN_INVALID_SIGNATURE,
        TOKEN_MALFORMED,
        TOKEN_ALGORITHM_NOT_ALLOWED,
    }
)


class AuthError(VoiceError):
    """
    Authentication failed.  ``code`` is ``auth_failed`` or one of the specific ``token_*``
    codes; the message never contains the token.  ``http_status`` is what an HTTP endpoint
    answers (the WebSocket handshake refuses with it too).
    """

    code = AUTH_FAILED
    http_status = 401


@dataclass(frozen=True)
class Credentials:
    """What a client presented: a bearer token and, for S1 validators, the claimed user id."""

    token: str | None
    user_id: str | None = None


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: who (``user_id``), for whom (``tenant``), until when."""

    user_id: str
    tenant: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    expires_at: float | None = None  # POSIX seconds; None = no expiry known

    def expired(self, now: float) -> bool:
        """True when the credentials this principal came from are no longer valid at ``now``."""
        return self.expires_at is not None and now >= self.expires_at


class IAuthenticator(Interface):
    """Turns client credentials into a :class:`Principal`."""

    def authenticate(credentials: Credentials | str) -> Deferred[Principal]:
        """
        Check ``credentials`` (a :class:`Credentials`, or a bare token string).

        Return a Deferred firing with a :class:`Principal`, or failing with :class:`AuthError`
        (any other failure is a server bug and must be treated as ``auth_failed``).
        """


class ISessionTokenStore(Interface):
    """
    Storage of issued session tokens, keyed by a digest of the token (never the token itself).

    Methods return Deferreds so that a networked store (Redis ``SET PX`` / ``GETDEL``) fits.
    """

    def put(key: str, record: Any, expires_at: float) -> Deferred[None]:
        """Store ``record`` under ``key`` until ``expires_at``."""

    def take(key: str) -> Deferred[Any]:
        """
        Atomically remove and return the record under ``key``; Deferred[record or None].
        Atomicity is what makes session tokens single-use.
        """

    size = Attribute("Number of records currently held (for metrics; may be approximate).")
