"""
How many unused session tokens (``POST /auth/websocket``) one principal -- a user in a tenant --
holds, so that one account cannot fill the token store (``--session-tokens-per-user``).

:class:`LocalTokenQuota` counts in this process; with ``--redis`` the cluster counts in Redis
(``txvoice.scaleout.quota``), so the limit holds across the nodes behind the load balancer, and
falls back to this process's count while Redis cannot be reached.  Either way a place is taken
when a token is issued (before it is stored: issues in flight count too) and given back when the
token is redeemed, refused or could not be stored, or when it expires.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

#: Whose tokens: (user_id, tenant).
Who = tuple[str, "str | None"]


class LiveTokens:
    """
    Unused, unexpired tokens per principal (user and tenant), so that one account cannot fill
    the shared store.  Expired entries are dropped from the oldest end as tokens are issued.
    """

    def __init__(self) -> None:
        self._by_principal: dict[Who, dict[str, float]] = {}
        self._order: OrderedDict[str, tuple[Who, float]] = OrderedDict()

    def count(self, who: Who, now: float) -> int:
        self._sweep(now)
        live = self._by_principal.get(who)
        if not live:
            return 0
        for digest in [d for d, expires_at in live.items() if expires_at <= now]:
            self.remove(who, digest)
        return len(self._by_principal.get(who, ()))

    def add(self, who: Who, digest: str, expires_at: float) -> None:
        self._by_principal.setdefault(who, {})[digest] = expires_at
        self._order[digest] = (who, expires_at)

    def remove(self, who: Who, digest: str) -> None:
        self._order.pop(digest, None)
        live = self._by_principal.get(who)
        if live is not None:
            live.pop(digest, None)
            if not live:
                del self._by_principal[who]

    def _sweep(self, now: float) -> None:
        order = self._order
        while order:
            digest, (who, expires_at) = next(iter(order.items()))
            if expires_at > now:
                return
            self.remove(who, digest)

    def soonest_expiry(self, who: Who) -> float | None:
        live = self._by_principal.get(who)
        return min(live.values()) if live else None

    def __len__(self) -> int:
        return len(self._order)


class ITokenQuota(Interface):
    """Unused session tokens per principal, counted where the tokens are (this node, or the cluster)."""

    local = Attribute("The LiveTokens this process counts (all of them alone; the fallback with Redis).")

    def reserve(who: Who, digest: str, ttl: float, limit: int, now: float) -> "defer.Deferred[float | None]":
        """
        Count a new token (``digest``, live ``ttl`` s) of ``who`` unless ``limit`` are live:
        fires None when counted, else the seconds until the soonest of them expires (Retry-After).
        """

    def release(who: Who, digest: str) -> None:
        """The token was redeemed, refused or never stored: its place is free again."""


@implementer(ITokenQuota)
class LocalTokenQuota:
    """This process's count (no other node issues tokens)."""

    def __init__(self) -> None:
        self.local = LiveTokens()

    def reserve(self, who: Who, digest: str, ttl: float, limit: int, now: float) -> "defer.Deferred[float | None]":
        live = self.local
        if live.count(who, now) >= limit:
            soonest = live.soonest_expiry(who)
            return defer.succeed((soonest if soonest is not None else now) - now)
        live.add(who, digest, now + ttl)
        return defer.succeed(None)

    def release(self, who: Who, digest: str) -> None:
        self.local.remove(who, digest)
