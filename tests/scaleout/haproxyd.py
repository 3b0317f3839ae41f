"""A real HAProxy running examples/haproxy.cfg (the file doc/operations.md shows) on loopback."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from daemons import ROOT, free_port

CONFIG = ROOT / "examples" / "haproxy.cfg"
#: The address HAProxy connects to the nodes from (so that XFF trust is tested: clients are 127.0.0.1).
SOURCE = "127.0.0.2"


@dataclass
class HAProxy:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def node_via(lb: HAProxy, cookie: str | None) -> str | None:
    request = urllib.request.Request(f"{lb.http}/health")
    if cookie:
        request.add_header("cookie", f"TXVOICE_NODE={cookie}")
    import json

    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())["node_id"]


def start_haproxy(tmp_path: Path, node_ports: list[int], timeout: float = 15.0) -> HAProxy:
    binary = shutil.which("haproxy")
    if binary is None:
        raise RuntimeError("haproxy is not installed: run scripts/test.sh once (it apt-installs haproxy)")
    port = free_port()
    env = {"TXVOICE_LB_BIND": f"127.0.0.1:{port}", "TXVOICE_LB_SOURCE": SOURCE,
           **{f"TXVOICE_NODE{i}": f"127.0.0.1:{p}" for i, p in enumerate(node_ports)}, "PATH": "/usr/sbin:/usr/bin:/bin"}
    log_path = tmp_path / f"haproxy-{port}.log"
    out = open(log_path, "wb")
    proc = subprocess.Popen([binary, "-f", str(CONFIG), "-db"], env=env, stdout=out, stderr=subprocess.STDOUT)
    lb = HAProxy(proc, port, log_path)
    deadline = time.monotonic() + timeout
    names = [f"n{i}" for i in range(len(node_ports))]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited {proc.returncode}: {log_path.read_text()}")
        try:
            if [node_via(lb, n) for n in names] == names:
                return lb
        except OSError:
            pass
        time.sleep(0.2)
    lb.stop()
    raise RuntimeError(f"haproxy did not route to every node within {timeout}s: {log_path.read_text()}")
