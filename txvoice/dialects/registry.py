"""
Find wire dialects by name through Twisted's plugin system, as engines are found.

A dialect is one module whose ``endpoints(server)`` returns the web resources it serves, by URL
path (``{}`` when its path option is empty, i.e. it is off).  It is registered by one
:class:`DialectFactory` in a ``twisted/plugins/*.py`` module (txvoice's own are in
``twisted/plugins/txvoice_dialects.py``), so adding a dialect touches no if/else: the daemon mounts
every dialect it finds, in name order, and two dialects asking for one path is a usage error.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from autobahn.twisted.resource import WebSocketResource
from twisted.application.service import IService
from twisted.plugin import IPlugin
from twisted.web.resource import IResource
from zope.interface import Attribute, Interface, implementer

from txvoice.errors import VoiceError
from txvoice.plugin import load_target, plugins_by_name
from txvoice.server.factory import VoiceServerFactory

if TYPE_CHECKING:  # pragma: no cover
    from txvoice.server.context import VoiceServer

class IDialectFactory(Interface):
    """A plugin that mounts one wire dialect on the daemon's web site."""

    name = Attribute("The dialect's name (str), as logs and ``/monitoring`` show it.")
    description = Attribute("One line for ``twistd txvoice --help-dialects``.")

    def endpoints(server: "VoiceServer") -> Mapping[str, IResource]:
        """The resources this dialect serves for ``server``, by URL path; empty when it is off."""

    def services(server: "VoiceServer") -> list[IService]:
        """Services the dialect runs beside the web site (a listener of its own, e.g. TCP); often none."""


class DialectPathClash(VoiceError):
    """Two dialects want the same URL path."""

    code = "dialect_path_clash"


@implementer(IPlugin, IDialectFactory)
class DialectFactory:
    """
    A dialect plugin whose ``endpoints`` is ``target`` (``"module:callable"``), imported on first use
    so that listing plugins stays cheap.
    """

    def __init__(self, name: str, target: str, description: str = "", services: str | None = None) -> None:
        self.name = name
        self.target = target
        self.description = description
        self.services_target = services

    def endpoints(self, server: "VoiceServer") -> Mapping[str, IResource]:
        resources: Mapping[str, IResource] = load_target(self.target)(server)  # "module:callable"
        return resources

    def services(self, server: "VoiceServer") -> list[IService]:
        return list(load_target(self.services_target)(server)) if self.services_target else []

    def __repr__(self) -> str:
        return f"<DialectFactory {self.name} -> {self.target}>"


def dialect_factories(package: ModuleType | None = None) -> dict[str, IDialectFactory]:
    """Every dialect plugin in ``package`` (default ``twisted.plugins``), by name; the first of a name wins."""
    return plugins_by_name(IDialectFactory, package, "dialect")


def mount_dialects(server: "VoiceServer", package: ModuleType | None = None) -> dict[str, IResource]:
    """The web resources of every dialect, by path; :class:`DialectPathClash` if two want one path."""
    mounted: dict[str, IResource] = {}
    owner: dict[str, str] = {}
    for name, factory in sorted(dialect_factories(package).items()):
        for path, resource in factory.endpoints(server).items():
            if path in mounted:
                raise DialectPathClash(
                    f"dialects {owner[path]!r} and {name!r} both want the path {path!r}; "
                    "give one of them another path option", path=path, dialects=[owner[path], name])
            mounted[path] = resource
            owner[path] = name
    return mounted


def dialect_services(server: "VoiceServer", package: ModuleType | None = None) -> list[IService]:
    """The services every dialect runs beside the web site (listeners of non-HTTP dialects), in name order."""
    found: list[IService] = []
    for _, factory in sorted(dialect_factories(package).items()):
        services = getattr(factory, "services", None)  # optional for other packages' plugins
        if services is not None:
            found.extend(services(server))
    return found


def websocket_endpoint(path: str, server: "VoiceServer", protocol: Any) -> dict[str, IResource]:
    """``{path: WebSocketResource}`` for a ``VoiceServerFactory`` of ``protocol``; ``{}`` when ``path`` is empty."""
    if not path:
        return {}
    return {path: WebSocketResource(VoiceServerFactory(server, protocol))}
