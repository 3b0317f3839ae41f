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
