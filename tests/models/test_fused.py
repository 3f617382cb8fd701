"""Tests for models/fused.py: the split-backward recurrences equal Flax's cells, value and
gradient, for every cell type, length, batch and unroll, under jit, vmap and scan."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from models.cells import IndRNNCell, make_cell
from models.fused import fused_scan_cell, supports_fused

CELLS = {
    "simple": make_cell("simple", 5),
    "irnn": make_cell("simple", 5, recurrent_init="identity", activation_fn=nn.relu),
    "indrnn": make_cell("indrnn", 5),
    "indrnn-tanh": make_cell("indrnn", 5, activation_fn=jnp.tanh),
    "lstm": make_cell("lstm", 5),
    "lstm-unoptimized": nn.LSTMCell(5, parent=None),
    "gru": make_cell("gru", 5),
}
# (T, batch, unroll): T not divisible by the unroll, T = 1, divisible, unroll longer than
# T. Every cell runs the first; the vanilla cell, the IndRNN (whose backward loop reads the
# previous state by index) and the LSTM (two carries) run them all.
SHAPES = [(7, 3, 3), (1, 1, 1), (8, 2, 4), (3, 2, 5)]
CASES = [(name, *SHAPES[0]) for name in CELLS] + [
    (name, *shape) for name in ("simple", "indrnn", "lstm") for shape in SHAPES[1:]
]


def _setup(cell, seq_len, batch, features=3, seed=0):
    """Flax parameters, time-major inputs and a non-zero initial carry."""
    keys = jax.random.split(jax.random.key(seed), 3)
    xs = jax.random.normal(keys[0], (seq_len, batch, features))
    params = nn.RNN(cell).init(keys[1], jnp.swapaxes(xs, 0, 1))["params"]["cell"]
    carry = cell.initialize_carry(keys[2], (batch, features))
    carry = jax.tree.map(lambda c, k: 0.5 * jax.random.normal(k, c.shape), carry, _keys(carry))
    return params, xs, carry


def _keys(tree):
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, list(jax.random.split(jax.random.key(7), len(leaves))))


def _flax(cell, params, xs, carry):
    rnn = nn.RNN(cell, time_major=True, return_carry=True)
    return rnn.apply({"params": {"cell": params}}, xs, initial_carry=carry)


def _loss(run, cell, unroll=None):
    """A scalar that depends on every output and the final carry, nonlinearly."""

    def loss(params, xs, carry):
        kwargs = {} if unroll is None else {"unroll": unroll}
        final, hs = run(cell, params, xs, carry, **kwargs)
        weights = jnp.cos(jnp.arange(hs.size, dtype=hs.dtype)).reshape(hs.shape)
        return jnp.sum(weights * hs) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(final))

    return loss


def _assert_trees_close(actual, expected, rtol, atol):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def _value_and_grads(run, cell, unroll=None):
    """Final carry, outputs, and the loss gradient w.r.t. parameters, inputs and carry."""
    kwargs = {} if unroll is None else {"unroll": unroll}
    grad = jax.grad(_loss(run, cell, unroll), argnums=(0, 1, 2))
    return jax.jit(lambda *a: (run(cell, *a, **kwargs), grad(*a)))


@pytest.mark.parametrize(("name", "seq_len", "batch", "unroll"), CASES)
def test_outputs_carry_and_gradients_equal_flax_rnn(name, seq_len, batch, unroll):
    cell = CELLS[name]
    setup = _setup(cell, seq_len, batch)
    (final, hs), grads = _value_and_grads(fused_scan_cell, cell, unroll)(*setup)
    (final_flax, hs_flax), expected = _value_and_grads(lambda c, *a: _flax(c, *a), cell)(*setup)
    np.testing.assert_allclose(hs, hs_flax, rtol=1e-5, atol=1e-6)
    _assert_trees_close(final, final_flax, rtol=1e-5, atol=1e-6)
    _assert_trees_close(grads, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["simple", "indrnn-tanh", "lstm", "gru"])
def test_check_grads_in_float64(name):
    cell = CELLS[name]
    setup = _setup(cell, 5, 2, seed=1)
    with jax.enable_x64(True):
        params, xs, carry = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), setup)
        loss = _loss(fused_scan_cell, cell, unroll=2)
        assert loss(params, xs, carry).dtype == jnp.float64
        check_grads(loss, (params, xs, carry), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_relu_recurrences_match_flax_in_float64_where_units_switch_off():
    # ReLU units that are exactly 0 have derivative 0 in both (jax.nn.relu's convention).
    cell = CELLS["indrnn"]
    setup = _setup(cell, 9, 4, seed=2)
    with jax.enable_x64(True):
        params, xs, carry = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), setup)
        hs = fused_scan_cell(cell, params, xs, carry)[1]
        assert 0.2 < float(jnp.mean(hs == 0)) < 0.8
        grads = jax.grad(_loss(fused_scan_cell, cell), argnums=(0, 1, 2))(params, xs, carry)
        expected = jax.grad(_loss(lambda c, *a: _flax(c, *a), cell), argnums=(0, 1, 2))(
            params, xs, carry
        )
        _assert_trees_close(grads, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["simple", "indrnn", "lstm"])
def test_vmap_over_seeds_equals_one_seed_at_a_time(name):
    cell = CELLS[name]
    setups = [_setup(cell, 6, 2, seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *setups)
    grad = jax.grad(_loss(fused_scan_cell, cell, unroll=2), argnums=(0, 1, 2))
    batched = jax.jit(jax.vmap(grad))(*stacked)
    for seed, setup in enumerate(setups):
        _assert_trees_close(
            jax.tree.map(lambda a, s=seed: a[s], batched), grad(*setup), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("name", ["simple", "lstm"])
def test_grad_inside_scan_equals_flax(name):
    """Three SGD steps with the gradient taken inside ``lax.scan`` (as frank_wolfe does)."""
    cell = CELLS[name]
    params, xs, carry = _setup(cell, 5, 2)

    def descend(run):
        grad = jax.grad(_loss(run, cell))

        def step(p, _):
            return jax.tree.map(lambda w, g: w - 0.1 * g, p, grad(p, xs, carry)), None

        return jax.jit(lambda p: jax.lax.scan(step, p, length=3)[0])(params)

    _assert_trees_close(
        descend(fused_scan_cell), descend(lambda c, *a: _flax(c, *a)), rtol=1e-4, atol=1e-5
    )


class _ScaledSimpleCell(nn.SimpleCell):
    """A user's own cell: not a type the fused path knows, whatever it inherits."""


@pytest.mark.parametrize(
    "cell",
    [
        nn.SimpleCell(3, residual=True, parent=None),
        nn.SimpleCell(3, activation_fn=nn.elu, parent=None),
        nn.GRUCell(3, gate_fn=nn.hard_sigmoid, parent=None),
        nn.LSTMCell(3, activation_fn=nn.relu, parent=None),
        nn.SimpleCell(3, dtype=jnp.bfloat16, parent=None),
        _ScaledSimpleCell(3, parent=None),
        nn.MGUCell(3, parent=None),
    ],
    ids=["residual", "elu", "hard-sigmoid-gates", "relu-lstm", "bf16", "subclass", "mgu"],
)
def test_cells_without_a_fused_recurrence_are_refused_by_name(cell):
    assert not supports_fused(cell)
    with pytest.raises(ValueError, match="no fused recurrence for cell"):
        fused_scan_cell(cell, {}, jnp.zeros((2, 1, 3)), jnp.zeros((1, 3)))


def test_every_cell_the_models_build_has_a_fused_recurrence():
    assert all(supports_fused(cell) for cell in CELLS.values())
    assert supports_fused(IndRNNCell(4, activation_fn=nn.sigmoid))


@pytest.mark.parametrize(
    ("shape", "unroll", "match"),
    [((0, 2, 3), 1, r"\(0, 2, 3\)"), ((3,), 1, r"\(3,\)"), ((4, 2, 3), 0, "unroll must be")],
)
def test_bad_inputs_raise_value_error_naming_the_value(shape, unroll, match):
    cell = CELLS["simple"]
    params, _, carry = _setup(cell, 2, 2)
    with pytest.raises(ValueError, match=match):
        fused_scan_cell(cell, params, jnp.zeros(shape), carry, unroll=unroll)
