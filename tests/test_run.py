"""The experiment runner (benchmarks/run.py, benchmarks/tasks.py): every (task, method) pair
trains end to end on toy data, resumes exactly, and bad input is refused before any file."""

import json

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from benchmarks import configs, run
from benchmarks.configs import get_config
from benchmarks.data import Dataset, add_gaussian_noise

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
    if method in configs.FW_METHODS:
        kwargs.setdefault("K", 2 if method in ("fw", "tbptt_fw") else 1)
    return get_config(task, method, "cpu", **sizes, **kwargs)


PAIRS = [(task, method) for task in configs.TASKS for method in configs.TASK_METHODS[task]]


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
    plan = run.plan(toy_config("har2", "fw", K=3), data)
    # 24 examples / batch 4 = 6 batches per epoch = 2 outer steps of 3 batches.
    assert (plan.steps, plan.batches_per_step, plan.grad_evals_per_step) == (2, 3, 3.0)
    plan = run.plan(toy_config("har2", "tbptt"), data)
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
        (["--task", "har2", "--method", "fw", "--epochs", "0"], "epochs must be an int >= 1"),
        (["--task", "har2", "--method", "all", "--epochs", "0"], "epochs must be an int >= 1"),
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


def test_method_all_expands_to_every_row_of_the_task():
    _, runs = run.parse_args(["--task", "noisy_har2", "--method", "all", "--seed", "4"])
    assert len(runs) == len(configs.table_for("noisy_har2", "cpu"))
    assert {r.method for r in runs} == set(configs.TASK_METHODS["noisy_har2"])
    assert {r.seed for r in runs} == {4}
