"""A small event emitter: named events, listeners called in order, one failing listener logged."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

from txvoice.logging import NamespaceLogger

__all__ = ["Emitter"]

Listener = Callable[..., Any]


class Emitter:
    """``on(name, fn)`` subscribes (and returns the function that unsubscribes), ``emit`` calls."""

    log = NamespaceLogger(namespace="txvoice.client")

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = defaultdict(list)

    def on(self, name: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(*args)`` on every ``emit(name, *args)`` until the returned callable is called."""
        self._listeners[name].append(listener)

        def off() -> None:
            self.off(name, listener)

        return off

    def once(self, name: str, listener: Listener) -> Callable[[], None]:
        """Like :meth:`on`, for the next event only."""

        def wrapper(*args: Any) -> None:
            self.off(name, wrapper)
            listener(*args)

        return self.on(name, wrapper)

    def off(self, name: str, listener: Listener) -> None:
        """Remove ``listener`` from ``name`` (no error when it is not there)."""
        listeners = self._listeners.get(name)
        if listeners and listener in listeners:
            listeners.remove(listener)

    def emit(self, name: str, *args: Any) -> None:
        """Call the listeners of ``name``; an exception in one is logged and the others still run."""
        for listener in list(self._listeners.get(name, ())):
            try:
                listener(*args)
            except Exception:
                self.log.failure("listener {listener!r} of {event} failed", listener=listener, event=name)

    def listeners(self, name: str) -> int:
        """How many listeners ``name`` has."""
        return len(self._listeners.get(name, ()))
