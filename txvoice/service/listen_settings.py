"""
The settings of ``--processes N`` (see :mod:`txvoice.service.processes`): how many processes,
and the ``tcp:``/``tcp6:`` listen description they share, parsed as Twisted parses it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from txvoice.audio.workers import usable_cpus

MAX_PROCESSES = 256


def process_count(setting: int) -> int:
    """The number of processes ``--processes`` asks for (0: one per CPU this process may use)."""
    if setting < 0 or setting > MAX_PROCESSES:
        raise ValueError(f"--processes must be between 0 (one per CPU) and {MAX_PROCESSES}, not {setting}")
    return usable_cpus() if setting == 0 else setting


@dataclass(frozen=True)
class TCPListen:
    """A ``tcp:``/``tcp6:`` listen description, parsed."""

    port: int
    interface: str
    backlog: int
    family: socket.AddressFamily


_TCP_POSITIONAL = {"tcp": ("port", "interface", "backlog"), "tcp6": ("port", "backlog", "interface")}


def _split(description: str) -> list[str]:
    r"""Split on ``:`` like Twisted's endpoint parser (``\:`` is a literal colon)."""
    parts, current, chars = [], [], iter(description)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def parse_tcp_listen(description: str) -> TCPListen:
    """
    Parse ``tcp:PORT[:interface=ADDR][:backlog=N]`` or ``tcp6:...`` (Twisted's syntax); anything
    else is a ValueError saying what ``--processes`` supports.
    """
    parts = _split(description.strip())
    kind = parts[0].lower()
    if kind not in _TCP_POSITIONAL:
        raise ValueError(
            f"--processes above 1 needs a tcp: or tcp6: --listen description (e.g. tcp:8765:interface=0.0.0.0), "
            f"not {kind or description!r}: terminate TLS in front of txvoice, or run one process"
        )
    values: dict[str, str] = {"interface": "" if kind == "tcp" else "::", "backlog": "50"}
    positional = list(_TCP_POSITIONAL[kind])
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            if key not in _TCP_POSITIONAL[kind]:
                raise ValueError(f"{description!r}: unknown parameter {key!r} for {kind}:")
            values[key] = value
            if key in positional:
                positional.remove(key)
        elif positional:
            values[positional.pop(0)] = part
        else:
            raise ValueError(f"{description!r}: too many parameters for {kind}:")
    if "port" not in values:
        raise ValueError(f"{description!r}: no port")
    try:
        port, backlog = int(values["port"]), int(values["backlog"])
    except ValueError:
        raise ValueError(f"{description!r}: port and backlog must be integers") from None
    interface = values["interface"]
    family = socket.AF_INET6 if (kind == "tcp6" or ":" in interface) else socket.AF_INET
    return TCPListen(port, interface, backlog, family)
