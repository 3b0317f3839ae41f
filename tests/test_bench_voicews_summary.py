"""How ``bench/bench_voicews.py`` turns its runs into medians, ratios and its table (no daemon: rows as it records them)."""

from __future__ import annotations

import pytest

from benchscripts import loaded


@pytest.fixture(scope="module")
def voicews():
    yield from loaded("bench_voicews.py", "txvoice_bench_voicews")


def row(endpoint: str, rep: int, cpu: float, *, codec: str = "opus", n: int = 50, counted: bool = True,
        stolen: float = 0.0, lost: int | None = 0) -> dict:
    return {"endpoint": endpoint, "codec": codec, "sessions": n, "rep": rep, "counted": counted,
            "cpu_us_per_frame_sent": cpu, "p50_ms": 1.0, "p99_ms": 4.0, "lost": lost, "turns_per_session": 3.0,
            "reactor_lag_p99_ms": 2.0, "stolen_server": stolen, "stolen_generator": 0.0, "others_cores": 0.1}


def test_medians_leave_out_runs_not_counted_and_ratios_pair_each_repetition(voicews) -> None:
    rows = [row("native", 0, 100.0), row("voicews", 0, 120.0),
            row("native", 1, 110.0), row("voicews", 1, 121.0),
            row("native", 2, 300.0, counted=False, stolen=0.4),  # a disturbed attempt, run again
            row("native", 2, 90.0), row("voicews", 2, 117.0, lost=2)]
    s = voicews.summarize(rows)
    assert s["native/opus@50"]["runs"] == 3 and s["native/opus@50"]["cpu_us_per_frame"] == 100.0
    assert s["voicews/opus@50"]["cpu_us_per_frame"] == 120.0 and s["voicews/opus@50"]["lost_total"] == 2
    assert s["ratio/opus@50"] == 1.2
    # Paired within a repetition; the uncounted attempt is not paired (rep 2 pairs 117 with 90).
    assert s["paired_ratios/opus@50"] == [1.2, 1.1, 1.3]
    assert s["native/opus@50"]["stolen_max"] == 0.0


def test_codecs_and_sizes_each_get_their_rows_and_a_missing_endpoint_no_ratio(voicews) -> None:
    rows = [row("native", 0, 100.0, codec="pcm48k"), row("voicews", 0, 150.0, codec="pcm48k"),
            row("native", 0, 80.0, n=150)]
    s = voicews.summarize(rows)
    assert list(s)[:4] == ["native/pcm48k@50", "voicews/pcm48k@50", "ratio/pcm48k@50", "paired_ratios/pcm48k@50"]
    assert s["ratio/opus@150"] is None and s["paired_ratios/opus@150"] == []
    table = voicews.markdown(s, rows)
    lines = table.splitlines()
    assert lines[0].startswith("| codec | N | endpoint |")
    assert "| pcm48k | 50 | `voicews` | 150.0 (150.0) | 1.50× (per rep: 1.50) |" in table
    assert "| opus | 150 | `native` | 80.0 (80.0) | 1.00× |" in table
    assert sum(1 for line in lines if line.startswith("| opus") or line.startswith("| pcm48k")) == 3
    assert "Other processes on the two cores: 0.10-0.10 cores" in table
