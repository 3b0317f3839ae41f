"""``bench/bench_ab.py`` starts bench/run.py's own servers: the variants' command lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchscripts import loaded


@pytest.fixture(scope="module")
def ab():
    yield from loaded("bench_ab.py", "txvoice_bench_ab")


def test_variants_are_run_py_servers_with_extra_arguments(ab) -> None:
    plain = ab.spec("txvoice", None)
    assert plain is ab.run.SERVERS["txvoice"]
    hop = ab.spec("txvoice:--audio-inline-max 0", None)
    assert hop.command(19000, 50) == [*plain.command(19000, 50), "--audio-inline-max", "0"]
    assert hop.env(50) == plain.env(50) and hop.mode == "ack" and hop.greeting
    echo = ab.spec("echo", None)
    assert echo.mode == "echo" and not echo.greeting and "autobahn_echo.py" in " ".join(echo.command(19000, 50))


def test_the_baseline_runs_from_its_tree(ab) -> None:
    tree = str(Path(__file__).resolve().parent.parent)
    base = ab.spec("base:--audio-inline-max 64", tree)
    assert base.env(10)["PYTHONPATH"] == tree
    assert base.command(19000, 10)[-2:] == ["--audio-inline-max", "64"]


@pytest.mark.parametrize("variant, tree, said", [
    ("nginx", None, "unknown variant"),
    ("base", None, "needs --baseline-tree"),
    ("echo:--x", None, "takes no arguments"),
])
def test_a_variant_it_cannot_run_is_a_usage_error(ab, variant: str, tree: str | None, said: str) -> None:
    with pytest.raises(SystemExit, match=said):
        ab.spec(variant, tree)
