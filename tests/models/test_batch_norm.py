"""Tests for models/batch_norm.py: ``BatchNorm`` is ``flax.linen.BatchNorm`` over all axes
but the last (variables, outputs, gradients, running averages, evaluation), and the
closed-form backward pass is the derivative (``check_grads``, statistics' cotangents
included)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from models.batch_norm import BatchNorm, batch_norm

SETTINGS = {"momentum": 0.9, "epsilon": 1e-5}


def _variables(shape, seed=0):
    """Inputs and non-trivial scale, bias and running averages."""
    keys = jax.random.split(jax.random.key(seed), 5)
    x = 3.0 * jax.random.normal(keys[0], shape) + 1.0
    features = (shape[-1],)
    params = {
        "scale": 1.0 + jax.random.normal(keys[1], features),
        "bias": jax.random.normal(keys[2], features),
    }
    stats = {
        "mean": jax.random.normal(keys[3], features),
        "var": 1.0 + jax.random.uniform(keys[4], features),
    }
    return x, params, stats


def _loss_and_stats(module, train):
    def run(params, stats, x):
        y, updated = module.apply(
            {"params": params, "batch_stats": stats},
            x,
            use_running_average=not train,
            mutable=["batch_stats"],
        )
        weights = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
        return jnp.sum(weights * jnp.tanh(y)), updated["batch_stats"]

    return jax.jit(jax.value_and_grad(run, argnums=(0, 2), has_aux=True))


@pytest.mark.parametrize("shape", [(9, 4, 6), (5, 3), (1, 2, 7)])
@pytest.mark.parametrize("train", [True, False])
def test_equals_flax_batch_norm(shape, train):
    x, params, stats = _variables(shape)
    ours = _loss_and_stats(BatchNorm(**SETTINGS), train)(params, stats, x)
    flax_axes = nn.BatchNorm(axis=-1, **SETTINGS)
    expected = _loss_and_stats(flax_axes, train)(params, stats, x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    if not train:  # evaluation reads the averages and leaves them as they are
        (_, new_stats), _ = ours
        jax.tree.map(np.testing.assert_array_equal, new_stats, stats)


def test_has_flax_batch_norms_variables():
    x = jnp.ones((4, 3, 5))
    ours = BatchNorm(**SETTINGS).init(jax.random.key(0), x, use_running_average=False)
    flax_vars = nn.BatchNorm(**SETTINGS).init(jax.random.key(0), x, use_running_average=False)
    assert jax.tree.structure(ours) == jax.tree.structure(flax_vars)
    jax.tree.map(np.testing.assert_array_equal, ours, flax_vars)


def test_closed_form_backward_is_the_derivative_in_float64():
    x, params, _ = _variables((6, 3, 4), seed=1)
    with jax.enable_x64(True):
        x, scale, bias = (jnp.asarray(a, jnp.float64) for a in (x, params["scale"], params["bias"]))

        def loss(x, scale, bias):
            y, mean, var = batch_norm(x, scale, bias, 1e-5)
            # Every output reaches the loss, the statistics too.
            return jnp.sum(jnp.sin(y)) + jnp.sum(mean**2) + jnp.sum(jnp.cos(var))

        assert loss(x, scale, bias).dtype == jnp.float64
        check_grads(loss, (x, scale, bias), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
