"""
What every plugin registry in txvoice shares: naming a maker as ``"module:attr.attr"`` so that
listing plugins imports nothing heavy, and loading it when it is first used.

Bottom layer: imports nothing from txvoice.
"""

from __future__ import annotations

import importlib
from typing import Any


def load_target(target: str) -> Any:
    """Resolve ``"package.module:Attr.attr"`` to the object it names."""
    moduleName, _, attrPath = target.partition(":")
    obj: Any = importlib.import_module(moduleName)
    for part in attrPath.split("."):
        if part:
            obj = getattr(obj, part)
    return obj


def plugins_by_name(interface: Any, package: Any = None, what: str = "plugin") -> dict[str, Any]:
    """
    Every plugin providing ``interface`` in ``package`` (default ``twisted.plugins``), by its
    ``name``; the first of a name wins and the others are logged, so a third-party package cannot
    silently replace a built-in one.
    """
    from twisted.logger import Logger
    from twisted.plugin import getPlugins

    if package is None:
        import twisted.plugins as package  # noqa: PLW0127 -- the default plugin package
    found: dict[str, Any] = {}
    for plugin in getPlugins(interface, package):
        name = str(plugin.name)
        if name in found:
            Logger(namespace="txvoice.plugin").warn(
                "duplicate {what} {name}: keeping {kept!r}, ignoring {ignored!r}",
                what=what, name=name, kept=found[name], ignored=plugin)
            continue
        found[name] = plugin
    return found
