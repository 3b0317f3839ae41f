"""The `twistd txvoice` daemon as a user runs it."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from daemons import ROOT, TWISTD, source_env, start_daemon
from txvoice.config import config_table


def test_twistd_lists_the_plugin() -> None:
    out = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, timeout=60, cwd="/", env=source_env())
    assert out.returncode == 0
    assert "txvoice" in out.stdout


def test_txvoice_help_lists_the_options() -> None:
    out = subprocess.run([TWISTD, "txvoice", "--help"], capture_output=True, text=True, timeout=60, cwd="/", env=source_env())
    for option in ["--listen", "--path", "--max-connections", "--ping-interval", "--ping-timeout", "--compression"]:
        assert option in out.stdout


def test_bad_option_is_a_usage_error(tmp_path) -> None:
    out = subprocess.run([TWISTD, "-n", "--pidfile=", "txvoice", "--ping-interval", "soon"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path, env=source_env())
    assert out.returncode != 0
    assert "ping_interval" in (out.stdout + out.stderr) or "ping-interval" in (out.stdout + out.stderr)


def test_starts_serves_and_stops_on_sigterm(tmp_path) -> None:
    d = start_daemon(tmp_path, "--path", "/voice")
    try:
        with urllib.request.urlopen(d.http + "/health", timeout=5) as r:
            assert json.load(r)["status"] == "healthy"
        with connect(f"ws://127.0.0.1:{d.port}/voice", open_timeout=5) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "connect"
            # twistd re-raises the terminating signal once it has shut down cleanly.
            assert d.stop() in (0, -15)
            # The session was told why, and closed with 1001.
            assert json.loads(ws.recv(timeout=5))["data"]["reason"] == "server_shutdown"
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd.code == 1001
    finally:
        d.stop()
    log = d.log()
    assert "closing 1 sessions" in log and "txvoice stopped" in log and "Main loop terminated" in log
    assert "Traceback" not in log


def test_environment_configures_the_daemon(tmp_path) -> None:
    d = start_daemon(tmp_path, env={"TXVOICE_PATH": "/env-voice", "TXVOICE_MAX_CONNECTIONS": "1"})
    try:
        with connect(f"ws://127.0.0.1:{d.port}/env-voice", open_timeout=5) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "connect"
            with pytest.raises(Exception) as info:
                connect(f"ws://127.0.0.1:{d.port}/env-voice", open_timeout=5)
            assert "503" in str(info.value)
    finally:
        d.stop()


def test_documented_configuration_table_is_current() -> None:
    doc = (ROOT / "doc" / "configuration.md").read_text()
    assert config_table() in doc, "regenerate with: twistd txvoice --settings-table"


def test_config_file_then_environment_then_options(tmp_path) -> None:
    config = tmp_path / "txvoice.toml"
    config.write_text('[txvoice]\npath = "/from-file"\nmax-connections = 7\nping_interval = 20\n')
    d = start_daemon(tmp_path, "--config", str(config), "--ping-interval", "15",
                     env={"TXVOICE_MAX_CONNECTIONS": "9"})
    try:
        with connect(f"ws://127.0.0.1:{d.port}/from-file", open_timeout=5) as ws:
            greeting = json.loads(ws.recv(timeout=5))["data"]
        assert greeting["heartbeat"]["ping_interval"] == 15.0  # option beats file
    finally:
        d.stop()
    from txvoice.config import VoiceConfig

    cfg = VoiceConfig.from_env({"TXVOICE_MAX_CONNECTIONS": "9"}, base=VoiceConfig.from_file(str(config)))
    assert (cfg.path, cfg.max_connections, cfg.ping_interval) == ("/from-file", 9, 20.0)


def test_bad_config_file_is_a_usage_error(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('max_connections = "lots"\n')
    out = subprocess.run([TWISTD, "-n", "--pidfile=", "txvoice", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path, env=source_env())
    assert out.returncode != 0 and "max_connections must be int" in (out.stdout + out.stderr)


#: Start-up tuning the daemon applies by default: (option that turns it off, what it logs).
START_UP_TUNING = [
    ("--no-gc-freeze", "start-up objects out of the garbage collector's full collections"),  # service/heap.py
    ("--no-lean-poll", "lean epoll dispatch installed"),  # service/poll.py
]


def test_start_up_tuning_is_on_by_default_and_each_option_turns_its_part_off(tmp_path) -> None:
    """start_daemon returns once /health answers, i.e. after the services started."""
    (tmp_path / "default").mkdir()
    default = start_daemon(tmp_path / "default")
    default.stop()
    for off, logged in START_UP_TUNING:
        assert logged in default.log(), f"not applied by default: {logged!r}"
        (tmp_path / off).mkdir()
        daemon = start_daemon(tmp_path / off, off)
        daemon.stop()
        assert logged not in daemon.log(), f"{off} did not turn it off"
        assert all(other in daemon.log() for flag, other in START_UP_TUNING if flag != off), f"{off} turned off more"
