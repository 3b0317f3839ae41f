"""The Autobahn testsuite's fuzzingserver (``wstest -m fuzzingserver``) against the txvoice client stack.

The client under test is ``python -m txvoice.client.testee``: the voice client's own protocol
and factory classes with an echoing handler (the fuzzingserver expects every message echoed).
The quick set (cases 1-7, 9, 10 and sub-cases 1-6 of every 12.x/13.x compression group) runs in
the normal test command; every case must be OK, NON-STRICT or INFORMATIONAL, and none missing.
A missing Python 2.7 fails the test (it never skips).  See tests/autobahn/README.md.

Environment:
  TXVOICE_AUTOBAHN_SET=full          all 517 cases (about 17 minutes here) instead of the quick set
  TXVOICE_AUTOBAHN_REPORT_DIR=DIR    keep the report (index.html) there
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.autobahn, pytest.mark.slow]

RUN_TIMEOUTS = {"quick": 900.0, "full": 3600.0}
MAX_LISTED_FAILURES = 80




from wstest_loader import load  # noqa: E402

fz = load("fuzzingserver.py", "txvoice_fuzzingserver_harness")
h = fz.h


@pytest.fixture
def wstest() -> Path:
    """The wstest executable (builds the Python 2.7 env on first use; never skips)."""
    try:
        return h.ensure_wstest()
    except h.HarnessError as exc:
        pytest.fail(f"cannot set up the Autobahn testsuite: {exc}", pytrace=False)


def test_autobahn_fuzzingserver_against_the_client(wstest: Path, tmp_path: Path) -> None:
    set_name = os.environ.get("TXVOICE_AUTOBAHN_SET", "quick")
    patterns = h.case_patterns(set_name)
    outdir = Path(os.environ.get("TXVOICE_AUTOBAHN_REPORT_DIR") or tmp_path / "report")
    expected = h.expected_case_ids(patterns, wstest=wstest)  # as wstest resolves them
    assert h.select_cases(h.all_case_ids(wstest), patterns) == expected, "harness pattern logic drifted from wstest"

    try:
        report, elapsed = fz.run_fuzzingserver(patterns, outdir, timeout=RUN_TIMEOUTS[set_name], wstest=wstest)
    except h.HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)
    summary = f"autobahn client {set_name}: {h.format_summary(report)} in {elapsed:.0f}s; report {outdir}"
    print(summary)
    failures = h.check_report(report, expected)
    if failures:
        shown = failures[:MAX_LISTED_FAILURES]
        if len(failures) > len(shown):
            shown.append(f"... and {len(failures) - len(shown)} more")
        client_log = outdir / "client.log"
        pytest.fail(f"{len(failures)} Autobahn problem(s) among {len(expected)} cases:\n" + "\n".join(shown)
                    + f"\n{summary}\n--- client log ---\n{h._log_tail(client_log)}", pytrace=False)
