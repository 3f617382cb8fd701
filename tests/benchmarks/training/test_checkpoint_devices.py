"""A training checkpoint written on 4 devices restores on 2 and on 1 (and back): orbax saves
the one train-state pytree as it is laid out, and restores it as the new run lays it out.

A process has the CPU devices it started with, so each device count runs in a fresh process
(``tests.worker.run_worker``); they share one checkpoint folder and print the restored state.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from tests.worker import run_worker

_WORKER = textwrap.dedent(
    """
    import json
    from pathlib import Path
    from benchmarks.training import parallel
    parallel.use_cpu_devices({devices})
    import jax, numpy as np, optax
    import fw_optax
    from benchmarks.training.checkpoints import Checkpoints
    from benchmarks.training.train import train
    from tests.benchmarks.training.test_train import PARAMS, _host_stream, _regression

    tx = optax.chain(fw_optax.frank_wolfe(2, 0.1), optax.adam(0.05))
    mesh = parallel.training_mesh(None, 8)
    params, _, result = train(
        objective=_regression(), tx=tx, params=PARAMS, stream=_host_stream(),
        steps={steps}, eval_every=2, seed=3, progress=False, mesh=mesh,
        checkpoints=Checkpoints(Path({folder!r}), 0.0, {{"run": "devices"}}),
    )
    out = {{
        "devices": 1 if mesh is None else mesh.size,
        "params": {{k: np.asarray(v).tolist() for k, v in params.items()}},
        "sharding": str(getattr(params["w"], "sharding", None)),
        "test_loss": result.records[-1]["test_loss"],
        "first_step": result.records[0]["step"],
    }}
    print("RESULT " + json.dumps(out))
    """
)


def _run(devices: int, steps: int, folder) -> dict:
    code = _WORKER.format(devices=devices, steps=steps, folder=str(folder))
    # The worker inherits the session's XLA flags (tests/conftest.py).
    return run_worker(code, {}, drop=("JAX_NUM_CPU_DEVICES",))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ckpt")
    out = {"written": _run(4, 4, folder / "run")}
    # Same budget: nothing to train, the restored state comes back as it is.
    out["on2"] = _run(2, 4, folder / "run")
    out["on1"] = _run(1, 4, folder / "run")
    # Extended on 2 devices, against an uninterrupted 4-device run of the longer budget.
    out["extended"] = _run(2, 6, folder / "run")
    out["whole"] = _run(4, 6, folder / "whole")
    return out


def test_the_writer_trained_on_four_devices(runs):
    assert runs["written"]["devices"] == 4 and "NamedSharding" in runs["written"]["sharding"]


@pytest.mark.parametrize("where", ["on2", "on1"])
def test_restored_parameters_are_identical_on_fewer_devices(runs, where):
    restored, written = runs[where], runs["written"]
    assert restored["devices"] == {"on2": 2, "on1": 1}[where]
    for name, value in written["params"].items():
        np.testing.assert_array_equal(restored["params"][name], value)
    assert restored["test_loss"] == written["test_loss"]


def test_a_run_extended_on_other_devices_continues_the_same_trajectory(runs):
    extended, whole = runs["extended"], runs["whole"]
    for name, value in whole["params"].items():
        np.testing.assert_allclose(extended["params"][name], value, rtol=1e-5, atol=1e-6)
    assert extended["first_step"] == 4  # it resumed there (no curves file to read back)
