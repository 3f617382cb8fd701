"""The experiment runner (benchmarks/run.py, benchmarks/registry/tasks.py): every registered (task,
method) pair trains end to end on toy data, resumes exactly (from the previous checkpoint when
the latest is damaged), extends, stops loudly on divergence, trains seeds in one program, and
bad input is refused before any file."""

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from benchmarks import run
from benchmarks.registry import configs
from benchmarks.registry.configs import get_config
from benchmarks.registry.methods import METHODS
from benchmarks.registry.tasks import TASKS
from benchmarks.training import train as train_module
from benchmarks.training.data import Dataset, add_gaussian_noise
from benchmarks.training.stopping import Diverged, Stopped

from tests import ROOT

T, F = 8, 2
_CACHE_OPTIONS = {
    "jax_compilation_cache_dir": None,
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
}


@pytest.fixture(autouse=True, scope="module")
def _compile_once(tmp_path_factory):
    """Twin tasks (HAR-2 / Noisy-HAR-2) and resumed runs compile identical programs: compile
    time is most of a toy run, so this module caches XLA programs on disk while it runs."""
    saved = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
    options = {**_CACHE_OPTIONS, "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla"))}
    for name, value in options.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def toy_dataset(task: str, n_train: int = 24, n_test: int = 10) -> Dataset:
    """A learnable toy set shaped like the task's data: the label is the sign of a sum."""
    rng = np.random.default_rng(0)
    classes = 10 if "mnist" in task else 2

    def split(n):
        x = rng.standard_normal((n, T, F)).astype(np.float32)
        score = x[:, :, 0].sum(axis=1)
        y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
        return x, y.astype(np.int32)

    (x, y), (xt, yt) = split(n_train), split(n_test)
    noise = add_gaussian_noise(0.5) if task == "noisy_har2" else None
    card = {"name": f"toy-{task}", "source": "tests", "sizes": {"train": n_train, "test": n_test}}
    return Dataset(f"toy-{task}", x, y, xt, yt, classes, card, noise)


def toy_config(task: str, method: str, **kwargs):
    """Toy sizes: hidden 3, T = 8, chunks of 4, batch 4, one epoch with two evaluations.

    ``unroll=1`` and one IndRNN layer keep XLA's compile time (most of a toy run) short.
    """
    sizes = {"hidden": 3, "batch_size": 4, "eval_batch_size": 6, "unroll": 1}
    if task == "adding":
        sizes |= {"length": T, "steps": 4, "eval_every": 2, "test_size": 10}
    else:
        sizes |= {"epochs": 1, "evals_per_epoch": 2, "chunk_length": 4}
        sizes |= {"train_size": None, "test_size": None, "lr_decay_epochs": (1,)}
    if method.startswith("indrnn"):
        sizes["depth"] = 1
    if METHODS[method].frank_wolfe:
        kwargs.setdefault("K", 2 if method in ("fw", "tbptt_fw") else 1)
    return get_config(task, method, "cpu", **{**sizes, **kwargs})


PAIRS = [(task, method) for task in TASKS for method in configs.task_methods(task)]


@pytest.mark.parametrize(("task", "method"), PAIRS)
def test_every_pair_trains_evaluates_and_writes_its_files(task, method, tmp_path):
    config = toy_config(task, method)
    dataset = None if task == "adding" else toy_dataset(task)
    summary = run.run_experiment(config, tmp_path, dataset=dataset, progress=False)
    summary_path, curves_path, ckpt = run.run_files(config, tmp_path)
    assert json.loads(summary_path.read_text()) == json.loads(json.dumps(summary))
    records = [json.loads(line) for line in curves_path.read_text().splitlines()]
    assert [r["step"] for r in records][0] == 0 and len(records) == 3
    assert records[-1]["step"] == summary["steps"] and summary["steps"] > 0
    assert all(np.isfinite(r["test_loss"]) for r in records)
    assert summary["final"]["train_loss"] > 0
    if task != "adding":
        assert 0.0 <= summary["final"]["test_accuracy"] <= 1.0
        assert records[-1]["epoch"] == pytest.approx(1.0, abs=0.5)
    assert summary["grad_evals"] > 0 and summary["wall_time_s"] > 0
    assert summary["machine"]["backend"] and summary["machine"]["cpu"]
    assert any(ckpt.iterdir())


class _Killed(Exception):
    pass


@pytest.mark.parametrize(
    ("task", "method", "flavour"),
    [("noisy_har2", "fw_bn", "authors"), ("adding", "fw", "alg1"), ("har2", "tbptt_fw", "authors")],
)
def test_resumed_run_ends_where_an_uninterrupted_one_does(task, method, flavour, tmp_path):
    config = toy_config(task, method, flavour=flavour)
    dataset = None if task == "adding" else toy_dataset(task)
    whole = run.run_experiment(config, tmp_path / "a", dataset=dataset, progress=False)

    def kill_after_first_evaluation(record):
        if record["step"] > 0:
            raise _Killed

    with pytest.raises(_Killed):
        run.run_experiment(
            config,
            tmp_path / "b",
            dataset=dataset,
            progress=False,
            checkpoint_every_s=0.0,
            on_record=kill_after_first_evaluation,
        )
    summary_path, _, _ = run.run_files(config, tmp_path / "b")
    assert not summary_path.exists()
    resumed = run.run_experiment(config, tmp_path / "b", dataset=dataset, progress=False)
    for key in ("test_loss", "train_loss", "step", "grad_evals"):
        assert resumed["final"][key] == whole["final"][key]


def test_plan_counts_the_authors_k_batches_and_tbptt_updates():
    data = run.load_task_data(toy_config("har2", "fw", K=3), toy_dataset("har2"))
    plan = run.make_plan(toy_config("har2", "fw", K=3), data)
    # 24 examples / batch 4 = 6 batches per epoch = 2 outer steps of 3 batches.
    assert (plan.steps, plan.batches_per_step, plan.grad_evals_per_step) == (2, 3, 3.0)
    plan = run.make_plan(toy_config("har2", "tbptt"), data)
    # T = 8 in chunks of 4: two updates per batch, each half a sequence's gradient.
    assert (plan.steps, plan.updates_per_step, plan.grad_evals_per_step) == (6, 2, 1.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "mnist", "--method", "sgd"], "invalid choice: 'mnist'"),
        (["--task", "har2", "--method", "rmsprop"], "invalid choice: 'rmsprop'"),
        (["--task", "har2", "--method", "sgd", "--preset", "tpu"], "invalid choice: 'tpu'"),
        (["--task", "adding", "--method", "indrnn"], "does not fit task 'adding'"),
        (["--task", "har2", "--method", "adam", "--K", "5"], "Frank-Wolfe methods only"),
        (["--task", "har2", "--method", "all", "--K", "5"], "drop them with --method all"),
        (["--task", "har2", "--method", "fw", "--epochs", "0"], "epochs must be >= 1"),
        (["--task", "har2", "--method", "all", "--epochs", "0"], "epochs must be >= 1"),
        (["--task", "har2", "--method", "sgd", "--set", "hiden=3"], "unknown field 'hiden'"),
        (["--task", "har2", "--method", "sgd", "--set", "hidden=x"], "hidden must be int"),
        (["--task", "har2", "--method", "sgd", "--set", "dropout=2"], "dropout must be in"),
        (["--task", "har2", "--method", "sgd", "--set", "K=2"], "use --K"),
        (["--task", "har2", "--method", "sgd", "--epochs", "2", "--set", "epochs=3"], "twice"),
        (["--task", "har2", "--method", "sgd", "--seeds", "1", "1"], "must be distinct"),
        (["--task", "har2", "--method", "sgd", "--seed", "-1"], "seed must be >= 0"),
        (["--task", "har2", "--method", "sgd", "--seeds", "0", "-2"], "seed must be >= 0"),
        (["--task", "adding", "--method", "sgd", "--start-from", "/no/such"], "not a folder"),
        (["--task", "adding", "--method", "sgd", "--start-from", ".", "--restart"], "drop"),
    ],
)
def test_bad_command_line_exits_with_a_clear_error_and_writes_nothing(
    argv, message, tmp_path, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        run.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        run.main(["--task", "har2", "--method", "sgd", "--out", str(tmp_path / "file")])
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_exits_at_once_naming_the_run_and_the_command_to_continue(
    signum, status, monkeypatch, capsys, tmp_path
):
    calls = []

    def stopped(group, *args, **kwargs):
        calls.append(group[0].method)
        raise Stopped(6, signum)

    monkeypatch.setattr(run, "run_seeds", stopped)
    argv = ["--task", "adding", "--method", "sgd", "adam", "--no-progress", "--restart",
            "--out", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == status
    assert calls == ["sgd"]  # the second run does not start
    err = capsys.readouterr().err
    assert "STOPPED adding_T100 sgd_cpu_seed0" in err and f"by {signum.name} at step 6" in err
    # The same command continues it, less --restart (which would start over).
    assert "continue with: python -m benchmarks.run --task adding --method sgd adam " in err
    assert "--restart" not in err.split("continue with:")[1]


def test_continue_command_drops_restart_and_start_from():
    argv = ["--task", "har2", "--start-from", "old", "--method", "fw", "--restart", "--K", "5"]
    assert run.continue_command(argv) == ("python -m benchmarks.run --task har2 --method fw --K 5")
    assert run.continue_command(["--start-from=a b", "--set", "lr=1e-3"]) == (
        "python -m benchmarks.run --set lr=1e-3"
    )


@pytest.mark.parametrize(
    ("text", "interval"),
    [("90s", (90.0, None)), ("10m", (600.0, None)), ("1h", (3600.0, None)),
     ("0s", (0.0, None)), ("500steps", (0.0, 500)), ("1 step", (0.0, 1))],
)  # fmt: skip
def test_checkpoint_intervals_read_seconds_or_steps(text, interval):
    assert run.parse_interval(text) == interval


@pytest.mark.parametrize("text", ["90", "-5s", "0steps", "2.5steps", "fast", "infs", "s"])
def test_a_bad_checkpoint_interval_is_refused_naming_it(text, capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--task", "har2", "--method", "sgd", f"--checkpoint-every={text}"])
    assert f"{text!r} is not an interval" in capsys.readouterr().err


def test_runs_go_to_runs_by_default_and_results_only_when_named():
    args, _ = run.parse_args(["--task", "har2", "--method", "sgd"])
    assert args.out == Path("runs")
    ignored = subprocess.run(["git", "check-ignore", "-q", "runs/har2/x.json"], cwd=ROOT)
    assert ignored.returncode == 0


def test_a_finished_run_is_not_replaced_by_other_settings_or_a_smaller_budget(tmp_path, capsys):
    config = toy_config("adding", "sgd", steps=4)
    first = run.run_experiment(config, tmp_path, progress=False)
    summary_path, curves_path, _ = run.run_files(config, tmp_path)
    kept = summary_path.read_text(), curves_path.read_text()
    for other in (dataclasses.replace(config, steps=2), dataclasses.replace(config, unroll=2)):
        assert configs.run_name(other) == configs.run_name(config)  # the same files
        with pytest.raises(run.RunExists, match=r"holds a finished run with .*Nothing was"):
            run.run_experiment(other, tmp_path, progress=False)
        assert (summary_path.read_text(), curves_path.read_text()) == kept
    argv = ["--task", "adding", "--method", "sgd", "--set", "hidden=3", "length=8", "unroll=1",
            "batch_size=4", "eval_batch_size=6", "--steps", "2", "--eval-every", "2",
            "--test-size", "10", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit, match="REFUSED .* steps=4; this command asks for steps=2"):
        run.main(argv)
    assert (summary_path.read_text(), curves_path.read_text()) == kept
    # --restart replaces it; a larger budget extends it.
    assert run.run_experiment(dataclasses.replace(config, steps=2), tmp_path, progress=False,
                              restart=True)["steps"] == 2  # fmt: skip
    assert first["steps"] == 4


def test_curves_of_a_cut_run_with_no_checkpoint_are_not_trained_over(tmp_path):
    """A run cut where its checkpoints were lost (another machine, a fresh clone) left only
    its curves: the same command refuses to start it over on them."""
    config = toy_config("adding", "sgd", steps=4)
    run.run_experiment(config, tmp_path, progress=False)
    summary_path, curves_path, ckpt = run.run_files(config, tmp_path)
    summary_path.unlink()
    shutil.rmtree(ckpt)
    kept = curves_path.read_text()
    with pytest.raises(run.RunExists, match=r"cut at step 4, with no summary and no checkpoint"):
        run.run_experiment(config, tmp_path, progress=False)
    assert curves_path.read_text() == kept
    ckpt.mkdir()  # killed here before its first save: trained anew, to the same curves
    assert run.run_experiment(config, tmp_path, progress=False)["steps"] == 4
    steps = [json.loads(line)["step"] for line in curves_path.read_text().splitlines()]
    assert steps == [json.loads(line)["step"] for line in kept.splitlines()]
    shutil.rmtree(ckpt)
    summary_path.unlink()
    assert run.run_experiment(config, tmp_path, progress=False, restart=True)["steps"] == 4


def test_a_second_process_training_the_same_run_into_the_same_folder_is_refused(tmp_path):
    config = toy_config("adding", "sgd")
    with run._locked([config], tmp_path):  # what a first process holds while it trains
        with pytest.raises(run.RunLocked, match="is training in another process"):
            run.run_experiment(config, tmp_path, progress=False)
        summary_path, curves_path, ckpt = run.run_files(config, tmp_path)
        assert not summary_path.exists() and not curves_path.exists() and not ckpt.exists()
    # Released when the first ends: the run trains.
    assert run.run_experiment(config, tmp_path, progress=False)["status"] == "finished"


def test_method_all_expands_to_every_row_of_the_task():
    _, groups = run.parse_args(["--task", "noisy_har2", "--method", "all", "--seed", "4"])
    runs = [config for (config,) in groups]
    assert len(runs) == len(configs.table_for("noisy_har2", "cpu"))
    assert {r.method for r in runs} == set(TASKS["noisy_har2"].methods)
    assert {r.seed for r in runs} == {4}


def test_several_methods_ks_and_seeds_make_one_group_per_configuration():
    argv = ["--task", "adding", "--method", "sgd", "fw", "--K", "1", "5", "--seeds", "0", "3"]
    _, groups = run.parse_args(argv)
    assert [[configs.run_name(c) for c in g] for g in groups] == [
        ["sgd_cpu_seed0", "sgd_cpu_seed3"],
        ["fw_K1_authors_cpu_seed0", "fw_K1_authors_cpu_seed3"],
        ["fw_K5_authors_cpu_seed0", "fw_K5_authors_cpu_seed3"],
    ]


def test_an_accepted_override_changes_the_run_and_is_recorded(tmp_path):
    dataset = toy_dataset("har2")
    plain = run.run_experiment(toy_config("har2", "sgd"), tmp_path, dataset=dataset,
                               progress=False)  # fmt: skip
    config = toy_config("har2", "sgd", lr=0.5)
    changed = run.run_experiment(config, tmp_path, dataset=dataset, progress=False)
    assert changed["overrides"]["lr"] == 0.5 and changed["config"]["lr"] == 0.5
    assert "_lr0.5_" in changed["run"] and changed["run"] != plain["run"]
    assert changed["final"]["test_loss"] != plain["final"]["test_loss"]


def test_a_diverging_run_stops_with_the_step_and_loss_and_a_diverged_summary(tmp_path):
    config = toy_config("adding", "sgd", lr=1e4, steps=20, eval_every=2)
    with pytest.raises(Diverged, match=r"training loss is (nan|inf) at outer step \d+") as info:
        run.run_experiment(config, tmp_path, progress=False)
    assert configs.run_name(config) in str(info.value)
    summary_path, curves_path, _ = run.run_files(config, tmp_path)
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "diverged"
    assert summary["diverged"]["step"] == info.value.step <= 20
    records = [json.loads(line) for line in curves_path.read_text().splitlines()]
    assert all(np.isfinite(r["test_loss"]) for r in records)
    assert records[-1]["step"] < info.value.step


def test_skipping_nonfinite_updates_counts_them_and_keeps_training(tmp_path):
    """One poisoned training example: with 24 examples in 6 full batches it lies in exactly
    one batch per epoch, so each run skips exactly one update per epoch and ends finite."""
    dataset = toy_dataset("har2")
    dataset.x_train[5, 3, 0] = np.nan
    group = [toy_config("har2", "sgd", on_nonfinite="skip", epochs=2, seed=s) for s in (0, 1)]
    alone = run.run_experiment(group[0], tmp_path / "one", dataset=dataset, progress=False)
    together = run.run_seeds(group, tmp_path / "seeds", dataset=dataset, progress=False)
    for summary in (alone, *together):
        assert summary["status"] == "finished" and summary["skipped_updates"] == 2
        assert np.isfinite(summary["final"]["test_loss"])
        assert "_onnonfiniteskip_" in summary["run"]
    clean = run.run_experiment(group[0], tmp_path / "clean", dataset=toy_dataset("har2"),
                               progress=False)  # fmt: skip
    assert clean["skipped_updates"] == 0


def test_main_exits_with_status_one_naming_the_diverged_run(tmp_path, capsys):
    argv = ["--task", "adding", "--method", "sgd", "--set", "lr=1e4", "hidden=3", "length=8",
            "--steps", "20", "--eval-every", "2", "--test-size", "10", "--no-progress",
            "--out", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit, match="1 run"):
        run.main(argv)
    assert "DIVERGED" in capsys.readouterr().err


def _damage_latest_checkpoint(ckpt):
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    for path in (ckpt / str(steps[-1]) / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    return steps


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    config = toy_config("adding", "fw", flavour="alg1", steps=6, eval_every=2)
    whole = run.run_experiment(config, tmp_path / "a", progress=False)

    def kill_at_step_four(record):
        if record["step"] >= 4:
            raise _Killed

    with pytest.raises(_Killed):
        run.run_experiment(config, tmp_path / "b", progress=False, checkpoint_every_s=0.0,
                           on_record=kill_at_step_four)  # fmt: skip
    _, _, ckpt = run.run_files(config, tmp_path / "b")
    assert _damage_latest_checkpoint(ckpt) == [2, 4]
    with pytest.warns(UserWarning, match="checkpoint step 4 .* is unreadable"):
        resumed = run.run_experiment(config, tmp_path / "b", progress=False)
    for key in ("test_loss", "train_loss", "step", "grad_evals"):
        assert resumed["final"][key] == whole["final"][key]


def test_no_readable_checkpoint_is_a_clear_error_with_the_fix(tmp_path):
    config = toy_config("adding", "sgd")
    run.run_experiment(config, tmp_path, progress=False, checkpoint_every_s=0.0)
    _, _, ckpt = run.run_files(config, tmp_path)
    for step in _damage_latest_checkpoint(ckpt):
        for path in (ckpt / str(step) / "state").rglob("*"):
            if path.is_file():
                path.write_bytes(b"garbage")
    with (
        pytest.warns(UserWarning, match="unreadable"),
        pytest.raises(RuntimeError, match="no checkpoint .* is readable.*--restart"),
    ):  # extending the finished run needs its checkpoint
        run.run_experiment(dataclasses.replace(config, steps=8), tmp_path, progress=False)


@pytest.mark.parametrize(("task", "budget"), [("adding", "steps"), ("har2", "epochs")])
def test_extending_a_finished_run_equals_one_longer_run(task, budget, tmp_path):
    dataset = None if task == "adding" else toy_dataset(task)
    method, kwargs = ("fw", {"flavour": "alg1"}) if task == "adding" else ("adam", {})
    short, long = (4, 8) if budget == "steps" else (1, 2)
    longer = toy_config(task, method, **kwargs, **{budget: long})
    whole = run.run_experiment(longer, tmp_path / "a", dataset=dataset, progress=False)
    first = toy_config(task, method, **kwargs, **{budget: short})
    assert configs.run_name(first) == configs.run_name(longer)
    half = run.run_experiment(first, tmp_path / "b", dataset=dataset, progress=False)
    extended = run.run_experiment(longer, tmp_path / "b", dataset=dataset, progress=False)
    assert half["steps"] * 2 == extended["steps"] == whole["steps"]
    for key in ("test_loss", "train_loss", "step", "grad_evals"):
        assert extended["final"][key] == whole["final"][key]
    curves = [run.run_files(longer, out)[1] for out in (tmp_path / "a", tmp_path / "b")]
    steps = [[json.loads(line)["step"] for line in c.read_text().splitlines()] for c in curves]
    assert steps[0] == steps[1]
    # The shorter budget again would replace the longer run: refused before anything runs.
    with pytest.raises(run.RunExists, match=f"{budget}={long}; this command asks for {budget}="):
        run.run_experiment(first, tmp_path / "b", dataset=dataset, progress=False)
    # Without its summary (a run killed before it wrote one), the checkpoint refuses it.
    run.run_files(longer, tmp_path / "b")[0].unlink()
    with pytest.raises(ValueError, match="beyond the"):
        run.run_experiment(first, tmp_path / "b", dataset=dataset, progress=False)


def test_a_longer_run_started_from_another_folder_equals_one_longer_run(tmp_path, capsys):
    short = [toy_config("adding", "fw", flavour="alg1", steps=4, seed=s) for s in (0, 1)]
    longer = [dataclasses.replace(c, steps=8) for c in short]
    whole = run.run_seeds(longer, tmp_path / "whole", progress=False)
    run.run_seeds(short, tmp_path / "short", progress=False)
    # Nothing to start from (a fresh clone): it trains from step 0 and says so.
    fresh = run.run_seeds(longer, tmp_path / "new", progress=False, start_from=tmp_path / "none")
    assert "no checkpoint at" in capsys.readouterr().out
    assert [r["final"]["test_loss"] for r in fresh] == [r["final"]["test_loss"] for r in whole]
    assert "started_from" not in fresh[0]
    started = run.run_seeds(longer, tmp_path / "long", progress=False,
                            start_from=tmp_path / "short")  # fmt: skip
    assert "starts from" in capsys.readouterr().out
    for config, a, b in zip(longer, whole, started, strict=True):
        for key in ("test_loss", "train_loss", "step", "grad_evals"):
            assert a["final"][key] == b["final"][key]
        assert b["started_from"]["folder"] == str(tmp_path / "short")
        assert b["started_from"]["checkpoint_steps"][-1] == 4 and "started_from" not in a
        curves = [run.run_files(config, tmp_path / out)[1] for out in ("whole", "long")]
        for path in curves:  # the source's curves to step 4 carried over, then its own
            assert [json.loads(r)["step"] for r in path.read_text().splitlines()] == [0, 2, 4, 6, 8]
    # Extended again, it goes on from its own checkpoint (step 8), not the source's step 4.
    again = [dataclasses.replace(c, steps=10) for c in short]
    run.run_seeds(again, tmp_path / "long", progress=False, start_from=tmp_path / "short")
    assert "starts from" not in capsys.readouterr().out
    curves = run.run_files(again[0], tmp_path / "long")[1]
    assert [json.loads(r)["step"] for r in curves.read_text().splitlines()] == [0, 2, 4, 6, 8, 10]


def test_a_run_resumed_on_another_machine_says_where_each_step_ran(tmp_path, monkeypatch):
    from benchmarks import machine as machine_module
    from benchmarks import report
    from benchmarks.machine import describe, machine

    here = machine()
    other = {**here, "cpu": "Another CPU", "cores": 64}
    monkeypatch.setattr(machine_module, "machine", lambda: other)
    run.run_experiment(toy_config("adding", "sgd", steps=4), tmp_path, progress=False)
    # The same machine again: one stretch, nothing added to the summary.
    same = run.run_experiment(toy_config("adding", "sgd", steps=6), tmp_path, progress=False)
    assert "trained_on" not in same and same["machine"] == other
    monkeypatch.setattr(machine_module, "machine", lambda: here)
    summary = run.run_experiment(toy_config("adding", "sgd", steps=8), tmp_path, progress=False)
    assert summary["machine"] == here
    assert summary["trained_on"] == [
        {"machine": other, "from_step": 0, "to_step": 6},
        {"machine": here, "from_step": 6, "to_step": 8},
    ]
    cell = report._machine(json.loads(json.dumps(summary)))
    assert cell.startswith("Another CPU (64 cores)") and "(steps 0-6), then " in cell
    assert cell.endswith("(steps 6-8)")
    # Headers and figure titles list each machine once, without the steps.
    assert report._machines([summary, same]) == "; ".join(sorted({describe(here), describe(other)}))


def test_a_checkpoint_from_before_machines_were_recorded_resumes_as_not_recorded(
    tmp_path, monkeypatch
):
    import orbax.checkpoint as ocp

    from benchmarks import report
    from benchmarks.training import checkpoints

    def save_as_before(manager, checkpoints, state, step, wall, trained_on, diverged):
        meta = {**checkpoints.meta, "step": step, "wall_time_s": wall}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        manager.save(step, args=args)

    with monkeypatch.context() as patch:
        patch.setattr(checkpoints, "save", save_as_before)
        run.run_experiment(toy_config("adding", "sgd", steps=4), tmp_path, progress=False)
    summary = run.run_experiment(toy_config("adding", "sgd", steps=8), tmp_path, progress=False)
    assert summary["trained_on"] == [
        {"machine": None, "from_step": 0, "to_step": 4},
        {"machine": summary["machine"], "from_step": 4, "to_step": 8},
    ]
    assert report._machine(summary).startswith("a machine not recorded (steps 0-4), then ")


@pytest.mark.parametrize(("task", "method"), [("adding", "fw"), ("noisy_har2", "fw_bn")])
def test_seeds_in_one_program_equal_separate_runs(task, method, tmp_path):
    dataset = None if task == "adding" else toy_dataset(task)
    kwargs = {"flavour": "authors", "K": 2}
    group = [toy_config(task, method, seed=s, **kwargs) for s in (0, 1, 2)]
    together = run.run_seeds(group, tmp_path / "a", dataset=dataset, progress=False)
    for config, summary in zip(group, together, strict=True):
        alone = run.run_experiment(config, tmp_path / "b", dataset=dataset, progress=False)
        assert summary["run"] == alone["run"] and summary["seeds_in_program"] == [0, 1, 2]
        for key in ("test_loss", "train_loss", "grad_evals"):
            assert summary["final"][key] == pytest.approx(alone["final"][key], rel=1e-4)
    finals = [s["final"]["test_loss"] for s in together]
    assert len(set(finals)) == 3  # each seed its own run


def test_the_k_switch_protocol_runs_k1_then_k_and_is_named():
    config = toy_config("adding", "fw", flavour="authors", K=3, k1_steps=2)
    assert "_k1steps2_" in configs.run_name(config)
    import tempfile
    from pathlib import Path

    summary = run.run_experiment(config, Path(tempfile.mkdtemp()), progress=False)
    # 2 steps at K=1, then 2 at K=3 with the authors' 3 fresh batches each.
    assert summary["grad_evals"] == 2 * 1 + 2 * 3
    assert summary["batches"] == 2 * 1 + 2 * 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "sgd", "k1_steps": 2}, "needs an FW method"),
        ({"method": "fw", "K": 3, "k1_steps": 3}, "multiple of eval_every"),
        ({"method": "fw", "K": 3, "k1_steps": 4}, r"in 1..steps-1"),
        ({"method": "fw", "K": 1, "k1_steps": 2}, "K > 1"),
    ],
)
def test_bad_k_switch_is_refused(kwargs, match):
    method = kwargs.pop("method")
    with pytest.raises(ValueError, match=match):
        toy_config("adding", method, **kwargs)


def test_a_k_switch_on_a_task_counted_in_epochs_is_refused_by_name():
    with pytest.raises(ValueError, match="task 'har2' counts epochs, got k1_steps=40"):
        get_config("har2", "fw", "cpu", K=5, flavour="authors", k1_steps=40, steps=70)


def test_a_finished_run_is_not_trained_again_unless_restarted(tmp_path, monkeypatch, capsys):
    config = toy_config("adding", "fw", flavour="alg1", K=2)
    first = run.run_experiment(config, tmp_path, progress=False)
    summary_path, curves_path, _ = run.run_files(config, tmp_path)
    files = summary_path.read_text(), curves_path.read_text()

    def no_training(**kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train_module, "train", no_training)
    again = run.run_experiment(config, tmp_path, progress=False)
    assert again == json.loads(json.dumps(first))
    assert (summary_path.read_text(), curves_path.read_text()) == files
    assert "finished before (4 outer steps); not trained again" in capsys.readouterr().out
    # Another budget or setting is another run: it trains (here: extends, or starts).
    with pytest.raises(AssertionError, match="trained again"):
        run.run_experiment(dataclasses.replace(config, steps=8), tmp_path, progress=False)
    with pytest.raises(AssertionError, match="trained again"):
        run.run_experiment(config, tmp_path, progress=False, restart=True)


def test_a_summary_written_before_a_config_field_existed_counts_its_default(tmp_path, monkeypatch):
    config = toy_config("adding", "sgd")
    run.run_experiment(config, tmp_path, progress=False)
    summary_path = run.run_files(config, tmp_path)[0]
    summary = json.loads(summary_path.read_text())
    del summary["config"]["fw_mode"]  # as written before the field was added
    summary_path.write_text(json.dumps(summary))

    def no_training(**kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train_module, "train", no_training)
    run.run_experiment(config, tmp_path, progress=False)
    # Not the default: another run, which this one would replace: refused, naming the field.
    summary["config"]["fw_mode"] = "local"
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(run.RunExists, match="fw_mode='local'; this command asks for fw_mode="):
        run.run_experiment(config, tmp_path, progress=False)
    # A field Config no longer has: another run, refused too.
    del summary["config"]["fw_mode"]
    summary["config"]["retired_field"] = 1
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(run.RunExists, match="retired_field=1; this command asks for "):
        run.run_experiment(config, tmp_path, progress=False)
    monkeypatch.undo()
    assert run.run_experiment(config, tmp_path, progress=False, restart=True)["status"] == (
        "finished"
    )


def test_a_partial_last_batch_and_a_short_epoch_are_reported(tmp_path, capsys):
    # 26 examples in batches of 4: 6 batches a pass, the last 2 examples dropped; one
    # evaluation every 6 // 4 = 1 step of 4 per epoch: 4 of the 6 batches.
    config = toy_config("har2", "sgd", evals_per_epoch=4, epochs=2)
    run.run_experiment(config, tmp_path, dataset=toy_dataset("har2", n_train=26), progress=False)
    out = capsys.readouterr().out
    assert "--epochs 2 trains 1.33 passes over the data" in out
    assert "a pass is 6 batches of 4, 24 of the 26 training examples (the last 2 dropped" in out
    assert "an epoch here is 4 outer steps of 1 batch(es)" in out and "2 batch(es) short" in out
    # Whole passes: nothing to say.
    exact = toy_config("har2", "sgd", evals_per_epoch=2, epochs=1)
    run.run_experiment(exact, tmp_path / "exact", dataset=toy_dataset("har2"), progress=False)
    assert "passes over the data" not in capsys.readouterr().out


def test_data_dir_is_checked_and_reaches_the_loader(tmp_path, capsys):
    for argv, message in [
        (["--task", "adding", "--data-dir", str(tmp_path)], "the adding task generates its data"),
        (["--task", "har2", "--data-dir", str(tmp_path / "none")], "is not a folder"),
    ]:
        with pytest.raises(SystemExit):
            run.parse_args([*argv, "--method", "sgd"])
        assert message in capsys.readouterr().err
    # The folder reaches the HAR-2 loader, which reads the official files from it.
    args, ((config,),) = run.parse_args(["--task", "har2", "--method", "sgd", "--data-dir",
                                         str(tmp_path)])  # fmt: skip
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not a UCI HAR Dataset folder"):
        run.load_task_data(config, data_dir=args.data_dir)


def test_help_shows_the_defaults_and_every_set_field_with_its_type(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    assert "(default: cpu)" in flat and "(default: 0)" in flat and "(default runs/" in flat
    fields = text.split("--set fields")[1]
    for name, kind in [("lr", "float"), ("clip", "float | None"), ("hidden", "int")]:
        assert re.search(rf"^  {name} +{re.escape(kind)}$", fields, flags=re.M), name
    assert not re.search(r"^  seed ", fields, flags=re.M)  # a key of the run, not a --set


def test_help_answers_without_importing_jax():
    code = (
        "import sys\nfrom benchmarks import run\ntry:\n    run.parse_args(['--help'])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'orbax', 'scipy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
