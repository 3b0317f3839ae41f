"""
The installed distribution says what the source says: one version, and a dependency for every
third-party module txvoice imports at run time (and none it does not).
"""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

import txvoice

ROOT = Path(__file__).resolve().parent.parent

# Distribution name → the top-level modules it provides, where they differ.
PROVIDES = {
    "twisted": {"twisted"}, "autobahn": {"autobahn"}, "txaio": {"txaio"},
    "python-socketio": {"socketio"}, "zope.interface": {"zope"}, "numpy": {"numpy"},
    "webrtcvad-wheels": {"webrtcvad", "_webrtcvad"}, "soxr": {"soxr"}, "service-identity": {"service_identity"},
    "pyjwt": {"jwt"}, "txredisapi": {"txredisapi"}, "cryptography": {"cryptography"}, "prometheus_client": {"prometheus_client"},
    "pocketsphinx": {"pocketsphinx"}, "twilio": {"twilio"},
}
# Required without being imported by name: Twisted's TLS checks hostnames with it.
INDIRECT = {"service-identity"}


def runtime_imports() -> set[str]:
    """Top-level third-party modules imported anywhere in txvoice/."""
    found: set[str] = set()
    for path in (ROOT / "txvoice").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != "txvoice"}


def requirements() -> set[str]:
    """The installed distribution's unconditional requirements, by name."""
    names = set()
    for req in metadata.requires("txvoice") or []:
        if "extra ==" in req:
            continue
        name = req.split(";")[0].split("[")[0]
        for stop in "<>=!~ ":
            name = name.split(stop)[0]
        names.add(name.strip().lower())
    return names


def test_one_version_source() -> None:
    assert metadata.version("txvoice") == txvoice.__version__


def test_runtime_dependencies_are_what_txvoice_imports() -> None:
    required = requirements()
    unknown = required - set(PROVIDES)
    assert not unknown, f"add {unknown} to PROVIDES"
    provided = set().union(*(PROVIDES[name] for name in required))
    assert runtime_imports() <= provided, runtime_imports() - provided
    unused = {name for name in required - INDIRECT if not PROVIDES[name] & runtime_imports()}
    assert not unused, f"required but never imported: {unused}"
