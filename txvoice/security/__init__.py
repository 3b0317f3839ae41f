"""
Security building blocks the server calls: authentication (JWT, custom validators, session
tokens), allowed origins, per-connection rate limits and per-IP/global connection limits.
"""

from txvoice.security.interfaces import (
    AuthError,
    Credentials,
    IAuthenticator,
    ISessionTokenStore,
    Principal,
)
from txvoice.security.iplimits import ConnectionLimiter, ConnectionRefused, Lease, client_ip
from txvoice.security.jwt_auth import (
    AllowAll,
    CallableAuthenticator,
    JWTAuthenticator,
    VerificationKey,
    extract_token,
)
from txvoice.security.origins import OriginPolicy
from txvoice.security.ratelimit import (
    CLOSE_POLICY_VIOLATION,
    ConnectionRateLimiter,
    Decision,
    RateLimited,
    RateLimitPolicy,
    TokenBucket,
)
from txvoice.security.session_tokens import (
    AuthWebSocketResource,
    MemorySessionTokenStore,
    SessionTokenIssuer,
)

__all__ = [
    "AuthError",
    "Credentials",
    "IAuthenticator",
    "ISessionTokenStore",
    "Principal",
    "JWTAuthenticator",
    "VerificationKey",
    "CallableAuthenticator",
    "AllowAll",
    "extract_token",
    "SessionTokenIssuer",
    "MemorySessionTokenStore",
    "AuthWebSocketResource",
    "OriginPolicy",
    "TokenBucket",
    "ConnectionRateLimiter",
    "RateLimitPolicy",
    "Decision",
    "RateLimited",
    "CLOSE_POLICY_VIOLATION",
    "ConnectionLimiter",
    "ConnectionRefused",
    "Lease",
    "client_ip",
]
