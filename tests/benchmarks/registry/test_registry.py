"""benchmarks/README.md's promise: a method or a task is one registry entry, and then runs
from the command line end to end."""

import json
import re

import pytest

from benchmarks import run
from benchmarks.registry import configs
from benchmarks.registry.methods import METHODS
from benchmarks.registry.tasks import TASKS

from tests import ROOT

README = (ROOT / "benchmarks" / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.fixture
def registered():
    """The README's two snippets run; the registries are restored afterwards."""
    methods, tasks = dict(METHODS), dict(TASKS)
    for snippet in SNIPPETS:
        exec(compile(snippet, "benchmarks/README.md", "exec"), {})
    yield
    METHODS.clear(), METHODS.update(methods)
    TASKS.clear(), TASKS.update(tasks)


def test_the_readme_has_one_method_and_one_task_example():
    assert len(SNIPPETS) == 2
    assert "METHODS[" in SNIPPETS[0] and "TASKS[" in SNIPPETS[1]


def test_a_registered_method_fits_the_tasks_it_names_and_trains(registered, tmp_path):
    assert "nesterov" in configs.task_methods("har2")
    assert "nesterov" not in configs.task_methods("pixel_mnist")
    argv = ["--task", "adding", "--method", "nesterov", "--length", "8", "--steps", "4"]
    argv += ["--eval-every", "2", "--test-size", "10", "--set", "hidden=3", "batch_size=4"]
    (summary,) = run.main([*argv, "--no-progress", "--devices", "1", "--out", str(tmp_path)])
    assert summary["run"].startswith("nesterov_") and summary["status"] == "finished"
    assert summary["final"]["test_loss"] > 0


def test_a_registered_task_runs_every_method_it_lists(registered, tmp_path):
    summaries = run.main(
        [
            "--task",
            "parity",
            "--method",
            "all",
            "--set",
            "hidden=4",
            "epochs=1",
            "--no-progress",
            "--devices",
            "1",
            "--out",
            str(tmp_path),
        ]  # fmt: skip
    )
    assert {s["method"] for s in summaries} == {"sgd", "adam", "fw"}  # nesterov names others
    for summary in summaries:
        assert 0.0 <= summary["final"]["test_accuracy"] <= 1.0
        saved = json.loads((tmp_path / "parity" / f"{summary['run']}.json").read_text())
        assert saved["title"] == "Parity"
