"""
How the txvoice.v1 client reaches its server: the TCP (or TLS) endpoint for a ``ws://`` or
``wss://`` URL, and the guard that puts the circuit breaker in front of each connection attempt.
"""

from __future__ import annotations

from typing import Any, Callable

from autobahn.websocket.util import parse_url
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from txvoice.client.breaker import CircuitBreaker, CircuitOpenError
from txvoice.client.states import ClientStats

__all__ = ["GuardedEndpoint", "endpoint_for"]


@implementer(IStreamClientEndpoint)
class GuardedEndpoint:
    """
    The real endpoint behind the circuit breaker: an attempt the breaker refuses fails at once;
    the others are counted in ``stats`` and their TCP-level failures go to ``failed`` (which
    passes the failure on).
    """

    def __init__(
        self,
        inner: IStreamClientEndpoint,
        breaker: CircuitBreaker,
        stats: ClientStats,
        failed: Callable[[Failure], Failure],
    ) -> None:
        self.inner = inner
        self.breaker = breaker
        self.stats = stats
        self.failed = failed

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        try:
            self.breaker.check()
        except CircuitOpenError as e:
            return fail(e)
        self.stats.attempts += 1
        d = self.inner.connect(factory)
        d.addErrback(self.failed)
        return d


def endpoint_for(reactor: Any, url: str, timeout: float = 10.0) -> IStreamClientEndpoint:
    """A client endpoint for a ``ws://`` or ``wss://`` URL (TLS verified against the host name)."""
    is_secure, host, port, _resource, _path, _params = parse_url(url)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if is_secure:
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
    return endpoint
