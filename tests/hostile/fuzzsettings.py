"""
How long the fuzzers run: bounded for CI (~2 minutes for the whole of tests/hostile's fuzzing),
longer on the benchmark machine with ``TXVOICE_HOSTILE_LONG=1`` (or ``TXVOICE_FUZZ_SCALE=<factor>``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG = os.environ.get("TXVOICE_HOSTILE_LONG") == "1"
SCALE = float(os.environ.get("TXVOICE_FUZZ_SCALE", "10" if LONG else "1"))


def fuzz_settings(examples: int, **kw) -> settings:
    """``examples`` in CI, ``SCALE`` times as many in the long mode; no per-example deadline."""
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=not LONG,  # CI is reproducible; the long mode explores
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        database=None,
        **kw,
    )
