"""The adding problem's generator and the main job (a preset of the runner)."""

import jax
import numpy as np
import pytest

from benchmarks import adding, run
from benchmarks.machine import describe
from benchmarks.training.data.adding import PLATEAU_MSE, adding_batch


def test_batch_shapes_markers_and_targets():
    x, y = adding_batch(jax.random.key(0), batch_size=64, length=20)
    assert x.shape == (64, 20, 2) and y.shape == (64, 1)
    assert x.dtype == y.dtype == np.float32
    marker = np.asarray(x[..., 1])
    np.testing.assert_array_equal(marker.sum(1), 2.0)
    assert np.all(marker[:, :10].sum(1) == 1) and np.all(marker[:, 10:].sum(1) == 1)
    np.testing.assert_allclose(np.sum(x[..., 0] * marker, axis=1, keepdims=True), y, rtol=1e-6)


def test_batch_is_a_function_of_the_key():
    a = adding_batch(jax.random.key(1), 4, 10)
    b = adding_batch(jax.random.key(1), 4, 10)
    c = adding_batch(jax.random.key(2), 4, 10)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_predicting_one_sits_on_the_plateau():
    _, y = adding_batch(jax.random.key(3), 20000, 30)
    np.testing.assert_allclose(np.mean((np.asarray(y) - 1.0) ** 2), PLATEAU_MSE, rtol=0.03)


@pytest.mark.parametrize("kwargs", [{"length": 1}, {"batch_size": 0}])
def test_bad_sizes_are_named(kwargs):
    args = {"batch_size": 2, "length": 5} | kwargs
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        adding_batch(jax.random.key(0), **args)


TINY = ["--length", "8", "--steps", "20", "--eval-every", "10", "--test-size", "16"]
TINY += ["--set", "hidden=4", "batch_size=4", "--no-progress", "--devices", "1"]


def test_main_job_runs_every_method_and_writes_the_report_table_and_figure(tmp_path):
    summaries = adding.main([*TINY, "--K", "1", "3", "--out", str(tmp_path)])
    names = [s["run"] for s in summaries]
    tag = "batchsize4_evalevery10_hidden4_testsize16"
    assert names == [
        f"sgd_{tag}_cpu_seed0",
        f"sgd_clip_{tag}_cpu_seed0",
        f"adam_{tag}_cpu_seed0",
        f"fw_K1_alg1_{tag}_cpu_seed0",
        f"fw_K3_alg1_{tag}_cpu_seed0",
    ]
    by_name = {s["run"]: s for s in summaries}
    assert by_name[f"fw_K3_alg1_{tag}_cpu_seed0"]["grad_evals"] == 60
    assert by_name[f"sgd_{tag}_cpu_seed0"]["grad_evals"] == 20
    folder = tmp_path / "adding_T8"
    for name in names:  # the runner's own files
        assert (folder / f"{name}.json").is_file() and (folder / f"{name}.jsonl").is_file()
    table = (folder / "comparison_cpu_seed0.md").read_text()
    assert "| fw K=3 alg1 batch_size=4 eval_every=10 hidden=4 test_size=16 |" in table
    assert describe(summaries[0]["machine"]) in table
    assert (folder / "comparison_cpu_seed0.png").stat().st_size > 10_000


def test_the_preset_and_the_runner_compute_the_same_numbers(tmp_path):
    preset = adding.main([*TINY, "--method", "fw", "--K", "3", "--out", str(tmp_path / "a")])
    argv = ["--task", "adding", "--method", "fw", "--K", "3", "--flavour", "alg1", *TINY]
    runner = run.main([*argv, "--out", str(tmp_path / "b")])
    assert [s["run"] for s in preset] == [s["run"] for s in runner]
    assert preset[0]["final"]["test_loss"] == runner[0]["final"]["test_loss"]
    assert preset[0]["config"] == runner[0]["config"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "25", "--eval-every", "10"], "multiple"),
        (["--K", "0"], "K must be an int >= 1"),
        (["--length", "0"], "length must be >= 1"),
        (["--set", "hiden=3"], "unknown field 'hiden'"),
    ],
)
def test_bad_flags_are_rejected_before_anything_runs(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        adding.main([*argv, "--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
