"""benchmarks/perf/perf_seeds.py runs both ways side by side and finds them computing the same."""

from benchmarks.perf import perf_seeds


def test_quick_times_both_ways_and_they_agree(tmp_path):
    out = tmp_path / "perf_seeds.txt"
    (row,) = perf_seeds.main(["--quick", "--seeds", "2", "--devices", "1", "--out", str(out)])
    assert row["apart_s"] > 0 and row["together_s"] > 0
    assert row["speedup"] == row["apart_s"] / row["together_s"]
    assert row["diff"] < 1e-4
    text = out.read_text()
    assert (
        text.startswith("$ python -m benchmarks.perf.perf_seeds --quick") and "| toy adding" in text
    )


def test_gradient_mode_times_both_ways_for_each_recurrence():
    rows = perf_seeds.main(["--gradient", "--quick", "--seeds", "2"])
    assert [r["impl"] for r in rows] == ["fused", "flax"]
    assert all(r["apart_ms"] > 0 and r["together_ms"] > 0 for r in rows)
    # The vmap-ed call computes each seed's own gradient, the same as the separate calls.
    assert all(r["diff"] < 1e-5 for r in rows)


def test_tasks_filter_keeps_only_that_tasks_cases():
    assert perf_seeds.main(["--quick", "--seeds", "2", "--tasks", "har2"]) == []
