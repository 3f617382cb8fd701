"""Tests for models/scan_rnn.py: hand-written scans equal Flax's cells for the same weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.cells import make_cell
from models.scan_rnn import scan_cell, simple_rnn_scan, supports_hoisting


def _flax_rnn(cell, x, seed=0):
    rnn = nn.RNN(cell, return_carry=True)
    variables = rnn.init(jax.random.key(seed), x)
    return variables["params"]["cell"], rnn.apply(variables, x)


@settings(max_examples=3, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq_len=st.integers(1, 9),
    features=st.integers(1, 4),
    hidden=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_simple_rnn_scan_equals_flax_simple_cell(batch, seq_len, features, hidden, seed):
    x = jax.random.normal(jax.random.key(seed + 1), (batch, seq_len, features))
    params, (carry, hs) = _flax_rnn(nn.SimpleCell(hidden), x, seed)
    h_last, hs_scan = simple_rnn_scan(params, x)
    np.testing.assert_allclose(hs_scan, hs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_last, carry, rtol=1e-5, atol=1e-6)


def test_simple_rnn_scan_is_the_textbook_recurrence():
    x = jax.random.normal(jax.random.key(0), (2, 5, 3))
    params, _ = _flax_rnn(nn.SimpleCell(4), x)
    w_i, b, w_h = (
        np.asarray(a) for a in (params["i"]["kernel"], params["i"]["bias"], params["h"]["kernel"])
    )
    h = np.zeros((2, 4))
    for t in range(5):
        h = np.tanh(np.asarray(x[:, t]) @ w_i + b + h @ w_h)
    np.testing.assert_allclose(simple_rnn_scan(params, x)[0], h, rtol=1e-5, atol=1e-6)


def test_simple_rnn_scan_with_initial_state_and_time_major():
    x = jax.random.normal(jax.random.key(0), (2, 5, 3))
    params, _ = _flax_rnn(nn.SimpleCell(4), x)
    h0 = jax.random.normal(jax.random.key(1), (2, 4))
    expected = nn.RNN(nn.SimpleCell(4)).apply({"params": {"cell": params}}, x, initial_carry=h0)
    _, hs = simple_rnn_scan(params, jnp.swapaxes(x, 0, 1), h0, time_major=True, unroll=3)
    np.testing.assert_allclose(jnp.swapaxes(hs, 0, 1), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "unroll"), [("simple", 1), ("lstm", 3), ("gru", 2), ("indrnn", 1)]
)
def test_scan_cell_equals_flax_rnn_with_gradients(name, unroll):
    cell = make_cell(name, 5)
    x = jax.random.normal(jax.random.key(3), (2, 7, 3))
    params, (carry, hs) = _flax_rnn(cell, x)
    carry0 = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
    xs = jnp.swapaxes(x, 0, 1)
    carry_scan, hs_scan = scan_cell(cell, params, xs, carry0, unroll=unroll)
    np.testing.assert_allclose(jnp.swapaxes(hs_scan, 0, 1), hs, rtol=1e-5, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), carry_scan, carry
    )

    def flax_loss(p):
        return jnp.sum(nn.RNN(cell).apply({"params": {"cell": p}}, x) ** 2)

    def scan_loss(p):
        return jnp.sum(scan_cell(cell, p, xs, carry0, unroll=unroll)[1] ** 2)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        jax.grad(scan_loss)(params),
        jax.grad(flax_loss)(params),
    )


def test_scan_cell_rejects_cells_without_a_hoisted_recurrence():
    cell = nn.SimpleCell(3, residual=True, parent=None)
    assert not supports_hoisting(cell)
    with pytest.raises(ValueError, match="no hoisted recurrence"):
        scan_cell(cell, {}, jnp.zeros((2, 1, 3)), jnp.zeros((1, 3)))
