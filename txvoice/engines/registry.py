"""
Find speech engines by name through Twisted's plugin system.

An engine factory is any object in a ``twisted/plugins/*.py`` module that provides
:class:`twisted.plugin.IPlugin` and one of :class:`ISpeechToTextFactory`, :class:`IAgentFactory` or
:class:`ITextToSpeechFactory`, so a third-party package adds an engine by shipping such a module;
``twistd txvoice --stt NAME`` then picks it.  :class:`EngineFactory` is the easy way to declare one:
it imports the engine only when an engine is made, so listing plugins stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import Interface, alsoProvides, implementer

from txvoice.engines.interfaces import (
    IAgent,
    IAgentFactory,
    IEngineFactory,
    ISpeechToText,
    ISpeechToTextFactory,
    ITextToSpeech,
    ITextToSpeechFactory,
)
from txvoice.errors import VoiceError
from txvoice.plugin import load_target, plugins_by_name

log = Logger()

#: Engine kinds: the factory interface plugins provide and the interface the engines they make provide.
KINDS: dict[str, tuple[type[Interface], type[Interface]]] = {
    "stt": (ISpeechToTextFactory, ISpeechToText),
    "agent": (IAgentFactory, IAgent),
    "tts": (ITextToSpeechFactory, ITextToSpeech),
}


class EngineNotFound(VoiceError):
    """No engine plugin of that kind has that name."""

    code = "unknown_engine"


def _factoryInterface(kind: str) -> type[Interface]:
    try:
        return KINDS[kind][0]
    except KeyError:
        raise ValueError(f"unknown engine kind {kind!r}; kinds: {', '.join(sorted(KINDS))}") from None


def engine_factories(kind: str, package: ModuleType | None = None) -> dict[str, IEngineFactory]:
    """Every factory of ``kind`` found in ``package`` (default ``twisted.plugins``), by name; the first of a name wins."""
    return plugins_by_name(_factoryInterface(kind), package, f"{kind} engine")


def engine_names(kind: str, package: ModuleType | None = None) -> list[str]:
    """The names of the engines of ``kind`` that can be picked."""
    return sorted(engine_factories(kind, package))


def find_engine(kind: str, name: str, package: ModuleType | None = None) -> IEngineFactory:
    """The factory of the ``kind`` engine called ``name``; :class:`EngineNotFound` lists the names there are."""
    factories = engine_factories(kind, package)
    try:
        return factories[name]
    except KeyError:
        available = ", ".join(sorted(factories)) or "none"
        raise EngineNotFound(
            f"no {kind} engine named {name!r}; available: {available}", kind=kind, name=name,
            available=sorted(factories),
        ) from None


def create_engine(kind: str, name: str, options: Mapping[str, Any] | None = None,
                  package: ModuleType | None = None) -> Any:
    """Find the ``kind`` engine ``name`` and make one, checking it provides the engine interface."""
    engine = find_engine(kind, name, package).create(dict(options or {}))
    engineInterface = KINDS[kind][1]
    if not engineInterface.providedBy(engine):
        raise TypeError(f"{kind} engine {name!r} made {engine!r}, which does not provide {engineInterface.__name__}")
    return engine



@implementer(IPlugin, IEngineFactory)
class EngineFactory:
    """
    A plugin that makes ``kind`` engines by calling ``target`` (``"module:callable"``) with the
    options dict; the module is imported on the first ``create``.
    """

    def __init__(self, kind: str, name: str, target: str, description: str = "") -> None:
        alsoProvides(self, _factoryInterface(kind))
        self.kind = kind
        self.name = name
        self.target = target
        self.description = description

    def create(self, options: Mapping[str, Any] | None = None) -> Any:
        log.info("creating {kind} engine {name} from {target}", kind=self.kind, name=self.name, target=self.target)
        return load_target(self.target)(dict(options or {}))

    def __repr__(self) -> str:
        return f"<EngineFactory {self.kind}:{self.name} -> {self.target}>"
