"""
Connection accounting per client IP and in total, and finding the client IP behind proxies.

:meth:`ConnectionLimiter.acquire` hands out a :class:`Lease` (release it exactly once when the
connection ends; releasing twice is harmless) or raises :class:`ConnectionRefused` with
``too_many_connections_per_ip`` (HTTP 429) or ``server_full`` (HTTP 503).  IPv6 clients are
counted per /64 by default, since one host usually owns a whole /64.

:func:`client_ip` honours ``X-Forwarded-For`` only when the TCP peer is a trusted proxy, and then
walks the chain from the right, skipping trusted hops: the first untrusted address is the client.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping, Sequence, Union

from txvoice.errors import VoiceError

__all__ = [
    "TOO_MANY_CONNECTIONS_PER_IP",
    "SERVER_FULL",
    "ConnectionRefused",
    "Lease",
    "ConnectionLimiter",
    "parse_trusted_proxies",
    "UNIX_SOCKET_PEERS",
    "client_ip",
    "is_ip_address",
]

TOO_MANY_CONNECTIONS_PER_IP = "too_many_connections_per_ip"
SERVER_FULL = "server_full"

_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
_Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class ConnectionRefused(VoiceError):
    """A connection over a limit; ``code`` is the reason, ``http_status`` the handshake answer."""

    code = SERVER_FULL
    http_status = 503

    def __init__(self, message: str, code: str, http_status: int) -> None:
        super().__init__(message, code=code)
        self.http_status = http_status


class Lease:
    """One counted connection; :meth:`release` gives the slot back (idempotent)."""

    __slots__ = ("_limiter", "key", "released")

    def __init__(self, limiter: "ConnectionLimiter", key: str) -> None:
        self._limiter = limiter
        self.key = key
        self.released = False

    def release(self) -> None:
        """Give the slot back; later calls do nothing."""
        if not self.released:
            self.released = True
            self._limiter._release(self.key)


def _address(text: str) -> _Address | None:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.scope_id:
            addr = ipaddress.IPv6Address(str(addr).split("%", 1)[0])
    return addr


def is_ip_address(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (not a UNIX socket path or a test transport's name)."""
    return _address(text) is not None


class ConnectionLimiter:
    """Counts open connections per client key and in total; 0 disables a limit."""

    def __init__(self, max_per_ip: int = 0, max_total: int = 0, ipv6_prefix: int = 64) -> None:
        self.max_per_ip = max_per_ip
        self.max_total = max_total
        self.ipv6_prefix = ipv6_prefix
        self.total = 0
        self._per_key: dict[str, int] = {}

    def key_for(self, ip: str) -> str:
        """The accounting key: the address itself, or its IPv6 /``ipv6_prefix`` network."""
        addr = _address(ip)
        if addr is None:
            return ip  # unix sockets, test transports: count by the raw string
        if isinstance(addr, ipaddress.IPv6Address) and self.ipv6_prefix < 128:
            net = ipaddress.IPv6Network((addr, self.ipv6_prefix), strict=False)
            return str(net)
        return str(addr)

    def count(self, ip: str) -> int:
        """Open connections counted against ``ip``'s key."""
        return self._per_key.get(self.key_for(ip), 0)

    def acquire(self, ip: str) -> Lease:
        """
        Count a new connection from ``ip`` or raise :class:`ConnectionRefused`.  The per-IP limit
        applies to IP addresses only: a UNIX socket peer (a local proxy) counts in the total.
        """
        if self.max_total and self.total >= self.max_total:
            raise ConnectionRefused("server is full", SERVER_FULL, 503)
        key = self.key_for(ip)
        current = self._per_key.get(key, 0)
        # A peer without an IP address (a UNIX socket: a local proxy) stands for all its clients.
        if self.max_per_ip and current >= self.max_per_ip and is_ip_address(ip):
            raise ConnectionRefused(
                "too many connections from this address", TOO_MANY_CONNECTIONS_PER_IP, 429
            )
        self._per_key[key] = current + 1
        self.total += 1
        return Lease(self, key)

    def _release(self, key: str) -> None:
        current = self._per_key.get(key, 0)
        if current <= 1:
            self._per_key.pop(key, None)
        else:
            self._per_key[key] = current - 1
        if self.total > 0:
            self.total -= 1


class _UnixSocketPeers:
    """``unix`` among the trusted proxies: a peer on a UNIX socket (it has no address) is one."""

    version = 0  # matches no IP address's version, so ``_trusted`` never picks it for an IP

    def __contains__(self, addr: object) -> bool:
        return False

    def __repr__(self) -> str:
        return "unix"


#: The ``unix`` entry of ``--trusted-proxies``: believe ``X-Forwarded-For`` from a local proxy that
#: connects over a UNIX socket.
UNIX_SOCKET_PEERS = _UnixSocketPeers()


def _proxy(item: str) -> _Network | _UnixSocketPeers:
    return UNIX_SOCKET_PEERS if item.lower() == "unix" else ipaddress.ip_network(item, strict=False)


def parse_trusted_proxies(value: str | Iterable[str] | None) -> tuple[_Network | _UnixSocketPeers, ...]:
    """
    CIDRs (or single addresses), and ``unix`` for peers on a UNIX socket, from a comma-separated
    string or an iterable of strings.
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(_proxy(item.strip()) for item in items if item.strip())


def _trusted(addr: _Address, proxies: Sequence[_Network | _UnixSocketPeers]) -> bool:
    return any(addr.version == net.version and addr in net for net in proxies)


def _strip_port(entry: str) -> str:
    """``1.2.3.4:5678`` -> ``1.2.3.4``; ``[::1]:80`` -> ``::1``; bare IPv6 stays as is."""
    entry = entry.strip().strip('"')
    if entry.startswith("["):
        return entry[1 : entry.find("]")] if "]" in entry else entry
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry


def _header_values(headers: Mapping[Any, Any] | None, name: str) -> list[str]:
    if not headers:
        return []
    out: list[str] = []
    for key, value in headers.items():
        k = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        if k.lower() != name:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            out.append(v.decode("latin-1") if isinstance(v, bytes) else str(v))
    return out


def _networks(value: Sequence[_Network | _UnixSocketPeers] | str | Iterable[str] | None) -> tuple[_Network | _UnixSocketPeers, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        return parse_trusted_proxies(value)
    items = tuple(value)
    networks = tuple(n for n in items if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network, _UnixSocketPeers)))
    if len(networks) == len(items):
        return networks
    return parse_trusted_proxies(str(n) for n in items)


def client_ip(
    peer_host: str,
    headers: Mapping[Any, Any] | None,
    trusted_proxies: Sequence[_Network | _UnixSocketPeers] | str | Iterable[str] | None,
) -> str:
    """
    The client's address: ``peer_host`` unless that is a trusted proxy, in which case the
    rightmost ``X-Forwarded-For`` entry that is not itself a trusted proxy.  A garbage entry
    stops the walk at the hop that added it.  Repeated XFF headers are read as one list.  A peer
    on a UNIX socket (``peer_host`` empty) is a trusted proxy when ``unix`` is among them.
    """
    proxies = _networks(trusted_proxies)
    peer = _address(peer_host)
    if peer is None:
        if peer_host or UNIX_SOCKET_PEERS not in proxies:
            return peer_host
    elif not proxies or not _trusted(peer, proxies):
        return str(peer)
    chain = [e for v in _header_values(headers, "x-forwarded-for") for e in v.split(",")]
    current = peer
    for entry in reversed(chain):
        addr = _address(_strip_port(entry))
        if addr is None:
            break
        current = addr
        if not _trusted(addr, proxies):
            break
    return str(current) if current is not None else peer_host
