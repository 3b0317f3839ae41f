"""
Load the Autobahn testsuite harness modules by file path.

``tests/autobahn/`` must not become a package: one named ``autobahn`` on the test path would
shadow the autobahn library itself.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent / "autobahn"


def load(filename: str, name: str) -> ModuleType:
    """``tests/autobahn/<filename>`` as module ``name`` (loaded once)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def harness() -> ModuleType:
    return load("wstest_harness.py", "txvoice_wstest_harness")
