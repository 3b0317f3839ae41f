"""
Run real Node clients (npm's ``ws`` and ``socket.io-client``) against a daemon.

The packages are installed once into a cache outside the tree (``~/.cache/txvoice-node``, or
``TXVOICE_NODE_CACHE``) with npm; a machine without node/npm fails loudly (``scripts/setup-env.sh
test`` installs them).  Scripts are ES modules written into that cache, so ``import`` finds the
packages there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("TXVOICE_NODE_CACHE", Path.home() / ".cache" / "txvoice-node"))
PACKAGES = ("ws@8", "socket.io-client@4")
HERE = Path(__file__).resolve().parent / "node"

#: Before a seed snippet: its free JWT_TOKEN, console.log as one JSON line, a bounded run.
PRELUDE = """const JWT_TOKEN = process.env.JWT_TOKEN;
const __log = console.log;
console.log = (...args) => __log(JSON.stringify(args));
setTimeout(() => process.exit(0), Number(process.env.RUN_MS || 2000));
"""


def node_cache() -> Path:
    """The cache with ``ws`` and ``socket.io-client`` installed (installing them if missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the seed's Node clients: run scripts/setup-env.sh test "
                    "(apt-get install nodejs npm)")
    wanted = [p.rsplit("@", 1)[0] for p in PACKAGES]
    if not all((CACHE / "node_modules" / name / "package.json").exists() for name in wanted):
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", *PACKAGES],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.fail(f"npm install {' '.join(PACKAGES)} failed:\n{done.stdout}\n{done.stderr}")
    return CACHE


def seed_script(name: str, port: int, epilogue: str = "") -> str:
    """A seed snippet (``tests/node/<name>``, verbatim from the seed) aimed at ``port``: only its URL changes."""
    snippet = (HERE / name).read_text()
    return PRELUDE + snippet.replace("localhost:5000", f"127.0.0.1:{port}") + epilogue


def run_node(script: str, env: dict[str, str] | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``script`` (an ES module) with node; the result's stdout/stderr as text."""
    cache = node_cache()
    scripts = cache / "scripts"
    scripts.mkdir(exist_ok=True)
    path = scripts / f"txvoice-{uuid.uuid4().hex}.mjs"
    path.write_text(script)
    try:
        return subprocess.run(["node", str(path)], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
    finally:
        path.unlink(missing_ok=True)


def start_node(script: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    """Start ``script`` in the background (stop it with ``proc.kill()`` and unlink the path)."""
    cache = node_cache()
    (cache / "scripts").mkdir(exist_ok=True)
    path = cache / "scripts" / f"txvoice-{uuid.uuid4().hex}.mjs"
    path.write_text(script)
    proc = subprocess.Popen(["node", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    return proc, path


def json_lines(stdout: str) -> list:
    """The script's console.log calls (each a JSON array of its arguments)."""
    out = []
    for line in stdout.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
