"""The adding problem's generator and the main job's command line."""

import json

import jax
import numpy as np
import pytest

from benchmarks import adding
from benchmarks.data.adding import PLATEAU_MSE, adding_batch
from benchmarks.machine import describe


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


def test_main_job_writes_curves_table_and_figure(tmp_path):
    report = adding.main(
        [
            "--length",
            "8",
            "--steps",
            "20",
            "--eval-every",
            "10",
            "--hidden",
            "4",
            "--batch",
            "4",
            "--test-size",
            "16",
            "--K",
            "1",
            "3",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert list(report["runs"]) == ["SGD", "SGD+clip", "Adam", "FW K=1", "FW K=3"]
    assert report["runs"]["FW K=3"]["grad_evals"] == 60
    assert report["runs"]["SGD"]["grad_evals"] == 20
    saved = json.loads((tmp_path / "T8_seed0.json").read_text())
    assert len(saved["runs"]["Adam"]["eval_curve"]) == 3  # step 0, 10, 20
    table = (tmp_path / "T8_seed0.md").read_text()
    assert "| FW K=3 |" in table and describe(report["machine"]) in table
    assert report["machine"]["cores"] >= 1
    assert (tmp_path / "T8_seed0.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "25", "--eval-every", "10"], "multiple"),
        (["--K", "0"], "--K"),
        (["--length", "0"], "--length"),
    ],
)
def test_bad_flags_are_rejected(argv, message, capsys):
    with pytest.raises(SystemExit):
        adding.parse_args(argv)
    assert message in capsys.readouterr().err
