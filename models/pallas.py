r"""Persistent recurrences: the whole time loop of a layer as one Pallas kernel per direction.

``models.fused`` runs the loop as a ``lax.scan``: on a GPU every time step is a few tiny kernel
launches and a trip through the while loop, about 6.6 µs at hidden 128, batch 50 on an H200
for 1.6 MFLOP of work. Here, as in cuDNN's persistent algorithm (Diamos et al., "Persistent
RNNs: Stashing Recurrent Weights On-Chip", ICML 2016), one launch runs all T steps: a grid
over blocks of ``Launch.block_rows`` batch rows (rows are independent, so the blocks never
synchronize), each program loading the recurrent weights once and keeping the state on chip
from one step to the next. Each step's input is loaded one step ahead, so the load does not
wait behind the step's product.

The contract is ``models.fused``'s, and these functions are drop-ins for its recurrences
(same arguments, same results up to rounding):

* forward kernel: ``h_t = sigma(p_t + h_{t-1} W_h)`` (Elman) or ``sigma(p_t + b + u * h_{t-1})``
  (IndRNN) for a projected input ``p = x W_i`` computed by XLA before it;
* backward kernel: the reverse loop carries only the state cotangent and writes the
  pre-activation cotangents ``dz [T, B, H]`` (IndRNN: also per-row ``du``, ``db``);
* after it, in XLA: ``dW_h = H_{prev}^T dz`` as one matmul, and autodiff of the projection.

Sizes need not fit the kernel: the batch is padded to a multiple of ``Launch.block_rows`` and the
hidden size to a power of two (at least 16, Triton's smallest dot), with zeros that the
padded weights keep out of the real units; the caller never sees the padding. The hidden
size is at most ``MAX_HIDDEN``: each program holds ``W_h`` on chip.

Precision is the caller's, as for any JAX matmul: under ``jax.default_matmul_precision``
(or its config flag) ``"float32"``/``"highest"``/``"high"``, the in-kernel products use
three TF32 products per product (Triton's ``tf32x3``, float32 accuracy); otherwise TF32,
what JAX's default gives a float32 matmul on the GPU too (on an H200, relative errors against
float64 of 2.9e-4 for XLA's default matmul and 2.2e-4 for the forward kernel at T=400; 8.7e-8
and 2.7e-7 at ``"float32"``: ``results/gpu_h200/pallas_launch.txt``, section 0). bfloat16
and float16 inputs use their own tensor-core dots.

On a backend without the Pallas GPU lowering (the CPU, CI) the same kernels run through
Pallas' interpreter, and XLA computes their products at the caller's precision.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from models.cells import IndRNNCell, cell_path, register_path
from models.fused import (
    Params,
    _outer_sum,
    _previous,
    elman_operands,
    gru_operands,
    indrnn_operands,
    lstm_operands,
    supports_fused,
)

Array = jax.Array

MAX_HIDDEN = 256  # W_h of a padded hidden size above this does not stay on chip
_MIN_TILE = 16  # Triton's smallest dot dimension
# Config values of ``jax_default_matmul_precision`` that ask for float32 accuracy.
_FLOAT32_SETTINGS = {"float32", "highest", "high", "tensorfloat32_3x", "bfloat16_3x"}


@dataclasses.dataclass(frozen=True)
class Launch:
    """How a kernel is launched: batch rows per program and warps per program."""

    block_rows: int = 16
    num_warps: int = 4

    def __post_init__(self) -> None:
        for name in ("block_rows", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 1, got {value}")


# Measured on an H200 (results/gpu_h200/pallas_launch.txt, gradient at T=400, B=50, H=128):
# 16 rows and 4 warps for the vanilla RNN (3.05 us per step; 8 warps 3.25, 32 rows 5.4+),
# 8 warps for the element-wise IndRNN (1.27 us; 4 warps 1.35). The gated cells take the
# vanilla RNN's setting until measured.
LAUNCH: dict[str, Launch] = {
    "elman": Launch(16, 4),
    "indrnn": Launch(16, 8),
    "lstm": Launch(16, 4),
    "gru": Launch(16, 4),
}
_override: Launch | None = None


@contextlib.contextmanager
def launch(**settings: int) -> Iterator[Launch]:
    """Every kernel traced inside this block is launched with these ``Launch`` settings."""
    global _override
    previous, _override = _override, Launch(**settings)
    try:
        yield _override
    finally:
        _override = previous


def _launch(kind: str) -> Launch:
    return LAUNCH[kind] if _override is None else _override


def _interpret() -> bool:
    return jax.default_backend() != "gpu"


def padded_hidden(hidden: int) -> int:
    """The hidden size the kernels run at: the next power of two, at least 16."""
    return max(_MIN_TILE, 1 << (hidden - 1).bit_length())


def supports_hidden(hidden: int) -> bool:
    """Whether a layer of ``hidden`` units fits the persistent kernels."""
    return padded_hidden(hidden) <= MAX_HIDDEN


def _dot_precision(dtype: Any) -> Any:
    """The in-kernel product's precision, read from JAX's matmul-precision setting at trace time.

    The interpreter hands the product to XLA, so it gets the setting as any matmul does.
    """
    if _interpret():
        return None
    if dtype != jnp.float32:
        return jax.lax.Precision.HIGHEST if dtype == jnp.float64 else None
    setting = jax.config.jax_default_matmul_precision
    if setting is not None and str(setting).lower() in _FLOAT32_SETTINGS:
        return jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    return jax.lax.Precision.DEFAULT


def _matmul(a: Array, b: Array, precision: Any) -> Array:
    return jax.lax.dot_general(
        a, b, (((1,), (0,)), ((), ())), precision=precision, preferred_element_type=a.dtype
    )


def _sigmoid(z: Array) -> Array:
    return 1.0 / (1.0 + jnp.exp(-z))


# Element-wise nonlinearities and their derivative in terms of the output y = sigma(z),
# written with the primitives Pallas' Triton lowering has.
_ACT: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "tanh": (jnp.tanh, lambda y: 1.0 - y * y),
    "sigmoid": (_sigmoid, lambda y: y * (1.0 - y)),
    "relu": (lambda z: jnp.maximum(z, 0.0), lambda y: jnp.where(y > 0, 1.0, 0.0).astype(y.dtype)),
}


def _pad(x: Array, shape: tuple[int, ...]) -> Array:
    return jnp.pad(x, [(0, n - m) for m, n in zip(x.shape, shape, strict=True)])


def _time_loop(seq_len: int, load, body, state, *, reverse: bool = False):
    """``state = body(t, state, load(t))`` for every t (in reverse with ``reverse``), the
    loads of step t+1 issued before step t's work, so they do not wait behind it."""

    def step(i, carry):
        state, loaded = carry
        t = seq_len - 1 - i if reverse else i
        upcoming = load(jnp.maximum(t - 1, 0) if reverse else jnp.minimum(t + 1, seq_len - 1))
        return body(t, state, loaded), upcoming

    first = seq_len - 1 if reverse else 0
    return jax.lax.fori_loop(0, seq_len, step, (state, load(first)))[0]


def _call(kernel, settings: Launch, rows: int, in_specs, out_specs, out_shape):
    compiler_params = None
    if not _interpret():
        from jax.experimental.pallas import triton as plgpu

        compiler_params = plgpu.CompilerParams(num_warps=settings.num_warps, num_stages=1)
    return pl.pallas_call(
        kernel,
        grid=(rows // settings.block_rows,),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=_interpret(),
        compiler_params=compiler_params,
    )


def _whole(shape: tuple[int, ...]) -> pl.BlockSpec:
    """Every program sees the whole array (the weights)."""
    return pl.BlockSpec(shape, lambda i: (0,) * len(shape))


def _rows(shape: tuple[int, ...], settings: Launch) -> pl.BlockSpec:
    """Program i sees the i-th block of ``settings.block_rows`` batch rows of ``[..., B, H]``."""
    block = (*shape[:-2], settings.block_rows, shape[-1])
    lead = len(shape) - 2
    return pl.BlockSpec(block, lambda i: (*(0,) * lead, i, 0))


def _out(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def _padded(p: Array, h0: Array, settings: Launch) -> tuple[int, int, int]:
    """``(T, B', H')``: the kernels' shape of a sequence of states ``[T, B, H]``."""
    batch, hidden = h0.shape
    rows = -(-batch // settings.block_rows) * settings.block_rows
    return p.shape[0], rows, padded_hidden(hidden)


def _check(p: Array, h0: Array, gates: int = 1) -> None:
    if p.ndim != 3 or h0.ndim != 2 or p.shape[1:] != (h0.shape[0], gates * h0.shape[1]):
        raise ValueError(
            f"expected p [T, B, {gates} * H] and h0 [B, H], got shapes {p.shape} and {h0.shape}"
        )
    if not supports_hidden(h0.shape[-1]):
        raise ValueError(
            f"hidden size {h0.shape[-1]} is over the persistent kernels' {MAX_HIDDEN} units; "
            "use models.fused"
        )


def _gate_major(x: Array, gates: int, shape: tuple[int, int, int]) -> Array:
    """``[T, B, G * H] -> [G, T, B', H']``, zero-padded, one gate's block per leading index."""
    seq_len, batch, _ = x.shape
    x = jnp.moveaxis(x.reshape(seq_len, batch, gates, -1), 2, 0)
    return _pad(x, (gates, *shape))


def _gate_minor(x: Array, batch: int, hidden: int) -> Array:
    """``[G, T, B', H'] -> [T, B, G * H]``, the padding dropped."""
    x = x[:, :, :batch, :hidden]
    return jnp.moveaxis(x, 0, 2).reshape(x.shape[1], batch, -1)


def _gate_weights(w_h: Array, gates: int, hidden: int) -> Array:
    """``W_h [H, G * H] -> [G, H', H']``: gate k's recurrent matrix at index k, zero-padded."""
    w = jnp.moveaxis(w_h.reshape(w_h.shape[0], gates, -1), 1, 0)
    return _pad(w, (gates, hidden, hidden))


# --- Elman: h_t = sigma(p_t + h_{t-1} W_h) -----------------------------------------------


def _elman_forward_kernel(act: str, precision: Any, w_ref, p_ref, h0_ref, hs_ref):
    w = w_ref[...]

    def body(t, h, p_t):
        h = _ACT[act][0](p_t + _matmul(h, w, precision))
        hs_ref[t] = h
        return h

    _time_loop(p_ref.shape[0], lambda t: p_ref[t], body, h0_ref[...])


def _elman_backward_kernel(act: str, precision: Any, w_t_ref, g_ref, hs_ref, dz_ref, dh0_ref):
    w_t = w_t_ref[...]

    def body(t, dh, loaded):
        g_t, h_t = loaded
        dz = (dh + g_t) * _ACT[act][1](h_t)
        dz_ref[t] = dz
        return _matmul(dz, w_t, precision)

    zeros = jnp.zeros(dh0_ref.shape, dh0_ref.dtype)
    load = lambda t: (g_ref[t], hs_ref[t])  # noqa: E731
    dh0_ref[...] = _time_loop(g_ref.shape[0], load, body, zeros, reverse=True)


def _elman_hs(act: str, w_h: Array, p: Array, h0: Array) -> Array:
    """All padded states ``[T, B', H']``."""
    settings = _launch("elman")
    seq_len, rows, hidden = shape = _padded(p, h0, settings)
    return _call(
        partial(_elman_forward_kernel, act, _dot_precision(p.dtype)),
        settings,
        rows,
        [_whole((hidden, hidden)), _rows(shape, settings), _rows((rows, hidden), settings)],
        _rows(shape, settings),
        _out(shape, p.dtype),
    )(_pad(w_h, (hidden, hidden)), _pad(p, shape), _pad(h0, (rows, hidden)))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def elman_recurrence(act: str, w_h: Array, p: Array, h0: Array) -> Array:
    r"""All states ``h_t = sigma(p_t + h_{t-1} W_h)``, ``[T, B, H]``, of a projected input.

    ``models.fused.elman_recurrence`` with each direction's time loop as one kernel.
    """
    _check(p, h0)
    return _elman_hs(act, w_h, p, h0)[:, : h0.shape[0], : h0.shape[1]]


def _elman_fwd(act, w_h, p, h0):
    _check(p, h0)
    hs_padded = _elman_hs(act, w_h, p, h0)
    return hs_padded[:, : h0.shape[0], : h0.shape[1]], (w_h, hs_padded, h0)


def _elman_bwd(act, residuals, g_hs):
    w_h, hs_padded, h0 = residuals
    batch, hidden = h0.shape
    _, rows, padded = shape = hs_padded.shape
    settings = _launch("elman")
    dz, dh0 = _call(
        partial(_elman_backward_kernel, act, _dot_precision(g_hs.dtype)),
        settings,
        rows,
        [_whole((padded, padded)), _rows(shape, settings), _rows(shape, settings)],
        [_rows(shape, settings), _rows((rows, padded), settings)],
        [_out(shape, g_hs.dtype), _out((rows, padded), h0.dtype)],
    )(_pad(w_h.T, (padded, padded)), _pad(g_hs, shape), hs_padded)
    dz, hs = dz[:, :batch, :hidden], hs_padded[:, :batch, :hidden]
    return _outer_sum(_previous(h0, hs), dz), dz, dh0[:batch, :hidden]


elman_recurrence.defvjp(_elman_fwd, _elman_bwd)


# --- IndRNN: h_t = sigma(p_t + b + u * h_{t-1}) ------------------------------------------


def _indrnn_forward_kernel(act: str, u_ref, b_ref, p_ref, h0_ref, hs_ref):
    u, b = u_ref[...], b_ref[...]

    def body(t, h, p_t):
        h = _ACT[act][0](p_t + b + u * h)
        hs_ref[t] = h
        return h

    _time_loop(p_ref.shape[0], lambda t: p_ref[t], body, h0_ref[...])


def _indrnn_backward_kernel(act: str, u_ref, g_ref, hs_ref, h0_ref, dz_ref, dh0_ref, dub_ref):
    u, h0 = u_ref[...], h0_ref[...]

    def load(t):
        return g_ref[t], hs_ref[t], jnp.where(t > 0, hs_ref[jnp.maximum(t - 1, 0)], h0)

    def body(t, carry, loaded):
        dh, du, db = carry
        g_t, h_t, h_prev = loaded
        dz = (dh + g_t) * _ACT[act][1](h_t)
        dz_ref[t] = dz
        return u * dz, du + h_prev * dz, db + dz

    zeros = jnp.zeros(h0.shape, h0.dtype)
    dh0, du, db = _time_loop(g_ref.shape[0], load, body, (zeros, zeros, zeros), reverse=True)
    dh0_ref[...] = dh0
    dub_ref[0] = du
    dub_ref[1] = db


def _indrnn_hs(act: str, u: Array, b: Array, p: Array, h0: Array) -> Array:
    settings = _launch("indrnn")
    seq_len, rows, hidden = shape = _padded(p, h0, settings)
    return _call(
        partial(_indrnn_forward_kernel, act),
        settings,
        rows,
        [
            _whole((1, hidden)),
            _whole((1, hidden)),
            _rows(shape, settings),
            _rows((rows, hidden), settings),
        ],
        _rows(shape, settings),
        _out(shape, p.dtype),
    )(
        _pad(u[None], (1, hidden)),
        _pad(b[None], (1, hidden)),
        _pad(p, shape),
        _pad(h0, (rows, hidden)),
    )


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def indrnn_recurrence(act: str, u: Array, b: Array, p: Array, h0: Array) -> Array:
    r"""All states ``h_t = sigma(p_t + b + u * h_{t-1})``, ``[T, B, H]``, of a projected input.

    ``models.fused.indrnn_recurrence`` with each direction's time loop as one kernel; the
    backward kernel accumulates ``du`` and ``db`` per batch row, summed after it.
    """
    _check(p, h0)
    return _indrnn_hs(act, u, b, p, h0)[:, : h0.shape[0], : h0.shape[1]]


def _indrnn_fwd(act, u, b, p, h0):
    _check(p, h0)
    hs_padded = _indrnn_hs(act, u, b, p, h0)
    return hs_padded[:, : h0.shape[0], : h0.shape[1]], (u, hs_padded, h0)


def _indrnn_bwd(act, residuals, g_hs):
    u, hs_padded, h0 = residuals
    batch, hidden = h0.shape
    _, rows, padded = shape = hs_padded.shape
    settings = _launch("indrnn")
    dz, dh0, dub = _call(
        partial(_indrnn_backward_kernel, act),
        settings,
        rows,
        [
            _whole((1, padded)),
            _rows(shape, settings),
            _rows(shape, settings),
            _rows((rows, padded), settings),
        ],
        [
            _rows(shape, settings),
            _rows((rows, padded), settings),
            _rows((2, rows, padded), settings),
        ],
        [
            _out(shape, g_hs.dtype),
            _out((rows, padded), h0.dtype),
            _out((2, rows, padded), h0.dtype),
        ],
    )(_pad(u[None], (1, padded)), _pad(g_hs, shape), hs_padded, _pad(h0, (rows, padded)))
    du, db = dub[:, :batch, :hidden].sum(axis=1)
    return du, db, dz[:, :batch, :hidden], dh0[:batch, :hidden]


indrnn_recurrence.defvjp(_indrnn_fwd, _indrnn_bwd)


# --- LSTM: [i, f, g, o] = [sigmoid, sigmoid, tanh, sigmoid](p_t + h_{t-1} W_h);
#     c_t = f c_{t-1} + i g; h_t = o tanh(c_t) ----------------------------------------------


def _lstm_forward_kernel(precision: Any, w_ref, p_ref, c0_ref, h0_ref, hs_ref, cs_ref, gates_ref):
    w = [w_ref[k] for k in range(4)]

    def body(t, carry, p_t):
        c, h = carry
        z = [p_t[k] + _matmul(h, w[k], precision) for k in range(4)]
        i, f, g, o = _sigmoid(z[0]), _sigmoid(z[1]), jnp.tanh(z[2]), _sigmoid(z[3])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        hs_ref[t], cs_ref[t] = h, c
        for k, gate in enumerate((i, f, g, o)):
            gates_ref[k, t] = gate
        return c, h

    load = lambda t: tuple(p_ref[k, t] for k in range(4))  # noqa: E731
    _time_loop(p_ref.shape[1], load, body, (c0_ref[...], h0_ref[...]))


def _lstm_backward_kernel(
    precision: Any, w_t_ref, g_ref, g_c_ref, cs_ref, c0_ref, gates_ref, dz_ref, dc0_ref, dh0_ref
):
    w_t = [w_t_ref[k] for k in range(4)]
    c0 = c0_ref[...]

    def load(t):
        c_prev = jnp.where(t > 0, cs_ref[jnp.maximum(t - 1, 0)], c0)
        return g_ref[t], cs_ref[t], c_prev, tuple(gates_ref[k, t] for k in range(4))

    def body(t, carry, loaded):
        dh, dc = carry
        g_t, c_t, c_prev, (i, f, g, o) = loaded
        dh = dh + g_t
        tanh_c = jnp.tanh(c_t)
        dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
        dz = (
            dc * g * i * (1.0 - i),
            dc * c_prev * f * (1.0 - f),
            dc * i * (1.0 - g * g),
            dh * tanh_c * o * (1.0 - o),
        )
        dh = _matmul(dz[0], w_t[0], precision)
        for k in range(4):
            dz_ref[k, t] = dz[k]
            if k:
                dh = dh + _matmul(dz[k], w_t[k], precision)
        return dh, dc * f

    zeros = jnp.zeros(c0.shape, c0.dtype)
    dh0, dc0 = _time_loop(g_ref.shape[0], load, body, (zeros, g_c_ref[...]), reverse=True)
    dh0_ref[...], dc0_ref[...] = dh0, dc0


def _lstm_states(w_h: Array, p: Array, c0: Array, h0: Array):
    settings = _launch("lstm")
    seq_len, rows, hidden = shape = _padded(p, h0, settings)
    state = _rows((rows, hidden), settings)
    return _call(
        partial(_lstm_forward_kernel, _dot_precision(p.dtype)),
        settings,
        rows,
        [_whole((4, hidden, hidden)), _rows((4, *shape), settings), state, state],
        [_rows(shape, settings), _rows(shape, settings), _rows((4, *shape), settings)],
        [_out(shape, p.dtype), _out(shape, p.dtype), _out((4, *shape), p.dtype)],
    )(
        _gate_weights(w_h, 4, hidden),
        _gate_major(p, 4, shape),
        _pad(c0, (rows, hidden)),
        _pad(h0, (rows, hidden)),
    )


@jax.custom_vjp
def lstm_recurrence(w_h: Array, p: Array, c0: Array, h0: Array) -> tuple[Array, Array]:
    r"""LSTM states ``(hs [T, B, H], c_T)`` of a projected input ``p = x W_i + b``.

    ``models.fused.lstm_recurrence`` with each direction's time loop as one kernel: the
    forward kernel keeps the four gates' ``W_h`` blocks on chip and stores the cells and the
    gates for the backward kernel, which carries ``(dh, dc)`` and writes ``dz [T, B, 4H]``.
    """
    _check(p, h0, gates=4)
    hs, cs, _ = _lstm_states(w_h, p, c0, h0)
    batch, hidden = h0.shape
    return hs[:, :batch, :hidden], cs[-1, :batch, :hidden]


def _lstm_fwd(w_h, p, c0, h0):
    _check(p, h0, gates=4)
    hs, cs, gates = _lstm_states(w_h, p, c0, h0)
    batch, hidden = h0.shape
    out = (hs[:, :batch, :hidden], cs[-1, :batch, :hidden])
    return out, (w_h, hs, cs, gates, c0, h0)


def _lstm_bwd(residuals, cotangents):
    w_h, hs_padded, cs, gates, c0, h0 = residuals
    g_hs, g_c_last = cotangents
    batch, hidden = h0.shape
    _, rows, padded = shape = hs_padded.shape
    settings = _launch("lstm")
    state = _rows((rows, padded), settings)
    dz, dc0, dh0 = _call(
        partial(_lstm_backward_kernel, _dot_precision(g_hs.dtype)),
        settings,
        rows,
        [
            _whole((4, padded, padded)),
            _rows(shape, settings),
            state,
            _rows(shape, settings),
            state,
            _rows((4, *shape), settings),
        ],
        [_rows((4, *shape), settings), state, state],
        [_out((4, *shape), g_hs.dtype), _out((rows, padded), h0.dtype)]
        + [_out((rows, padded), h0.dtype)],
    )(
        _gate_weights(w_h, 4, padded).transpose(0, 2, 1),
        _pad(g_hs, shape),
        _pad(g_c_last, (rows, padded)),
        cs,
        _pad(c0, (rows, padded)),
        gates,
    )
    dz = _gate_minor(dz, batch, hidden)
    hs = hs_padded[:, :batch, :hidden]
    return _outer_sum(_previous(h0, hs), dz), dz, dc0[:batch, :hidden], dh0[:batch, :hidden]


lstm_recurrence.defvjp(_lstm_fwd, _lstm_bwd)


# --- GRU (Flax): r, z = sigmoid(p_{r,z} + h W_{r,z}); n = tanh(p_n + r (h W_n + b_n));
#     h_t = (1 - z) n + z h_{t-1} -------------------------------------------------------


def _gru_forward_kernel(precision: Any, w_ref, b_ref, p_ref, h0_ref, hs_ref, saved_ref):
    w = [w_ref[k] for k in range(3)]
    b_hn = b_ref[...]

    def body(t, h, p_t):
        r = _sigmoid(p_t[0] + _matmul(h, w[0], precision))
        z = _sigmoid(p_t[1] + _matmul(h, w[1], precision))
        hn = _matmul(h, w[2], precision) + b_hn
        n = jnp.tanh(p_t[2] + r * hn)
        h = (1.0 - z) * n + z * h
        hs_ref[t] = h
        for k, value in enumerate((r, z, n, hn)):
            saved_ref[k, t] = value
        return h

    load = lambda t: tuple(p_ref[k, t] for k in range(3))  # noqa: E731
    _time_loop(p_ref.shape[1], load, body, h0_ref[...])


def _gru_backward_kernel(
    precision: Any, w_t_ref, g_ref, hs_ref, h0_ref, saved_ref, dp_ref, dh0_ref
):
    """``dp_ref [4, T, B, H]`` gets ``dr, dz, dn`` (the projected input's cotangent) and
    ``r dn`` (with ``dr, dz``, the recurrent pre-activation's)."""
    w_t = [w_t_ref[k] for k in range(3)]
    h0 = h0_ref[...]

    def load(t):
        h_prev = jnp.where(t > 0, hs_ref[jnp.maximum(t - 1, 0)], h0)
        return g_ref[t], h_prev, tuple(saved_ref[k, t] for k in range(4))

    def body(t, dh, loaded):
        g_t, h_prev, (r, z, n, hn) = loaded
        dh = dh + g_t
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dz = dh * (h_prev - n) * z * (1.0 - z)
        dr = dn * hn * r * (1.0 - r)
        dp_ref[0, t], dp_ref[1, t], dp_ref[2, t], dp_ref[3, t] = dr, dz, dn, r * dn
        return (
            dh * z
            + _matmul(dr, w_t[0], precision)
            + _matmul(dz, w_t[1], precision)
            + _matmul(r * dn, w_t[2], precision)
        )

    zeros = jnp.zeros(h0.shape, h0.dtype)
    dh0_ref[...] = _time_loop(g_ref.shape[0], load, body, zeros, reverse=True)


def _gru_states(w_h: Array, b_hn: Array, p: Array, h0: Array):
    settings = _launch("gru")
    seq_len, rows, hidden = shape = _padded(p, h0, settings)
    return _call(
        partial(_gru_forward_kernel, _dot_precision(p.dtype)),
        settings,
        rows,
        [
            _whole((3, hidden, hidden)),
            _whole((1, hidden)),
            _rows((3, *shape), settings),
            _rows((rows, hidden), settings),
        ],
        [_rows(shape, settings), _rows((4, *shape), settings)],
        [_out(shape, p.dtype), _out((4, *shape), p.dtype)],
    )(
        _gate_weights(w_h, 3, hidden),
        _pad(b_hn[None], (1, hidden)),
        _gate_major(p, 3, shape),
        _pad(h0, (rows, hidden)),
    )


@jax.custom_vjp
def gru_recurrence(w_h: Array, b_hn: Array, p: Array, h0: Array) -> Array:
    r"""GRU states ``[T, B, H]`` of a projected input ``p = x W_i + b_i`` (Flax's GRUCell).

    ``models.fused.gru_recurrence`` with each direction's time loop as one kernel; the
    backward kernel writes ``dp`` and the recurrent pre-activation's cotangent ``da``, from
    which ``dW_h`` and ``db_n`` are one matmul and one sum after it.
    """
    _check(p, h0, gates=3)
    return _gru_states(w_h, b_hn, p, h0)[0][:, : h0.shape[0], : h0.shape[1]]


def _gru_fwd(w_h, b_hn, p, h0):
    _check(p, h0, gates=3)
    hs, saved = _gru_states(w_h, b_hn, p, h0)
    return hs[:, : h0.shape[0], : h0.shape[1]], (w_h, hs, saved, h0)


def _gru_bwd(residuals, g_hs):
    w_h, hs_padded, saved, h0 = residuals
    batch, hidden = h0.shape
    _, rows, padded = shape = hs_padded.shape
    settings = _launch("gru")
    state = _rows((rows, padded), settings)
    dp, dh0 = _call(
        partial(_gru_backward_kernel, _dot_precision(g_hs.dtype)),
        settings,
        rows,
        [
            _whole((3, padded, padded)),
            _rows(shape, settings),
            _rows(shape, settings),
            state,
            _rows((4, *shape), settings),
        ],
        [_rows((4, *shape), settings), state],
        [_out((4, *shape), g_hs.dtype), _out((rows, padded), h0.dtype)],
    )(
        _gate_weights(w_h, 3, padded).transpose(0, 2, 1),
        _pad(g_hs, shape),
        hs_padded,
        _pad(h0, (rows, padded)),
        saved,
    )
    hs = hs_padded[:, :batch, :hidden]
    da = _gate_minor(dp[jnp.array([0, 1, 3])], batch, hidden)
    db_hn = jnp.sum(da[..., 2 * hidden :], axis=(0, 1))
    return (
        _outer_sum(_previous(h0, hs), da),
        db_hn,
        _gate_minor(dp[:3], batch, hidden),
        dh0[:batch, :hidden],
    )


gru_recurrence.defvjp(_gru_fwd, _gru_bwd)


# --- Flax cells -> kernels ---------------------------------------------------------------


def _flat(p: Array, *states: Array) -> tuple[Array, ...]:
    """The kernels take one batch axis: ``p [T, *batch, G] -> [T, N, G]`` and each state
    ``[*batch, H] -> [N, H]``."""
    return p.reshape(p.shape[0], -1, p.shape[-1]), *(s.reshape(-1, s.shape[-1]) for s in states)


def _unflat(hs: Array, h0: Array) -> tuple[Array, Array]:
    """``(h_T, hs)`` with ``hs [T, N, H]`` restored to ``[T, *batch, H]``, ``h0``'s batch."""
    hs = hs.reshape(hs.shape[0], *h0.shape)
    return hs[-1], hs


# The per-cell operands are models.fused's; ``unroll`` is unused: the kernels loop on chip.
@register_path("pallas", "simple")
def _simple(cell: nn.SimpleCell, params: Params, xs: Array, carry: Array, unroll: int):
    act, w_h, p, h0 = elman_operands(cell, params, xs, carry)
    return _unflat(elman_recurrence(act, w_h, *_flat(p, h0)), h0)


@register_path("pallas", "indrnn")
def _indrnn(cell: IndRNNCell, params: Params, xs: Array, carry: Array, unroll: int):
    act, u, b, p, h0 = indrnn_operands(cell, params, xs, carry)
    return _unflat(indrnn_recurrence(act, u, b, *_flat(p, h0)), h0)


@register_path("pallas", "lstm")
def _lstm(cell: nn.RNNCellBase, params: Params, xs: Array, carry: tuple[Array, Array], unroll: int):
    w_h, p, c0, h0 = lstm_operands(cell, params, xs, carry)
    hs, c_last = lstm_recurrence(w_h, *_flat(p, c0, h0))
    h_last, hs = _unflat(hs, h0)
    return (c_last.reshape(c0.shape), h_last), hs


@register_path("pallas", "gru")
def _gru(cell: nn.GRUCell, params: Params, xs: Array, carry: Array, unroll: int):
    w_h, b_hn, p, h0 = gru_operands(cell, params, xs, carry)
    return _unflat(gru_recurrence(w_h, b_hn, *_flat(p, h0)), h0)


def supports_pallas(cell: nn.RNNCellBase) -> bool:
    """Whether ``pallas_scan_cell`` has kernels for this cell.

    Covered: the ``models.cells.CELLS`` types with a ``"pallas"`` path, as
    ``models.fused.supports_fused`` covers them, up to ``MAX_HIDDEN`` units:
    ``SimpleCell`` (not ``residual``) and ``IndRNNCell`` with tanh, sigmoid or ReLU;
    ``LSTMCell``, ``OptimizedLSTMCell`` and ``GRUCell`` with their default sigmoid gates and
    tanh activation.
    """
    return (
        cell_path(cell, "pallas") is not None
        and supports_fused(cell)
        and supports_hidden(cell.features)
    )


def pallas_scan_cell(
    cell: nn.RNNCellBase, params: Params, xs: Array, carry: Array, *, unroll: int = 1
) -> tuple[Array, Array]:
    """Run ``cell``'s recurrence over time-major inputs with the persistent kernels.

    The arguments and results are ``models.fused.fused_scan_cell``'s (``unroll`` is accepted
    for that signature and unused: the kernels loop over time on chip).

    Raises:
      ValueError: for a cell ``supports_pallas`` rejects, or inputs not shaped
        ``[T >= 1, *batch, features]``.
    """
    if not supports_pallas(cell):
        raise ValueError(f"no Pallas kernel for cell {cell!r}; see supports_pallas")
    if xs.ndim < 3 or xs.shape[0] < 1:
        raise ValueError(f"xs must have shape [T >= 1, *batch, features], got shape {xs.shape}")
    return cell_path(cell, "pallas")(cell, params, xs, carry, unroll)
