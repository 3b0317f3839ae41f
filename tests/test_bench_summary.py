"""How ``bench/run.py`` turns ladder runs into max N, including runs discarded for a saturated generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchscripts import loaded



@pytest.fixture(scope="module")
def bench():
    yield from loaded("run.py", "txvoice_bench_run")


def step(rep: int, n: int, *, passed: bool = True, discarded: bool = False, p99: float = 10.0) -> dict:
    return {"server": "txvoice", "kind": "ladder", "workload": "opus", "rep": rep, "sessions": n,
            "passed": passed and not discarded, "passed_strict": passed and p99 < 20, "discarded": discarded,
            "p99_ms": p99}


def plan(bench, runs: list[dict], reps: int = 3):
    opts = bench.Options(duration=10, warmup=2, drain=3, quick=False)
    return bench.Plan(servers=["txvoice"], workloads=["opus"], reps=reps, fixed_n=50, ladder=[50, 75, 100, 125],
                      opts=opts, runs=runs)


def test_a_discarded_run_whose_retry_measured_does_not_end_the_ladder(bench) -> None:
    runs = [step(0, 50), step(0, 75, discarded=True), step(0, 75), step(0, 100), step(0, 125, passed=False, p99=80)]
    s = bench.summarize(plan(bench, runs, reps=1))["txvoice"]
    assert s["max_sessions_p99_50ms"] == 100
    assert s["ladder_reps_measured"] == 1 and s["ladder_reps_bound"] == 0 and not s["ladder_generator_bound"]


def test_repetitions_cut_short_by_the_generator_are_left_out_of_the_median(bench) -> None:
    runs = [
        step(0, 50), step(0, 75, discarded=True), step(0, 75, discarded=True), step(0, 75, discarded=True),
        step(1, 50), step(1, 75), step(1, 100), step(1, 125, passed=False, p99=70),
        step(2, 50), step(2, 75), step(2, 100, passed=False, p99=60),
    ]
    s = bench.summarize(plan(bench, runs))["txvoice"]
    assert s["max_sessions_p99_50ms"] == pytest.approx(87.5)  # median of 100 and 75, not of 50, 100, 75
    assert (s["ladder_reps_measured"], s["ladder_reps_bound"], s["ladder_generator_bound"]) == (2, 1, False)


def test_only_lower_bounds_are_reported_as_such(bench, tmp_path: Path) -> None:
    runs = [step(0, 50), step(0, 75, discarded=True), step(0, 75, discarded=True), step(0, 75, discarded=True)]
    s = bench.summarize(plan(bench, runs, reps=1))["txvoice"]
    assert s["max_sessions_p99_50ms"] == 50 and s["ladder_generator_bound"]


def test_resummarize_rebuilds_the_table_from_saved_runs(bench, tmp_path: Path) -> None:
    runs = [step(1, 50), step(1, 75), step(1, 100, passed=False, p99=60),
            step(0, 50), step(0, 75, discarded=True), step(0, 75, discarded=True), step(0, 75, discarded=True)]
    saved = {
        "config": {"servers": ["txvoice"], "workloads": ["opus"], "reps": 2, "duration_s": 10, "fixed_n": 50,
                   "ladder": [50, 75, 100], "quick": False, "p99_limit_ms": 50, "p99_strict_ms": 20,
                   "server_cpu": 0, "generator_cpu": 1, "warmup_s": 2, "drain_s": 3, "frame_ms": 20,
                   "slip_limit_ms": 2.0, "generator_cpu_limit": 0.9},
        "environment": {"date": "2026-11-21T13:00:59+0000", "cpu": "test", "machine": "test"},
        "reference": "txvoice", "skipped": {}, "summary": {}, "turns": None, "runs": runs,
    }
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved), encoding="utf-8")
    assert bench.resummarize(str(path), str(tmp_path / "out")) == 0
    result = json.loads((tmp_path / "out" / "latest.json").read_text(encoding="utf-8"))
    assert result["summary"]["txvoice"]["max_sessions_p99_50ms"] == 75
    assert "75 (1 of 2 reps)" in (tmp_path / "out" / "latest.md").read_text(encoding="utf-8")
    assert (tmp_path / "out" / "latest.png").stat().st_size > 1000


STAT_BEFORE = """cpu  300 0 100 1000 0 0 0 60 0 0
cpu0 100 0 50 500 0 0 0 10 0 0
cpu1 200 0 50 500 0 0 0 50 0 0
intr 12345
"""
STAT_AFTER = """cpu  500 0 200 1100 0 0 0 260 0 0
cpu0 180 0 90 520 0 0 0 20 0 0
cpu1 220 0 60 580 0 0 0 150 0 0
"""


def test_stolen_time_is_read_per_core_from_proc_stat(bench) -> None:
    before = bench.parse_cpu_ticks(STAT_BEFORE, ("0", "1"))
    after = bench.parse_cpu_ticks(STAT_AFTER, ("0", "1"))
    assert before == {"0": (10, 660), "1": (50, 800)}
    # cpu0: 10 of 150 ticks stolen; cpu1: 100 of 210.
    assert bench.stolen_share(before, after) == {"0": round(10 / 150, 3), "1": round(100 / 210, 3)}
    assert bench.stolen_share(before, {}) == {}
    stolen, total = bench.cpu_ticks(("0",))["0"]  # the real /proc/stat parses (Linux always has a cpu0)
    assert 0 <= stolen < total


def test_the_table_says_how_much_was_stolen_in_discarded_and_kept_runs(bench, tmp_path: Path) -> None:
    runs = [dict(step(0, 50), stolen={"server_cpu": 0.01, "generator_cpu": 0.02}),
            dict(step(0, 75, discarded=True), stolen={"server_cpu": 0.10, "generator_cpu": 0.25}),
            dict(step(0, 75), stolen={"server_cpu": 0.0, "generator_cpu": 0.0}),
            dict(step(0, 100, passed=False, p99=70), stolen={"server_cpu": 0.02, "generator_cpu": 0.04})]
    sentence = bench.stolen_sentence(runs)
    assert "25.0% of the generator's and 10.0% of the server's in the discarded runs" in sentence
    assert "2.0% and 1.0% in the runs kept" in sentence
    assert bench.stolen_sentence([step(0, 50)]) == ""  # records saved before the field existed


def test_with_only_lower_bounds_the_largest_is_reported(bench) -> None:
    """Each cut-short repetition passed every step up to its bound; the best of them was shown."""
    cut = [step(0, 50, discarded=True)] * 3
    runs = cut + [step(1, 50), step(1, 75, discarded=True), step(1, 75, discarded=True), step(1, 75, discarded=True)]
    runs += [step(2, 50), step(2, 75), step(2, 100, discarded=True), step(2, 100, discarded=True),
             step(2, 100, discarded=True)]
    s = bench.summarize(plan(bench, runs))["txvoice"]
    assert s["max_sessions_p99_50ms"] == 75 and s["ladder_generator_bound"]  # not the median, 50
    assert (s["ladder_reps_measured"], s["ladder_reps_bound"]) == (0, 3)


def test_the_audio_floor_is_set_beside_the_echo_and_what_is_left_for_the_rest(bench) -> None:
    at = {"txvoice": {"50": 90.0, "150": 60.0}, "autobahn-echo": {"50": 70.0, "150": 40.0}}
    result = {
        "config": {"fixed_n": 50, "cpu_ns": [150]},
        "reference": "txvoice",
        "summary": {name: {"at_n": {k: {"cpu_us_per_frame": v} for k, v in cpu.items()}} for name, cpu in at.items()},
        "floor": bench.floor_summary([
            {"passes": 3, "decode_us": 26.0, "audio_us": 30.0, "silk_decode_us": 15.0},
            {"passes": 3, "decode_us": 25.0, "audio_us": 28.0, "silk_decode_us": 16.0},
        ]),
    }
    assert (result["floor"]["decode_us"], result["floor"]["audio_us"], result["floor"]["silk_decode_us"]) == (25.0, 28.0, 15.0)
    text = " ".join(bench.floor_lines(result))
    assert "decode to 16 kHz 25.0 µs/frame" in text and "(decode, webrtcvad, the spectral gate) 28.0 µs/frame" in text
    assert "0.40× / 0.70× of `autobahn-echo`'s whole CPU per frame at N=50 / 150" in text
    assert "would have 42.0 / 12.0 µs per frame left" in text and "it spends 62.0 / 32.0 on them" in text
    assert "caps Opus at wideband decodes in 15.0" in text


def test_an_audio_floor_that_failed_says_why_and_none_says_nothing(bench) -> None:
    result = {"config": {"fixed_n": 50}, "reference": "txvoice", "summary": {},
              "floor": bench.floor_summary([{"error": "ImportError: no libopus"}])}
    assert bench.floor_lines(result) == ["", "Audio work alone: not measured (ImportError: no libopus)."]
    assert bench.floor_lines({"config": {"fixed_n": 50}, "reference": "txvoice", "summary": {}}) == []


@pytest.fixture(scope="module")
def floor():
    yield from loaded("floor.py", "txvoice_bench_floor")


def test_the_audio_floor_measures_the_payload(floor, tmp_path: Path) -> None:
    """bench/floor.py on a short payload of real Opus packets: every figure measured (the VM's noise allows no order)."""
    import numpy as np

    from txvoice.audio.codecs.opus import OpusEncoder
    from txvoice.audio.format import AudioFormat

    t = np.arange(48000 * 2) / 48000.0
    pcm = (8000 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.int16)
    enc = OpusEncoder(AudioFormat.validated(codec="opus", sample_rate=48000, channels=1), bitrate=24000)
    packets = enc.encode(pcm)
    raw = tmp_path / "pcm48k.frames"
    opus = tmp_path / "opus48k.frames"
    opus.write_bytes(b"".join(len(p).to_bytes(4, "little") + p for p in packets))
    frames = [pcm[i:i + 960].tobytes() for i in range(0, len(pcm), 960)]
    raw.write_bytes(b"".join(len(f).to_bytes(4, "little") + f for f in frames))
    got = floor.measure(opus, raw, passes=1, batch=2)
    assert got["frames"] == len(packets) == 100
    assert got["decode_us"] > 0 and got["audio_us"] > 0 and got["silk_decode_us"] > 0
