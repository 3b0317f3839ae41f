"""``txvoice-client URL FILE.wav`` against the real daemon (echo pipeline), with espeak-ng speech made at test time."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from daemons import free_port, source_env
from signal_speech import silence, speak, write_wav
from txvoice.client.cli import main

pytestmark = pytest.mark.slow

SENTENCE = "Hello, this is the voice client speaking."


def cli(*args: str, cwd: Path, timeout: float = 60.0) -> tuple[subprocess.CompletedProcess, float]:
    """Run the console command from this working tree (``python -m``: the same ``main`` the entry point names)."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "txvoice.client.cli", *args], env=source_env(), cwd=str(cwd),
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def wav_info(path: Path) -> tuple[int, int, float]:
    with wave.open(str(path), "rb") as w:
        return w.getframerate(), w.getnchannels(), w.getnframes() / w.getframerate()


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A spoken sentence as a 16 kHz WAV in a temporary directory (never in the tree)."""
    pcm = np.concatenate([silence(200), speak(SENTENCE, 16000), silence(700)])
    path = write_wav(tmp_path_factory.mktemp("speech") / "spoken.wav", pcm, 16000)
    return path, len(pcm) / 16000


def test_streams_pcm_push_to_talk_and_saves_the_echo(daemon, spoken, tmp_path: Path) -> None:
    wav, seconds = spoken
    out = tmp_path / "reply.wav"
    proc, elapsed = cli(daemon.url, str(wav), "--codec", "pcm", "--mode", "push_to_talk", "--out", str(out),
                        cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"connected to {daemon.url}")
    assert any(line.startswith("[vad] speech_start") for line in lines)
    assert any(line.startswith("[turn] 1 ends (explicit)") for line in lines)
    assert any(line.startswith("[response] resp_") and "complete" in line for line in lines)
    assert f"saved reply to {out}" in proc.stdout
    assert "sent " in proc.stderr and "(100%)" in proc.stderr  # progress
    rate, channels, reply_seconds = wav_info(out)
    assert (rate, channels) == (16000, 1)
    assert 0.95 * seconds <= reply_seconds <= 1.05 * seconds  # the echo of the whole turn
    assert elapsed >= seconds  # paced: real time, not as fast as possible


def test_streams_opus_with_voice_activity_as_json(daemon, spoken, tmp_path: Path) -> None:
    wav, seconds = spoken
    out = tmp_path / "reply-opus.wav"
    proc, _ = cli(daemon.url, str(wav), "--codec", "opus", "--mode", "voice_activity", "--json", "--speed", "2",
                  "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [r["type"] for r in records]
    assert kinds[0] == "connected" and kinds[1] == "stream" and kinds[-1] == "result"
    assert records[1]["format"]["codec"] == "opus"
    events = [r.get("event_type") for r in records if r["type"] == "event"]
    assert "turn_start" in events and "turn_end" in events and "vad" in events
    assert "progress" in kinds and "response" in kinds and "response_end" in kinds
    result = records[-1]
    assert result["complete"] is True and result["responses"] >= 1 and result["reply_wav"] == str(out)
    rate, channels, reply_seconds = wav_info(out)
    assert rate == 16000 and channels == 1
    assert 0.5 * seconds <= reply_seconds <= 1.05 * seconds  # the voiced turn, decoded from Opus
    assert abs(result["reply_ms"] / 1000 - reply_seconds) < 0.01


def test_failures_exit_non_zero(spoken, tmp_path: Path) -> None:
    wav, _ = spoken
    proc, _ = cli(f"ws://127.0.0.1:{free_port()}/", str(wav), "--retries", "0", cwd=tmp_path)
    assert proc.returncode == 1 and "cannot connect" in proc.stderr
    proc, _ = cli("ws://127.0.0.1:9/", str(tmp_path / "missing.wav"), cwd=tmp_path)
    assert proc.returncode == 1 and "cannot read" in proc.stderr
    with pytest.raises(SystemExit) as usage:
        main(["ws://127.0.0.1:9/"])  # no file: argparse's usage error, status 2
    assert usage.value.code == 2


def test_the_console_script_is_declared() -> None:
    """The installed distribution declares ``txvoice-client`` (pyproject.toml's [project.scripts])."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="txvoice-client")
    assert script.value == "txvoice.client.cli:main"
    assert script.load() is main
