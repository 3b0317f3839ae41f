"""
Allowed-origin matching for the WebSocket handshake and the HTTP endpoints.

Entries (S4 ``ALLOWED_ORIGINS=localhost:3000,localhost:3001``) may be:

* ``host:port`` - that host and port over http or https (``localhost:3000``);
* ``host`` - that host on the default port (80 for http, 443 for https);
* ``host:*`` - that host on any port;
* a full origin ``https://app.example.com[:port]`` - exactly that scheme, host and port;
* a wildcard ``*.example.com`` (optionally with scheme and/or port) - any subdomain, one or
  more labels deep, but not ``example.com`` itself;
* ``*`` - everything; ``null`` - the opaque origin of sandboxed frames and ``file:`` pages.

An empty list allows every origin.  A request without an ``Origin`` header (a non-browser
client) is allowed unless ``require_origin`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urlsplit

__all__ = ["OriginPolicy", "parse_origin"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_ANY_PORT = -1
_WEB_SCHEMES = ("http", "https")


def parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a serialized origin, or None if it is not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if not scheme or not host or parts.username is not None or parts.password is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
        if port is None:
            return None
    return scheme, host, port


@dataclass(frozen=True)
class _Pattern:
    scheme: str | None  # None: http or https
    host: str  # exact host, or the suffix after "*." when wildcard
    wildcard: bool
    port: int | None  # None: the scheme's default port; _ANY_PORT: any

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if self.scheme is not None:
            if scheme != self.scheme:
                return False
        elif scheme not in _WEB_SCHEMES:
            return False
        if self.wildcard:
            if not host.endswith("." + self.host):
                return False
        elif host != self.host:
            return False
        if self.port == _ANY_PORT:
            return True
        if self.port is None:
            return port == _DEFAULT_PORTS.get(scheme)
        return port == self.port


def _parse_entry(entry: str) -> _Pattern:
    text = entry.strip().lower()
    scheme: str | None = None
    if "://" in text:
        scheme, _, text = text.partition("://")
        if not scheme:
            raise ValueError(f"bad allowed origin {entry!r}")
        text = text.rstrip("/")
    port: int | None = None
    if text.startswith("["):  # IPv6 literal
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad allowed origin {entry!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad allowed origin {entry!r}")
            port = _parse_port(rest[1:], entry)
    else:
        host, sep, port_text = text.partition(":")
        if sep:
            port = _parse_port(port_text, entry)
    host = host.rstrip(".")
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if not host or "*" in host or "/" in host:
        raise ValueError(f"bad allowed origin {entry!r}")
    if port is None and scheme is not None:
        port = _DEFAULT_PORTS.get(scheme)
        if port is None:
            raise ValueError(f"allowed origin {entry!r} needs an explicit port")
    return _Pattern(scheme, host, wildcard, port)


def _parse_port(text: str, entry: str) -> int:
    if text == "*":
        return _ANY_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in allowed origin {entry!r}")
    return int(text)


class OriginPolicy:
    """Decide whether a browser ``Origin`` may connect; patterns are parsed once."""

    def __init__(self, allowed: Iterable[str] = (), require_origin: bool = False) -> None:
        entries = [e.strip() for e in allowed if e and e.strip()]
        self.require_origin = require_origin
        self.allow_all = not entries or "*" in entries
        self._allow_null = any(e.lower() == "null" for e in entries)
        self._patterns = tuple(_parse_entry(e) for e in entries if e not in ("*",) and e.lower() != "null")

    @classmethod
    def from_setting(cls, value: str | None, require_origin: bool = False) -> "OriginPolicy":
        """Build from a comma-separated setting such as S4's ``ALLOWED_ORIGINS``."""
        return cls((value or "").split(","), require_origin=require_origin)

    def allows(self, origin: str | None) -> bool:
        """True if a request with this ``Origin`` header value (None: absent) may proceed."""
        if origin is None or origin == "":
            return not self.require_origin
        if origin.strip().lower() == "null":
            return self.allow_all or self._allow_null
        if self.allow_all:
            return True
        parsed = parse_origin(origin)
        if parsed is None:
            return False
        scheme, host, port = parsed
        return any(p.matches(scheme, host, port) for p in self._patterns)
