"""The perf script runs end to end at toy size and reports every ratio it promises."""

import argparse
import math

from benchmarks import perf


def test_fw_suite_reports_all_ratios(capsys):
    args = argparse.Namespace(length=4, batch=2, hidden=3, chunk=2, repeats=1, compile_repeats=1)
    rows = perf.fw_benchmarks(args)
    assert [r["metric"][:3] for r in rows] == ["(a)", "(a)", "(a)", "(b)", "(c)"]
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "Machine:" in out and "K=64 / K=2" in out
