"""A real ``redis-server`` of the test's own on a free loopback port (no persistence)."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemons import free_port


def redis_binary() -> str:
    """The redis-server binary; fails loudly (scripts/setup-env.sh test installs it)."""
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is not installed: run scripts/test.sh once (it apt-installs redis-server)")
    return path


@dataclass
class RedisServer:
    """One ``redis-server`` we started, stoppable and restartable on the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    password: str | None = None
    #: (certificate, key) PEM files: the server speaks TLS only, on ``port`` (rediss://).
    tls: tuple[Path, Path] | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--logfile", str(self.workdir / f"redis-{self.port}.log")]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            cert, key = self.tls
            args[1:3] = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            try:
                if self.cli("PING").strip() == "PONG":
                    return self
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def cli(self, *args: str) -> str:
        cmd = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            cmd += ["--tls", "--cacert", str(self.tls[0])]
        if self.password:
            cmd += ["--no-auth-warning", "-a", self.password]
        return subprocess.run(cmd + list(args), check=True, capture_output=True, text=True, timeout=10).stdout

    def commandstats(self) -> dict[str, int]:
        """Calls per command so far (INFO commandstats), e.g. {'set': 3}."""
        stats: dict[str, int] = {}
        for line in self.cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[len("cmdstat_"):].split(":", 1)
                stats[name] = int(rest.split(",")[0].split("=")[1])
        return stats

    def total_commands(self) -> int:
        for line in self.cli("INFO", "stats").splitlines():
            if line.startswith("total_commands_processed:"):
                return int(line.split(":")[1])
        raise RuntimeError("no total_commands_processed in INFO")

    def stop(self) -> None:
        """SIGTERM and wait (a stop that Redis notices at once: its clients see the connection close)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.proc = None
