"""The Flax NNX example: frank_wolfe through nnx.Optimizer, batch statistics and RNG handled."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import fw_optax
from benchmarks import nnx_rnn
from benchmarks.training.data.adding import adding_batch


def test_training_from_the_command_line_lowers_the_test_loss(capsys):
    nnx_rnn.main(["--K", "3", "--hidden", "8", "--length", "6", "--batch", "32", "--steps", "40"])
    out = capsys.readouterr().out
    assert "frank_wolfe K=3" in out
    losses = [float(x) for x in out.strip().split("test MSE: ")[1].split(" -> ")]
    assert len(losses) == 11
    assert losses[-1] < 0.5 * losses[0]


def test_one_step_is_the_functional_update_and_only_the_outer_step_touches_model_state():
    model = nnx_rnn.AddingRNN(8, rngs=nnx.Rngs(params=1, dropout=2))
    tx = optax.chain(fw_optax.frank_wolfe(3, 0.1), optax.sgd(1.0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    batch = adding_batch(jax.random.key(4), 16, 6)

    # The same step written with plain optax on the split model.
    reference = nnx.clone(model)
    _, grads = nnx.value_and_grad(nnx_rnn.loss_fn)(reference, batch)  # moves its batch stats
    params = nnx.as_pure(nnx.state(reference, nnx.Param))
    updates, _ = tx.update(
        nnx.as_pure(nnx.state(grads, nnx.Param)),
        tx.init(params),
        params,
        value_fn=nnx_rnn.make_value_fn(reference, batch),
    )
    want_params = optax.apply_updates(params, updates)

    before = nnx.as_pure(nnx.state(model, nnx.BatchStat))
    nnx_rnn.train_step(model, optimizer, batch)
    for a, b in zip(
        jax.tree.leaves(nnx.as_pure(nnx.state(model, nnx.Param))),
        jax.tree.leaves(want_params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    after = nnx.as_pure(nnx.state(model, nnx.BatchStat))
    assert not all(
        np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )
    # The running averages and the RNG moved once, by the outer gradient; not by inner steps.
    want = nnx.as_pure(nnx.state(reference, nnx.BatchStat))
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    counts = [nnx.as_pure(nnx.state(m, nnx.RngCount)) for m in (model, reference)]
    assert [int(c) for c in jax.tree.leaves(counts[0])] == [
        int(c) for c in jax.tree.leaves(counts[1])
    ]
    assert int(optimizer.opt_state[0].inner_steps) == 3


def test_forgetting_value_fn_says_what_to_pass():
    model = nnx_rnn.AddingRNN(4, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, fw_optax.frank_wolfe(2, 0.1), wrt=nnx.Param)
    grads = jax.tree.map(np.zeros_like, nnx.as_pure(nnx.state(model, nnx.Param)))
    with pytest.raises(TypeError, match=r"optimizer\.update\(model, grads, value_fn=\.\.\.\)"):
        optimizer.update(model, grads)
