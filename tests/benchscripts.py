"""The bench/ scripts as modules for their tests, and a generator stalled the way those tests stall it."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Iterator

BENCH = Path(__file__).resolve().parent.parent / "bench"


def loaded(script: str, name: str) -> Iterator[ModuleType]:
    """bench/``script`` imported as module ``name`` for as long as the caller (a fixture) holds it."""
    spec = importlib.util.spec_from_file_location(name, BENCH / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        del sys.modules[name]


def stall_once_sending(gen: subprocess.Popen, after: float = 0.8, stall: float = 0.3) -> None:
    """Once the generator says it sends, let it run ``after`` seconds, then stop it for ``stall`` seconds."""
    assert gen.stderr is not None
    for line in gen.stderr:
        if line.startswith("PHASE send"):
            break
    time.sleep(after)
    os.kill(gen.pid, signal.SIGSTOP)
    time.sleep(stall)
    os.kill(gen.pid, signal.SIGCONT)
