"""Fast unit tests of the Autobahn harness's pattern and verdict logic (synthetic reports only).

Nothing here needs Python 2.7 or a server; the real run is tests/test_autobahn.py.
"""

from __future__ import annotations


import pytest



from wstest_loader import harness

h = harness()

# A synthetic universe shaped like autobahntestsuite's (1.1.1-1.1.8, 6.4.1-4, 12.1.1-18, ...).
UNIVERSE = (
    [f"1.1.{i}" for i in range(1, 9)]
    + [f"6.4.{i}" for i in range(1, 5)]
    + [f"9.1.{i}" for i in range(1, 7)]
    + [f"{g}.{s}.{i}" for g in (12, 13) for s in (1, 2) for i in range(1, 19)]
    + ["10.1.1"]
)


def ok(behavior="OK", close="OK", code=1000):
    return {"behavior": behavior, "behaviorClose": close, "remoteCloseCode": code,
            "duration": 1, "reportfile": "x.json"}


def test_all_ok_report_passes():
    ids = ["1.1.1", "1.1.2", "6.4.1"]
    assert h.check_report({i: ok() for i in ids}, ids) == []


def test_missing_case_fails():
    failures = h.check_report({"1.1.1": ok()}, ["1.1.1", "1.1.2"])
    assert len(failures) == 1 and "1.1.2" in failures[0] and "missing" in failures[0]


def test_empty_report_fails_every_case():
    # What wstest writes ({}) when the server is unreachable.
    failures = h.check_report({}, ["1.1.1", "1.1.2"])
    assert len(failures) == 2


def test_failed_behavior_fails():
    failures = h.check_report({"1.1.1": ok(), "1.1.2": ok("FAILED")}, ["1.1.1", "1.1.2"])
    assert len(failures) == 1 and "1.1.2" in failures[0] and "FAILED" in failures[0]


@pytest.mark.parametrize("close", ["FAILED", "WRONG CODE", "UNCLEAN", "FAILED BY CLIENT"])
def test_bad_behavior_close_fails(close):
    failures = h.check_report({"7.1.1": ok(close=close)}, ["7.1.1"])
    assert len(failures) == 1 and close in failures[0]


@pytest.mark.parametrize("behavior", ["UNIMPLEMENTED", "WRONG CODE", "NO_CLOSE", None])
def test_other_behaviors_fail(behavior):
    assert h.check_report({"12.1.1": ok(behavior)}, ["12.1.1"]) != []


def test_non_strict_and_informational_pass():
    report = {"6.4.1": ok("NON-STRICT"), "7.1.6": ok("INFORMATIONAL", "INFORMATIONAL"),
              "1.1.1": ok(close="INFORMATIONAL")}
    assert h.check_report(report, list(report)) == []


def test_unexpected_extra_case_fails():
    failures = h.check_report({"1.1.1": ok(), "1.1.2": ok()}, ["1.1.1"])
    assert failures == ["1.1.2: in the report but not expected"]


def test_nothing_expected_fails():
    assert h.check_report({}, []) != []


def test_patterns_need_universe():
    with pytest.raises(ValueError):
        h.check_report({}, ["1.*"])


def test_patterns_resolved_against_universe_detect_missing():
    expected = h.select_cases(UNIVERSE, ["1.*"])
    report = {i: ok() for i in expected[:-1]}
    failures = h.check_report(report, ["1.*"], universe=UNIVERSE)
    assert failures == ["1.1.8: missing from the report"]


def test_pattern_is_anchored_at_start_only():
    # wstest semantics: "12.*.1" also selects 12.1.10-18; "$" stops that.
    loose = h.select_cases(UNIVERSE, ["12.*.1"])
    assert "12.1.10" in loose and "12.1.18" in loose
    strict = h.select_cases(UNIVERSE, ["12.*.1$"])
    assert strict == ["12.1.1", "12.2.1"]
    assert "12.1.10" not in strict


def test_quick_set_selects_subcases_1_to_6_of_compression_groups():
    quick = h.select_cases(UNIVERSE, h.case_patterns("quick"))
    compression = [c for c in quick if c.split(".")[0] in ("12", "13")]
    assert compression == [f"{g}.{s}.{i}" for g in (12, 13) for s in (1, 2) for i in range(1, 7)]
    assert {"1.1.1", "6.4.4", "9.1.6", "10.1.1"} <= set(quick)


def test_full_set_selects_everything_in_numeric_order():
    full = h.select_cases(UNIVERSE, h.case_patterns("full"))
    assert full == sorted(UNIVERSE, key=h.case_id_key)
    assert full.index("9.1.1") < full.index("10.1.1") < full.index("12.1.1")


def test_dot_is_literal_and_one_does_not_match_ten():
    assert h.select_cases(UNIVERSE, ["1.*"]) == [f"1.1.{i}" for i in range(1, 9)]
    assert "10.1.1" not in h.select_cases(UNIVERSE, ["1.*"])


def test_exclude_and_literal_ids():
    assert h.select_cases(UNIVERSE, ["6.4.*"], exclude=["6.4.2"]) == ["6.4.1", "6.4.3", "6.4.4"]
    assert h.select_cases(UNIVERSE, ["10.1.1", "1.1.1"]) == ["1.1.1", "10.1.1"]
    with pytest.raises(ValueError):
        h.select_cases(UNIVERSE, ["99.1.1"])


def test_unknown_set_name():
    with pytest.raises(ValueError):
        h.case_patterns("medium")


def test_summary_counts_by_behavior():
    report = {"1.1.1": ok(), "1.1.2": ok(), "6.4.1": ok("NON-STRICT"), "9.1.1": ok("FAILED", "UNCLEAN")}
    s = h.summarize(report)
    assert s == {"total": 4,
                 "behavior": {"OK": 2, "NON-STRICT": 1, "FAILED": 1},
                 "behaviorClose": {"OK": 3, "UNCLEAN": 1}}
    assert h.format_summary(report).startswith("4 cases; behavior: FAILED=1 NON-STRICT=1 OK=2")


def test_missing_python27_gives_clear_error(monkeypatch):
    monkeypatch.setenv(h.ENV_PYTHON27, "/nonexistent/python2.7")
    with pytest.raises(h.HarnessError, match="Python 2.7"):
        h.find_python27()


def test_no_python27_anywhere_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(h.ENV_PYTHON27, raising=False)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))  # no versions/2.7* there
    monkeypatch.setenv("PATH", str(tmp_path))  # no python2.7 / python2 / pyenv either
    with pytest.raises(h.HarnessError, match="pyenv install 2.7.18"):
        h.find_python27()


def test_print_verdict_exit_codes_and_failures(capsys):
    expected = ["1.1.1", "1.1.2"]
    assert h.print_verdict({"1.1.1": ok(), "1.1.2": ok()}, expected, 1.0, "/tmp/r") == 0
    assert "all 2 cases passed" in capsys.readouterr().out
    assert h.print_verdict({"1.1.1": ok(behavior="FAILED")}, expected, 1.0, "/tmp/r") == 1
    out = capsys.readouterr().out
    assert out.count("FAIL ") >= 2 and "FAILED: 2 problem(s) among 2 expected cases" in out
