"""
``bench/run.py --quick``: the benchmark works end to end -- the C generator builds, the payloads
are made, every server is driven, every figure is produced with zero loss (the reactor lag of
every server included), the turn figures of ``bench/turns.py`` (turn end -> first reply frame,
barge-in delay) are there, and the JSON, the Markdown tables and the PNG plot are written.  It
measures nothing: the full run does that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "bench" / "run.py"
SERVERS = ["txvoice", "txvoice-deflate", "autobahn-echo", "aiohttp-ingest", "c-limit"]
FIGURES = [
    "cpu_us_per_frame_opus",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "rss_per_session_kib",
    "max_sessions_p99_50ms",
    "max_sessions_p99_20ms",
    "reactor_lag_p50_ms",
    "reactor_lag_p99_ms",
]
TURN_FIGURES = ["explicit_end_to_first_frame_ms", "vad_end_to_first_frame_ms", "barge_in_ms"]


@pytest.mark.slow
def test_bench_quick(tmp_path: Path) -> None:
    cmd = [
        sys.executable, str(RUNNER), "--quick", "--servers", ",".join(SERVERS), "--out-dir", str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=str(ROOT))
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, f"bench --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"

    result = json.loads((tmp_path / "latest.json").read_text())
    assert not result["skipped"], result["skipped"]
    assert set(result["summary"]) == set(SERVERS)

    for name, s in result["summary"].items():
        for figure in FIGURES + [f"cpu_us_per_frame_{w}" for w in result["config"]["workloads"]]:
            assert s.get(figure) is not None, f"{name}: no {figure}"
        assert s["cpu_us_per_frame_opus"] > 0
        assert s["lost_total"] == 0, f"{name} lost frames"
        assert s["max_sessions_p99_50ms"] >= 0
        assert s["ladder_p99_ms"], f"{name}: no ladder point"
    for run in result["runs"]:
        assert "error" not in run, run.get("error")
        assert run["lost"] == 0, f"{run['server']} {run['workload']} N={run['sessions']} lost {run['lost']} frames"
        stolen = run.get("stolen") or {}
        assert stolen and all(0 <= v <= 1 for v in stolen.values()), f"no stolen time read: {stolen}"
        g = run["generator"]
        assert g["connected"] == run["sessions"] and g["frames_acked"] == g["frames_sent"] > 0
        if run["server"] == "txvoice-deflate":
            assert g["deflate_negotiated"] == run["sessions"], "permessage-deflate was not negotiated"
        if run["kind"] == "fixed":
            lag = run.get("reactor_lag") or {}
            assert lag.get("samples", 0) > 0, f"{run['server']} {run['workload']}: no reactor lag ({lag})"
            assert lag["p50_ms"] is not None and 0 <= lag["p50_ms"] <= lag["p99_ms"]

    turns = result["turns"]
    assert turns and not turns["problems"], turns and turns["problems"]
    assert turns["runs"], "no turn measurement"
    for r in turns["runs"]:
        assert "error" not in r, r["error"]
        for figure in TURN_FIGURES:
            v = r[figure]
            assert v["n"] >= 1 and 0 < v["p50"] <= v["max"], f"turns {r['codec']}: {figure} {v}"

    table = (tmp_path / "latest.md").read_text()
    for name in result["summary"]:
        assert f"| `{name}` |" in table
    assert "## Turns" in table and "barge-in" in table
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A guard against --quick growing into a real run (a ladder, more reps), not a timing test: about
    # 60 s on a quiet 2-core VM, twice that while other work shares the cores.
    assert result["elapsed_s"] < 180, f"the smoke run took {result['elapsed_s']} s (budget: 180 s)"
