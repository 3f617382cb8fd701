"""The one training loop (benchmarks/training/train.py): it learns, writes curves, and resumes
exactly."""

import dataclasses
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fw_optax
from benchmarks.training.checkpoints import Checkpoints
from benchmarks.training.data import add_gaussian_noise
from benchmarks.training.step import (
    Objective,
    Stream,
    TrainState,
    generated_batches,
    make_step,
    make_steps_fn,
)
from benchmarks.training.stopping import Stopped
from benchmarks.training.train import train, train_seeds

W_TRUE = np.array([1.0, -2.0, 0.5], np.float32)


def _regression(state_counter: bool = False) -> Objective:
    """Least squares on ``y = x @ W_TRUE``; the model state counts training calls."""

    def loss(params, state, batch, key):
        x, y = batch
        value = jnp.mean((x @ params["w"] + params["b"] - y) ** 2)
        if state_counter:
            state = {"calls": state["calls"] + 1}
        return value, state

    def evaluate(params, state, test):
        x, y = test
        return {"loss": jnp.mean((x @ params["w"] + params["b"] - y) ** 2)}

    x = np.random.default_rng(1).standard_normal((32, 3)).astype(np.float32)
    return Objective(loss, evaluate, test=(x, x @ W_TRUE))


def _host_stream(noise: float = 0.0) -> Stream:
    x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    transform = add_gaussian_noise(noise) if noise else None
    return Stream(arrays=(x, x @ W_TRUE), batch_size=8, transform=transform)


def _generated_stream() -> Stream:
    def generate(key):
        x = jax.random.normal(key, (8, 3))
        return x, x @ jnp.asarray(W_TRUE)

    return Stream(generate=generate)


PARAMS = {"w": jnp.zeros(3), "b": jnp.zeros(())}


def _train(stream, tx, *, steps=8, eval_every=2, **kwargs):
    kwargs.setdefault("objective", _regression())
    return train(
        tx=tx,
        params=PARAMS,
        stream=stream,
        steps=steps,
        eval_every=eval_every,
        seed=3,
        progress=False,
        **kwargs,
    )


@pytest.mark.parametrize("stream", [_host_stream(), _generated_stream()], ids=["host", "gen"])
def test_learns_and_writes_one_curve_record_per_evaluation(stream, tmp_path):
    curves = tmp_path / "run.jsonl"
    _, _, result = _train(stream, optax.sgd(0.1), steps=40, eval_every=10, curves=curves)
    records = [json.loads(line) for line in curves.read_text().splitlines()]
    assert records == result.records
    assert [r["step"] for r in records] == [0, 10, 20, 30, 40]
    assert records[-1]["test_loss"] < 0.05 * records[0]["test_loss"]
    assert records[0]["train_loss"] is None and records[-1]["train_loss"] > 0
    assert result.final_eval == records[-1]["test_loss"]


def test_costs_count_batches_updates_and_gradient_evaluations():
    tx = optax.chain(fw_optax.frank_wolfe(3, 0.1), optax.adam(0.01))
    _, _, result = _train(
        _host_stream(), tx, batches_per_step=3, updates_per_step=1, grad_evals_per_step=3
    )
    last = result.records[-1]
    assert (last["step"], last["batches"], last["grad_evals"], last["updates"]) == (8, 24, 24, 8)
    # 40 examples / batch 8 = 5 batches per epoch.
    np.testing.assert_allclose(last["epoch"], 24 / 5)


def test_fresh_inner_batches_change_the_result():
    """With K batches per step the inner FW gradients see other data than with one batch."""
    tx = optax.chain(fw_optax.frank_wolfe(3, 0.1, scope="leaf", cumulative=True), optax.sgd(0.1))
    one, _, _ = _train(_host_stream(), tx, batches_per_step=1)
    fresh, _, _ = _train(_host_stream(), tx, batches_per_step=3)
    assert not np.allclose(one["w"], fresh["w"])


def test_one_call_per_step_computes_the_same_as_one_call_per_interval():
    tx = optax.chain(fw_optax.frank_wolfe(2, 0.1), optax.sgd(0.1))
    scanned, _, _ = _train(_host_stream(), tx, batches_per_step=2, eval_every=4)
    stepped, _, _ = _train(_host_stream(), tx, batches_per_step=2, eval_every=4, steps_per_call=1)
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(stepped), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


class _Killed(Exception):
    pass


@pytest.mark.parametrize(
    "stream", [_host_stream(noise=0.3), _generated_stream()], ids=["host", "gen"]
)
def test_resume_after_a_kill_gives_the_uninterrupted_result(stream, tmp_path):
    tx = optax.chain(fw_optax.frank_wolfe(2, 0.1, scope="leaf", cumulative=True), optax.adam(0.05))
    kwargs = {"objective": _regression(state_counter=True), "batches_per_step": 2}
    state0 = {"calls": jnp.zeros((), jnp.int32)}
    whole, whole_state, whole_result = _train(
        stream, tx, model_state=state0, curves=tmp_path / "a.jsonl", **kwargs
    )

    def kill_at_step_4(record):
        if record["step"] == 4:
            raise _Killed

    ckpt = Checkpoints(tmp_path / "ckpt", every_s=0.0, meta={"run": "b"})
    with pytest.raises(_Killed):
        _train(
            stream, tx, model_state=state0, curves=tmp_path / "b.jsonl", checkpoints=ckpt,
            on_record=kill_at_step_4, **kwargs,
        )  # fmt: skip
    lines_at_kill = (tmp_path / "b.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines_at_kill] == [0, 2, 4]
    resumed, resumed_state, result = _train(
        stream, tx, model_state=state0, curves=tmp_path / "b.jsonl", checkpoints=ckpt, **kwargs
    )
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(resumed_state["calls"]) == int(whole_state["calls"]) == 8

    def strip(records):
        return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records]

    assert strip(result.records) == strip(whole_result.records)
    on_disk = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert strip(on_disk) == strip(whole_result.records)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_next_evaluated_step_and_the_run_continues_exactly(signum, tmp_path):
    """No timed save is due (every_s is huge): the only checkpoint is the one the signal
    (a scheduler's SIGTERM, or Ctrl-C) asks for."""
    tx = optax.adam(0.05)
    whole, _, _ = _train(_host_stream(), tx)
    before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]

    def signal_at_step_2(record):
        if record["step"] == 2:
            os.kill(os.getpid(), signum)

    ckpt = Checkpoints(tmp_path / "ckpt", every_s=1e9, meta={"run": "t"})
    curves = tmp_path / "t.jsonl"
    with pytest.raises(Stopped, match=f"by {signum.name} at step 4") as info:
        _train(_host_stream(), tx, curves=curves, checkpoints=ckpt, on_record=signal_at_step_2)
    assert (info.value.step, info.value.signum) == (4, signum)
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == before
    assert sorted(int(p.name) for p in ckpt.directory.iterdir() if p.name.isdigit()) == [4]
    assert [json.loads(line)["step"] for line in curves.read_text().splitlines()] == [0, 2, 4]
    resumed, _, result = _train(_host_stream(), tx, curves=curves, checkpoints=ckpt)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r["step"] for r in result.records] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize(("every_steps", "kept"), [(None, [8]), (4, [4, 8]), (2, [6, 8])])
def test_saves_come_every_so_many_steps_when_asked(every_steps, kept, tmp_path):
    """Evaluations every 2 of 8 steps, no timed save due; the last two saves are kept."""
    ckpt = Checkpoints(tmp_path / "ckpt", every_s=1e9, every_steps=every_steps, meta={"r": 1})
    _train(_host_stream(), optax.adam(0.05), checkpoints=ckpt)
    assert sorted(int(p.name) for p in ckpt.directory.iterdir() if p.name.isdigit()) == kept


def _quartic() -> Objective:
    """Least squares plus ``b**4``: from ``b = 0`` SGD settles, from ``b = 1e3`` it overflows."""
    base = _regression()

    def loss(params, state, batch, key):
        value, state = base.loss(params, state, batch, key)
        return value + params["b"] ** 4, state

    return Objective(loss, base.evaluate, test=base.test)


def _two_seeds(b1: float):
    params = {"w": jnp.zeros((2, 3)), "b": jnp.array([0.0, b1])}
    test = jax.tree.map(lambda x: jnp.stack([x, x]), _quartic().test)
    return params, dataclasses.replace(_quartic(), test=test)


def test_a_seed_that_diverges_stops_alone_and_the_other_ends_as_beside_a_calm_seed(tmp_path):
    params, objective = _two_seeds(1e3)
    curves = [tmp_path / "s0.jsonl", tmp_path / "s1.jsonl"]
    kwargs = dict(tx=optax.sgd(0.1), stream=_host_stream(), steps=8, eval_every=2)
    _, (ok, gone) = train_seeds(objective=objective, params=params, seeds=(3, 4), curves=curves,
                                progress=False, **kwargs)  # fmt: skip
    assert ok.diverged is None and ok.steps == 8
    # Its loss overflows at step 3 (b: 1e3, -4e8, 2.6e25): its run ends at evaluation 2.
    assert gone.diverged is not None and (gone.diverged.seed, gone.diverged.step) == (4, 3)
    assert gone.steps == 2 and [r["step"] for r in gone.records] == [0, 2]
    assert [json.loads(x)["step"] for x in curves[1].read_text().splitlines()] == [0, 2]
    # Seed 3 is what it would have been beside a seed that does not diverge.
    _, (calm, _) = train_seeds(objective=objective, params=_two_seeds(0.0)[0], seeds=(3, 4),
                               progress=False, **kwargs)  # fmt: skip
    assert ok.records[-1]["test_loss"] == pytest.approx(calm.records[-1]["test_loss"], rel=1e-6)
    assert ok.grad_evals == calm.grad_evals == 8


def test_a_diverged_seed_stays_stopped_when_its_group_resumes(tmp_path):
    params, objective = _two_seeds(1e3)
    kwargs = dict(objective=objective, params=params, seeds=(3, 4), tx=optax.sgd(0.1),
                  stream=_host_stream(), eval_every=2, progress=False)  # fmt: skip
    curves = [tmp_path / "s0.jsonl", tmp_path / "s1.jsonl"]
    _, whole = train_seeds(steps=8, **kwargs)
    ckpt = Checkpoints(tmp_path / "ckpt", every_s=0.0, meta={"run": "d"})
    train_seeds(steps=4, curves=curves, checkpoints=ckpt, **kwargs)
    _, resumed = train_seeds(steps=8, curves=curves, checkpoints=ckpt, **kwargs)
    assert resumed[1].diverged is not None and resumed[1].diverged.step == whole[1].diverged.step
    assert [r["step"] for r in resumed[1].records] == [0, 2]
    assert resumed[0].records[-1]["test_loss"] == whole[0].records[-1]["test_loss"]


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    tx = optax.sgd(0.1)
    _train(_host_stream(), tx, checkpoints=Checkpoints(tmp_path, 0.0, {"lr": 0.1}))
    with pytest.raises(ValueError, match="another configuration"):
        _train(_host_stream(), tx, checkpoints=Checkpoints(tmp_path, 0.0, {"lr": 0.2}))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 7, "eval_every": 2}, "multiple of eval_every"),
        ({"steps": 0, "eval_every": 2}, "multiple of eval_every"),
        ({"steps_per_call": 3}, "must divide eval_every"),
    ],
)
def test_bad_budget_raises_before_anything_is_written(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        _train(_host_stream(), optax.sgd(0.1), curves=tmp_path / "c.jsonl", **kwargs)
    assert not (tmp_path / "c.jsonl").exists()


def test_stream_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        Stream()
    with pytest.raises(ValueError, match="batch_size"):
        Stream(arrays=(np.zeros((4, 1)),), batch_size=0)


def test_make_steps_fn_runs_one_step_per_key():
    def loss_fn(params, batch):
        x, y = batch
        return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)

    tx = optax.sgd(0.1)
    run = make_steps_fn(loss_fn, tx, _generated_stream().generate)
    keys = jax.random.split(jax.random.key(0), 5)
    params, _, losses = run(PARAMS, tx.init(PARAMS), keys)
    assert losses.shape == (5,) and losses[-1] < losses[0]
    assert not np.allclose(params["w"], 0.0)


def _fw_adam(K):
    return optax.chain(fw_optax.frank_wolfe(K, 0.1), optax.adam(0.05))


def test_a_k_switch_changes_k_at_its_step_and_carries_the_optimizer_state_over():
    stream = _generated_stream()
    params, _, result = _train(
        stream, _fw_adam(1), steps=8, eval_every=2, then=[(4, _fw_adam(3), 1)]
    )
    assert [r["grad_evals"] for r in result.records] == [0, 2, 4, 10, 16]
    # The same steps by hand: K=1 steps, then K=3 steps on the same state.
    objective = _regression()
    state = TrainState.create(PARAMS, {}, _fw_adam(1), seed=3)
    steps = [
        make_step(objective, _fw_adam(K), to_batches=generated_batches(stream.generate, 1))
        for K in (1, 3)
    ]
    for i in range(8):
        state, _ = jax.jit(steps[i >= 4])(state, (jnp.asarray(i), None))
    for name in params:
        np.testing.assert_allclose(params[name], state.params[name], rtol=1e-6, atol=1e-7)
    # A fresh optimizer state at the switch (Adam's moments dropped) would end elsewhere.
    restarted, _, _ = _train(stream, _fw_adam(1), steps=4, eval_every=2)
    params2, _, _ = train(
        objective=objective, tx=_fw_adam(3), params=restarted, stream=stream, steps=4,
        eval_every=2, seed=3, progress=False,
    )  # fmt: skip
    assert not np.allclose(params2["w"], params["w"])


def test_a_switch_with_another_optimizer_state_is_refused():
    with pytest.raises(ValueError, match="could not carry the state over"):
        _train(_generated_stream(), _fw_adam(1), steps=4, then=[(2, optax.sgd(0.1), 1)])
    with pytest.raises(ValueError, match="multiples of eval_every"):
        _train(_generated_stream(), _fw_adam(1), steps=8, eval_every=4, then=[(2, _fw_adam(3), 1)])
