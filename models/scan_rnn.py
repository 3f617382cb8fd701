"""Hand-written ``jax.lax.scan`` recurrences over Flax cell parameters.

Each function takes the parameter dict of one Flax cell (``SimpleCell``, ``LSTMCell`` /
``OptimizedLSTMCell``, ``GRUCell``, or ``IndRNNCell``), exactly as ``cell.init`` lays it out,
and runs the cell's recurrence over a whole sequence. Two things differ from ``nn.RNN(cell)``:

* the input projection ``W_i x_t + b`` of all T steps is one ``[T*B, F] x [F, G]`` matmul
  before the scan, so the scanned step only does the recurrent ``h_{t-1} W_h`` product;
* the gate kernels are concatenated once, so each step is a single matmul.

They compute the same function as the Flax cells for the same weights (checked in
``tests/models/test_scan_rnn.py``, up to float rounding from the changed summation order).
``simple_rnn_scan`` is the readable reference of a vanilla RNN and the tests' oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.cells import INDRNN_RECURRENT_NAME, IndRNNCell, cell_path, register_path

Array = jax.Array
Params = Mapping[str, Any]
Carry = Any


def simple_rnn_scan(
    params: Params,
    x: Array,
    h0: Array | None = None,
    *,
    activation: Callable[[Array], Array] = jnp.tanh,
    unroll: int = 1,
    time_major: bool = False,
) -> tuple[Array, Array]:
    r"""Vanilla RNN ``h_t = tanh(W_i x_t + b + W_h h_{t-1})`` as one ``lax.scan``.

    Args:
      params: a ``flax.linen.SimpleCell``'s parameters: ``{"i": {"kernel": W_i [F, H],
        "bias": b [H]}, "h": {"kernel": W_h [H, H]}}`` (Flax multiplies on the right,
        ``x @ W``).
      x: inputs ``[B, T, F]`` (``[T, B, F]`` with ``time_major``).
      h0: initial state ``[B, H]``; zeros when omitted.
      activation: the nonlinearity (``SimpleCell.activation_fn``).
      unroll: steps per scan iteration (``lax.scan``'s ``unroll``).
      time_major: whether ``x`` and the returned states have time first.

    Returns:
      ``(h_T, hs)``: the last state ``[B, H]`` and all states ``[B, T, H]``.
    """
    w_i, b, w_h = params["i"]["kernel"], params["i"]["bias"], params["h"]["kernel"]
    xs = x if time_major else jnp.swapaxes(x, 0, 1)
    if h0 is None:
        h0 = jnp.zeros(xs.shape[1:-1] + (w_h.shape[0],), xs.dtype)
    projected = xs @ w_i + b

    def step(h: Array, p_t: Array) -> tuple[Array, Array]:
        h = activation(p_t + h @ w_h)
        return h, h

    h_last, hs = jax.lax.scan(step, h0, projected, unroll=unroll)
    return h_last, hs if time_major else jnp.swapaxes(hs, 0, 1)


def _concat(params: Params, names: tuple[str, ...], leaf: str) -> Array:
    return jnp.concatenate([params[n][leaf] for n in names], axis=-1)


def lstm_weights(params: Params) -> tuple[Array, Array, Array]:
    """An LSTM cell's ``(W_i [F, 4H], b [4H], W_h [H, 4H])``, gates in Flax's order i, f, g, o.

    Flax puts the one bias of each gate on the recurrent ``h*`` dense layer.
    """
    gates = ("i", "f", "g", "o")
    w_i = _concat(params, tuple(f"i{g}" for g in gates), "kernel")
    w_h = _concat(params, tuple(f"h{g}" for g in gates), "kernel")
    b = _concat(params, tuple(f"h{g}" for g in gates), "bias")
    return w_i, b, w_h


def gru_weights(params: Params) -> tuple[Array, Array, Array, Array]:
    """A GRU cell's ``(W_i [F, 3H], b_i [3H], W_h [H, 3H], b_hn [H])``, gates r, z, n.

    Flax's GRU has biases on the input side and one more, ``b_hn``, inside ``r * (h W_n + b_hn)``.
    """
    w_i = _concat(params, ("ir", "iz", "in"), "kernel")
    b_i = _concat(params, ("ir", "iz", "in"), "bias")
    w_h = _concat(params, ("hr", "hz", "hn"), "kernel")
    return w_i, b_i, w_h, params["hn"]["bias"]


@register_path("hoisted", "lstm")
def _lstm_scan(cell: nn.RNNCellBase, params: Params, xs: Array, carry: Carry, unroll: int):
    w_i, b, w_h = lstm_weights(params)
    projected = xs @ w_i + b

    def step(carry: tuple[Array, Array], p_t: Array):
        c, h = carry
        i, f, g, o = jnp.split(p_t + h @ w_h, 4, axis=-1)
        c = cell.gate_fn(f) * c + cell.gate_fn(i) * cell.activation_fn(g)
        h = cell.gate_fn(o) * cell.activation_fn(c)
        return (c, h), h

    return jax.lax.scan(step, carry, projected, unroll=unroll)


@register_path("hoisted", "gru")
def _gru_scan(cell: nn.GRUCell, params: Params, xs: Array, carry: Array, unroll: int):
    w_i, b_i, w_h, b_hn = gru_weights(params)
    projected = xs @ w_i + b_i

    def step(h: Array, p_t: Array):
        x_r, x_z, x_n = jnp.split(p_t, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(h @ w_h, 3, axis=-1)
        r = cell.gate_fn(x_r + h_r)
        z = cell.gate_fn(x_z + h_z)
        n = cell.activation_fn(x_n + r * (h_n + b_hn))
        h = (1.0 - z) * n + z * h
        return h, h

    return jax.lax.scan(step, carry, projected, unroll=unroll)


@register_path("hoisted", "simple")
def _simple_scan(cell: nn.SimpleCell, params: Params, xs: Array, carry: Array, unroll: int):
    if cell.residual:
        raise ValueError("the hoisted SimpleCell recurrence does not support residual=True")
    return simple_rnn_scan(
        params, xs, carry, activation=cell.activation_fn, unroll=unroll, time_major=True
    )


@register_path("hoisted", "indrnn")
def _indrnn_scan(cell: IndRNNCell, params: Params, xs: Array, carry: Array, unroll: int):
    u = params[INDRNN_RECURRENT_NAME]
    projected = xs @ params["i"]["kernel"] + params["i"]["bias"]

    def step(h: Array, p_t: Array):
        h = cell.activation_fn(p_t + u * h)
        return h, h

    return jax.lax.scan(step, carry, projected, unroll=unroll)


def supports_hoisting(cell: nn.RNNCellBase) -> bool:
    """Whether ``scan_cell`` has a hoisted-projection recurrence for this cell type
    (``models.cells.CELLS``)."""
    return cell_path(cell, "hoisted") is not None and not getattr(cell, "residual", False)


def scan_cell(
    cell: nn.RNNCellBase, params: Params, xs: Array, carry: Carry, *, unroll: int = 1
) -> tuple[Carry, Array]:
    """Run ``cell``'s recurrence over time-major inputs with the input projection hoisted.

    Args:
      cell: the Flax cell whose math and nonlinearities to use (its attributes are read,
        it is not called).
      params: that cell's parameters, in Flax's layout.
      xs: inputs ``[T, B, F]``.
      carry: the initial carry, as ``cell.initialize_carry`` shapes it.
      unroll: steps per scan iteration.

    Returns:
      ``(carry_T, hs)`` with the final carry and the outputs ``[T, B, H]``.
    """
    if not supports_hoisting(cell):
        raise ValueError(f"no hoisted recurrence for cell {cell!r}")
    return cell_path(cell, "hoisted")(cell, params, xs, carry, unroll)
