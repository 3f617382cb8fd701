"""benchmarks/training/summaries.py: every committed summary reads, and writes back as it
was; a summary with a field nobody knows or a status that contradicts it is refused."""

import json

import pytest

from benchmarks.training.summaries import RunSummary, is_summary, read_summary, write_summary

from tests import ROOT

COMMITTED = [
    p for p in sorted((ROOT / "results").rglob("*.json")) if is_summary(json.loads(p.read_text()))
]

DEFAULTED = {"status", "overrides", "devices", "title", "epochs", "time_per_epoch_s", "plan"}
"""Fields that older summaries lack and read as their defaults."""


def test_every_committed_summary_reads_and_writes_back_unchanged(tmp_path):
    assert len(COMMITTED) > 100
    for path in COMMITTED:
        record = json.loads(path.read_text())
        summary = read_summary(path)
        # A file keeps its own fields; one older than a field gains only that field's default.
        written = summary.to_json()
        assert {k: written[k] for k in record} == record, path
        assert set(written) - set(record) <= DEFAULTED, path
        write_summary(tmp_path / "again.json", summary)
        assert read_summary(tmp_path / "again.json") == summary


def _minimal(**changes):
    record = {"task": "adding", "method": "sgd", "run": "sgd_cpu_seed0", "config": {},
              "final": {"step": 4}, "machine": {}, "curves": "sgd_cpu_seed0.jsonl"}  # fmt: skip
    return {**record, **changes}


def test_a_field_nobody_knows_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown fields \['loss_of_the_day'\]"):
        RunSummary.from_json(_minimal(loss_of_the_day=1.0))


@pytest.mark.parametrize(
    "changes",
    [{"status": "diverged"}, {"diverged": {"step": 3}}, {"status": "stopped"}],
    ids=["diverged-without-where", "where-without-diverged", "unknown-status"],
)
def test_a_status_that_contradicts_the_summary_is_refused(changes):
    with pytest.raises(ValueError, match="status|diverged"):
        RunSummary.from_json(_minimal(**changes))


def test_other_json_files_are_no_summaries(tmp_path):
    (tmp_path / "env.json").write_text(json.dumps({"jax": "0.10.2"}))
    assert read_summary(tmp_path / "env.json") is None
    assert read_summary(tmp_path / "missing.json") is None
