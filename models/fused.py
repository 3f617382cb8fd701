r"""Recurrences whose backward pass does only the sequential part (``jax.custom_vjp``).

Reverse-mode autodiff of a scanned cell does, at every time step of the backward loop, the
cotangent of the recurrent product *and* the weight-gradient products
``dW_h += h_{t-1}^T dz_t`` (and, for a Flax cell, ``dW_i += x_t^T dz_t``): T small matmuls
where one large one would do. The recurrences here split the work the way the math allows:

* forward: ``p = x W_i + b`` for all T steps as one matmul (plain JAX, autodiff takes care
  of it), then a scan over ``z_t = p_t + h_{t-1} W_h`` and the cell's element-wise update;
* backward: a reverse scan that carries only the state cotangent (``dh``; ``dc`` too for
  the LSTM), applies the cell's element-wise derivative and one ``dz_t W_h^T`` product per
  step, and stacks the pre-activation cotangents ``dz [T, B, G]``;
* after the loop: ``dW_h = H_{prev}^T dz`` over all ``T * B`` rows, and ``dp = dz``, from
  which autodiff of the projection gives ``dW_i = X^T dp``, ``db = sum dp`` and
  ``dx = dp W_i^T``, again as single large matmuls.

Each function takes the parameters of one Flax cell in Flax's layout and returns what
``nn.RNN(cell, time_major=True, return_carry=True)`` returns, with the same numbers up to
float rounding (``tests/models/test_fused.py`` checks outputs and gradients, also with
``jax.test_util.check_grads`` in float64). Gradients flow to the parameters, the inputs
and the initial carry, so deep stacks and truncated BPTT work unchanged; ``jit``, ``vmap``
and ``grad`` inside ``lax.scan`` work as for any ``custom_vjp``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.cells import INDRNN_RECURRENT_NAME, IndRNNCell, cell_path, register_path
from models.scan_rnn import gru_weights, lstm_weights

Array = jax.Array
Params = Mapping[str, Any]
Carry = Any

# Element-wise nonlinearities sigma whose derivative is a function of the output
# y = sigma(z): the backward pass then needs only the stored states, not the
# pre-activations. Keyed by name so the recurrences take a hashable static argument.
_ACTIVATIONS: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "tanh": (jnp.tanh, lambda y: 1.0 - y * y),
    "sigmoid": (nn.sigmoid, lambda y: y * (1.0 - y)),
    "relu": (nn.relu, lambda y: (y > 0).astype(y.dtype)),
}


def _activation_name(fn: Callable[[Array], Array]) -> str | None:
    return next((name for name, (f, _) in _ACTIVATIONS.items() if f is fn), None)


def _act(name: str, z: Array) -> Array:
    return _ACTIVATIONS[name][0](z)


def _act_grad(name: str, y: Array) -> Array:
    return _ACTIVATIONS[name][1](y)


def _previous(first: Array, stacked: Array) -> Array:
    """``[first, stacked[0], ..., stacked[T-2]]``: the state entering each step."""
    return jnp.concatenate([first[None], stacked[:-1]], axis=0)


def _outer_sum(a: Array, b: Array) -> Array:
    """``sum_{t,b} a_t^T b_t`` as one ``[H, T*B] x [T*B, G]`` matmul."""
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


# --- Elman (``SimpleCell``): h_t = sigma(p_t + h_{t-1} W_h) ------------------------------


def _elman_forward(act: str, unroll: int, w_h: Array, p: Array, h0: Array) -> Array:
    def step(h: Array, p_t: Array) -> tuple[Array, Array]:
        h = _act(act, p_t + h @ w_h)
        return h, h

    return jax.lax.scan(step, h0, p, unroll=unroll)[1]


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def elman_recurrence(act: str, unroll: int, w_h: Array, p: Array, h0: Array) -> Array:
    r"""All states ``h_t = sigma(p_t + h_{t-1} W_h)``, ``[T, B, H]``, of a projected input.

    Backward: ``dz_t = (g_t + dh_t) sigma'(h_t)``, ``dh_{t-1} = dz_t W_h^T`` in the loop;
    ``dW_h = sum_t h_{t-1}^T dz_t``, ``dp = dz`` after it.
    """
    return _elman_forward(act, unroll, w_h, p, h0)


def _elman_fwd(act, unroll, w_h, p, h0):
    hs = _elman_forward(act, unroll, w_h, p, h0)
    return hs, (w_h, hs, h0)


def _elman_bwd(act, unroll, residuals, g_hs):
    w_h, hs, h0 = residuals
    w_h_t = w_h.T

    def step(dh: Array, inputs: tuple[Array, Array]) -> tuple[Array, Array]:
        g_t, h_t = inputs
        dz = (dh + g_t) * _act_grad(act, h_t)
        return dz @ w_h_t, dz

    dh0, dz = jax.lax.scan(step, jnp.zeros_like(h0), (g_hs, hs), reverse=True, unroll=unroll)
    return _outer_sum(_previous(h0, hs), dz), dz, dh0


elman_recurrence.defvjp(_elman_fwd, _elman_bwd)


# --- IndRNN: h_t = sigma(p_t + b + u * h_{t-1}) -------------------------------------------


def _indrnn_forward(act: str, unroll: int, u: Array, b: Array, p: Array, h0: Array) -> Array:
    def step(h: Array, p_t: Array) -> tuple[Array, Array]:
        h = _act(act, p_t + b + u * h)
        return h, h

    return jax.lax.scan(step, h0, p, unroll=unroll)[1]


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def indrnn_recurrence(act: str, unroll: int, u: Array, b: Array, p: Array, h0: Array) -> Array:
    r"""All states ``h_t = sigma(p_t + b + u * h_{t-1})``, ``[T, B, H]``, of a projected input.

    Every operation in the step is element-wise, so the loop costs more than its
    arithmetic; the passes over ``[T, B, H]`` arrays around it are what the backward pass
    saves. The bias is added in the loop (no pass to add it before), and the backward loop
    accumulates ``du`` and ``db`` per batch row next to the state cotangent:
    ``dz_t = (g_t + dh_t) sigma'(h_t)``, ``dh_{t-1} = u * dz_t``,
    ``du += h_{t-1} dz_t``, ``db += dz_t``, summed over the batch after the loop (no
    shifted copy of the states, no reductions over ``[T, B, H]``); ``dp = dz``.
    """
    return _indrnn_forward(act, unroll, u, b, p, h0)


def _indrnn_fwd(act, unroll, u, b, p, h0):
    hs = _indrnn_forward(act, unroll, u, b, p, h0)
    return hs, (u, hs, h0)


def _indrnn_bwd(act, unroll, residuals, g_hs):
    u, hs, h0 = residuals

    def step(carry, inputs):
        dh, du, db = carry
        t, g_t, h_t = inputs
        before = jax.lax.dynamic_index_in_dim(hs, jnp.maximum(t - 1, 0), keepdims=False)
        h_prev = jnp.where(t > 0, before, h0)
        dz = (dh + g_t) * _act_grad(act, h_t)
        return (u * dz, du + h_prev * dz, db + dz), dz

    zeros = jnp.zeros_like(h0)
    steps = jnp.arange(hs.shape[0])
    (dh0, du, db), dz = jax.lax.scan(
        step, (zeros, zeros, zeros), (steps, g_hs, hs), reverse=True, unroll=unroll
    )
    batch_axes = tuple(range(h0.ndim - 1))
    return du.sum(batch_axes), db.sum(batch_axes), dz, dh0


indrnn_recurrence.defvjp(_indrnn_fwd, _indrnn_bwd)


# --- LSTM: z_t = p_t + h_{t-1} W_h = [i, f, g, o]; c_t = f c_{t-1} + i g; h_t = o tanh c_t --


def _lstm_step(w_h: Array, carry: tuple[Array, Array], p_t: Array):
    c, h = carry
    z_i, z_f, z_g, z_o = jnp.split(p_t + h @ w_h, 4, axis=-1)
    i, f, g, o = nn.sigmoid(z_i), nn.sigmoid(z_f), jnp.tanh(z_g), nn.sigmoid(z_o)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (c, h), jnp.concatenate([i, f, g, o], axis=-1)


def _lstm_forward(unroll: int, w_h: Array, p: Array, c0: Array, h0: Array):
    def step(carry, p_t):
        (c, h), _ = _lstm_step(w_h, carry, p_t)
        return (c, h), h

    (c_last, _), hs = jax.lax.scan(step, (c0, h0), p, unroll=unroll)
    return hs, c_last


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def lstm_recurrence(unroll: int, w_h: Array, p: Array, c0: Array, h0: Array):
    r"""LSTM states ``(hs [T, B, H], c_T)`` of a projected input ``p = x W_i + b``.

    Gates ``[i, f, g, o] = [sigmoid, sigmoid, tanh, sigmoid](p_t + h_{t-1} W_h)`` (Flax's
    order); ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``. Backward, per step:
    ``dc~ = dc_t + dh_t o (1 - tanh^2 c_t)``, ``dz = [dc~ g i(1-i), dc~ c_{t-1} f(1-f),
    dc~ i (1-g^2), dh_t tanh(c_t) o(1-o)]``, ``dh_{t-1} = dz W_h^T``, ``dc_{t-1} = dc~ f``.
    """
    return _lstm_forward(unroll, w_h, p, c0, h0)


def _lstm_fwd(unroll, w_h, p, c0, h0):
    def step(carry, p_t):
        (c, h), gates = _lstm_step(w_h, carry, p_t)
        return (c, h), (h, c, gates)

    _, (hs, cs, gates) = jax.lax.scan(step, (c0, h0), p, unroll=unroll)
    return (hs, cs[-1]), (w_h, hs, cs, gates, c0, h0)


def _lstm_bwd(unroll, residuals, cotangents):
    w_h, hs, cs, gates, c0, h0 = residuals
    g_hs, g_c_last = cotangents
    w_h_t = w_h.T

    def step(carry, inputs):
        dh, dc = carry
        g_t, c_t, c_prev, gates_t = inputs
        i, f, g, o = jnp.split(gates_t, 4, axis=-1)
        dh = dh + g_t
        tanh_c = jnp.tanh(c_t)
        dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
        dz = jnp.concatenate(
            [
                dc * g * i * (1.0 - i),
                dc * c_prev * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * tanh_c * o * (1.0 - o),
            ],
            axis=-1,
        )
        return (dz @ w_h_t, dc * f), dz

    (dh0, dc0), dz = jax.lax.scan(
        step,
        (jnp.zeros_like(h0), g_c_last),
        (g_hs, cs, _previous(c0, cs), gates),
        reverse=True,
        unroll=unroll,
    )
    return _outer_sum(_previous(h0, hs), dz), dz, dc0, dh0


lstm_recurrence.defvjp(_lstm_fwd, _lstm_bwd)


# --- GRU (Flax): r, z = sigmoid(p_{r,z} + h W_{r,z}); n = tanh(p_n + r (h W_n + b_n));
#     h_t = (1 - z) n + z h_{t-1} -------------------------------------------------------


def _gru_step(w_h: Array, b_hn: Array, h: Array, p_t: Array):
    p_r, p_z, p_n = jnp.split(p_t, 3, axis=-1)
    a_r, a_z, a_n = jnp.split(h @ w_h, 3, axis=-1)
    r = nn.sigmoid(p_r + a_r)
    z = nn.sigmoid(p_z + a_z)
    hn = a_n + b_hn
    n = jnp.tanh(p_n + r * hn)
    return (1.0 - z) * n + z * h, jnp.concatenate([r, z, n, hn], axis=-1)


def _gru_forward(unroll: int, w_h: Array, b_hn: Array, p: Array, h0: Array) -> Array:
    def step(h, p_t):
        h, _ = _gru_step(w_h, b_hn, h, p_t)
        return h, h

    return jax.lax.scan(step, h0, p, unroll=unroll)[1]


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def gru_recurrence(unroll: int, w_h: Array, b_hn: Array, p: Array, h0: Array) -> Array:
    r"""GRU states ``[T, B, H]`` of a projected input ``p = x W_i + b_i`` (Flax's GRUCell).

    Backward, per step: ``dn~ = dh (1 - z)(1 - n^2)``, ``dz~ = dh (h_{t-1} - n) z(1-z)``,
    ``dr~ = dn~ (h W_n + b_n) r(1-r)``; ``dp_t = [dr~, dz~, dn~]``, the recurrent
    pre-activation cotangent ``da_t = [dr~, dz~, r dn~]``, ``dh_{t-1} = dh z + da_t W_h^T``.
    After the loop ``dW_h = sum_t h_{t-1}^T da_t``, ``db_n = sum r dn~``.
    """
    return _gru_forward(unroll, w_h, b_hn, p, h0)


def _gru_fwd(unroll, w_h, b_hn, p, h0):
    def step(h, p_t):
        h, saved = _gru_step(w_h, b_hn, h, p_t)
        return h, (h, saved)

    _, (hs, saved) = jax.lax.scan(step, h0, p, unroll=unroll)
    return hs, (w_h, hs, saved, h0)


def _gru_bwd(unroll, residuals, g_hs):
    w_h, hs, saved, h0 = residuals
    w_h_t = w_h.T

    def step(dh, inputs):
        g_t, h_prev, saved_t = inputs
        r, z, n, hn = jnp.split(saved_t, 4, axis=-1)
        dh = dh + g_t
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dz = dh * (h_prev - n) * z * (1.0 - z)
        dr = dn * hn * r * (1.0 - r)
        da = jnp.concatenate([dr, dz, dn * r], axis=-1)
        return dh * z + da @ w_h_t, (jnp.concatenate([dr, dz, dn], axis=-1), da)

    h_prev = _previous(h0, hs)
    dh0, (dp, da) = jax.lax.scan(
        step, jnp.zeros_like(h0), (g_hs, h_prev, saved), reverse=True, unroll=unroll
    )
    hidden = h0.shape[-1]
    db_hn = jnp.sum(da[..., 2 * hidden :], axis=tuple(range(da.ndim - 1)))
    return _outer_sum(h_prev, da), db_hn, dp, dh0


gru_recurrence.defvjp(_gru_fwd, _gru_bwd)


# --- Flax cells -> recurrences ----------------------------------------------------------


def _common_dtype(*arrays: Any) -> Any:
    return jnp.result_type(*jax.tree.leaves(arrays))


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


def elman_operands(cell: nn.SimpleCell, params: Params, xs: Array, carry: Array):
    """``(act, W_h, p = x W_i + b, h_0)`` of a ``SimpleCell``, in one dtype."""
    w_i, b, w_h = params["i"]["kernel"], params["i"]["bias"], params["h"]["kernel"]
    w_i, b, w_h, xs, carry = _cast((w_i, b, w_h, xs, carry), _common_dtype(w_i, b, w_h, xs, carry))
    return _activation_name(cell.activation_fn), w_h, xs @ w_i + b, carry


def indrnn_operands(cell: IndRNNCell, params: Params, xs: Array, carry: Array):
    """``(act, u, b, p = x W_i, h_0)`` of an ``IndRNNCell``, in one dtype (the bias is added
    inside the loop)."""
    w_i, b, u = params["i"]["kernel"], params["i"]["bias"], params[INDRNN_RECURRENT_NAME]
    w_i, b, u, xs, carry = _cast((w_i, b, u, xs, carry), _common_dtype(w_i, b, u, xs, carry))
    return _activation_name(cell.activation_fn), u, b, xs @ w_i, carry


def lstm_operands(cell: nn.RNNCellBase, params: Params, xs: Array, carry: Carry):
    """``(W_h, p = x W_i + b, c_0, h_0)`` of an LSTM cell, in one dtype."""
    w_i, b, w_h = lstm_weights(params)
    dtype = _common_dtype(w_i, b, w_h, xs, carry)
    w_i, b, w_h, xs, (c0, h0) = _cast((w_i, b, w_h, xs, carry), dtype)
    return w_h, xs @ w_i + b, c0, h0


def gru_operands(cell: nn.GRUCell, params: Params, xs: Array, carry: Array):
    """``(W_h, b_hn, p = x W_i + b_i, h_0)`` of a ``GRUCell``, in one dtype."""
    w_i, b_i, w_h, b_hn = gru_weights(params)
    dtype = _common_dtype(w_i, b_i, w_h, b_hn, xs, carry)
    w_i, b_i, w_h, b_hn, xs, carry = _cast((w_i, b_i, w_h, b_hn, xs, carry), dtype)
    return w_h, b_hn, xs @ w_i + b_i, carry


@register_path("fused", "simple")
def _simple(cell: nn.SimpleCell, params: Params, xs: Array, carry: Array, unroll: int):
    act, w_h, p, h0 = elman_operands(cell, params, xs, carry)
    hs = elman_recurrence(act, unroll, w_h, p, h0)
    return hs[-1], hs


@register_path("fused", "indrnn")
def _indrnn(cell: IndRNNCell, params: Params, xs: Array, carry: Array, unroll: int):
    act, u, b, p, h0 = indrnn_operands(cell, params, xs, carry)
    hs = indrnn_recurrence(act, unroll, u, b, p, h0)
    return hs[-1], hs


@register_path("fused", "lstm")
def _lstm(cell: nn.RNNCellBase, params: Params, xs: Array, carry: Carry, unroll: int):
    hs, c_last = lstm_recurrence(unroll, *lstm_operands(cell, params, xs, carry))
    return (c_last, hs[-1]), hs


@register_path("fused", "gru")
def _gru(cell: nn.GRUCell, params: Params, xs: Array, carry: Array, unroll: int):
    hs = gru_recurrence(unroll, *gru_operands(cell, params, xs, carry))
    return hs[-1], hs


def supports_fused(cell: nn.RNNCellBase) -> bool:
    """Whether ``fused_scan_cell`` has a recurrence for this cell (type and nonlinearities).

    Covered: the ``models.cells.CELLS`` types with a ``"fused"`` path, without a separate
    computation ``dtype``: ``SimpleCell`` (not ``residual``) and ``IndRNNCell`` with tanh,
    sigmoid or ReLU; ``LSTMCell``, ``OptimizedLSTMCell`` and ``GRUCell`` with their default
    sigmoid gates and tanh activation.
    """
    if cell_path(cell, "fused") is None or getattr(cell, "dtype", None) is not None:
        return False
    if hasattr(cell, "gate_fn"):
        return cell.gate_fn is nn.sigmoid and cell.activation_fn is jnp.tanh
    residual = getattr(cell, "residual", False)
    return _activation_name(cell.activation_fn) is not None and not residual


def fused_scan_cell(
    cell: nn.RNNCellBase, params: Params, xs: Array, carry: Carry, *, unroll: int = 1
) -> tuple[Carry, Array]:
    """Run ``cell``'s recurrence over time-major inputs with the split backward pass.

    Args:
      cell: the Flax cell whose math to use (``supports_fused(cell)`` must hold; its
        attributes are read, it is not called).
      params: that cell's parameters, in Flax's layout.
      xs: inputs ``[T, B, F]`` (any number of batch axes), ``T >= 1``.
      carry: the initial carry, as ``cell.initialize_carry`` shapes it (LSTM: ``(c, h)``).
      unroll: time steps per scan iteration, forward and backward, ``>= 1``.

    Returns:
      ``(carry_T, hs)`` with the final carry and the outputs ``[T, B, H]``, as
      ``nn.RNN(cell, time_major=True, return_carry=True)`` returns them.
    """
    if not supports_fused(cell):
        raise ValueError(f"no fused recurrence for cell {cell!r}")
    if xs.ndim < 2 or xs.shape[0] < 1:
        raise ValueError(f"xs must have shape [time >= 1, ..., features], got shape {xs.shape}")
    if unroll < 1:
        raise ValueError(f"unroll must be >= 1, got {unroll}")
    return cell_path(cell, "fused")(cell, params, xs, carry, unroll)
