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
what JAX's default gives a float32 matmul on this GPU as well (``benchmarks/gpu_check.sh``
measures both against float64). bfloat16 and float16 inputs use their own tensor-core dots.

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

from models.cells import INDRNN_RECURRENT_NAME, IndRNNCell
from models.fused import (
    Params,
    _activation_name,
    _cast,
    _common_dtype,
    _outer_sum,
    _previous,
)

Array = jax.Array

MAX_HIDDEN = 256  # W_h of a padded hidden size above this does not stay on chip
_MIN_TILE = 16  # Triton's smallest dot dimension
# Config values of ``jax_default_matmul_precision`` that ask for float32 accuracy.
_FLOAT32_SETTINGS = {"float32", "highest", "high", "tensorfloat32_3x", "bfloat16_3x"}


@dataclasses.dataclass(frozen=True)
class Launch:
    """How the kernels are launched: batch rows per program and warps per program."""

    block_rows: int = 16  # 32 and 64 rows were slower in the forward-only H200 probe
    num_warps: int = 4

    def __post_init__(self) -> None:
        for name in ("block_rows", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 1, got {value}")


_launch = Launch()


@contextlib.contextmanager
def launch(**settings: int) -> Iterator[Launch]:
    """Kernels traced inside this block use these ``Launch`` settings (to measure them)."""
    global _launch
    previous, _launch = _launch, dataclasses.replace(_launch, **settings)
    try:
        yield _launch
    finally:
        _launch = previous


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


# Element-wise nonlinearities and their derivative in terms of the output y = sigma(z),
# written with the primitives Pallas' Triton lowering has.
_ACT: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "tanh": (jnp.tanh, lambda y: 1.0 - y * y),
    "sigmoid": (lambda z: 1.0 / (1.0 + jnp.exp(-z)), lambda y: y * (1.0 - y)),
    "relu": (lambda z: jnp.maximum(z, 0.0), lambda y: jnp.where(y > 0, 1.0, 0.0).astype(y.dtype)),
}


def _pad(x: Array, shape: tuple[int, ...]) -> Array:
    return jnp.pad(x, [(0, n - m) for m, n in zip(x.shape, shape, strict=True)])


def _call(kernel, grid_rows: int, in_specs, out_specs, out_shape):
    compiler_params = None
    if not _interpret():
        from jax.experimental.pallas import triton as plgpu

        compiler_params = plgpu.CompilerParams(num_warps=_launch.num_warps, num_stages=1)
    return pl.pallas_call(
        kernel,
        grid=(grid_rows,),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=_interpret(),
        compiler_params=compiler_params,
    )


def _whole(shape: tuple[int, ...]) -> pl.BlockSpec:
    """Every program sees the whole array (the weights)."""
    return pl.BlockSpec(shape, lambda i: (0,) * len(shape))


def _rows(shape: tuple[int, ...]) -> pl.BlockSpec:
    """Program i sees the i-th block of ``Launch.block_rows`` batch rows of ``[..., B, H]``."""
    block = (*shape[:-2], _launch.block_rows, shape[-1])
    lead = len(shape) - 2
    return pl.BlockSpec(block, lambda i: (*(0,) * lead, i, 0))


def _sequence(shape: tuple[int, int, int], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def _padded(p: Array) -> tuple[int, int, int]:
    seq_len, batch, hidden = p.shape
    return seq_len, -(-batch // _launch.block_rows) * _launch.block_rows, padded_hidden(hidden)


def _check(p: Array, h0: Array) -> None:
    if p.ndim != 3 or h0.shape != p.shape[1:]:
        raise ValueError(f"expected p [T, B, H] and h0 [B, H], got shapes {p.shape} and {h0.shape}")
    if not supports_hidden(p.shape[-1]):
        raise ValueError(
            f"hidden size {p.shape[-1]} is over the persistent kernels' {MAX_HIDDEN} units; "
            "use models.fused"
        )


# --- Elman: h_t = sigma(p_t + h_{t-1} W_h) -----------------------------------------------


def _elman_forward_kernel(act: str, precision: Any, w_ref, p_ref, h0_ref, hs_ref):
    seq_len = p_ref.shape[0]
    w = w_ref[...]

    def step(t, carry):
        h, p_t = carry
        p_next = p_ref[jnp.minimum(t + 1, seq_len - 1)]
        h = _ACT[act][0](p_t + _matmul(h, w, precision))
        hs_ref[t] = h
        return h, p_next

    jax.lax.fori_loop(0, seq_len, step, (h0_ref[...], p_ref[0]))


def _elman_backward_kernel(act: str, precision: Any, w_t_ref, g_ref, hs_ref, dz_ref, dh0_ref):
    seq_len = g_ref.shape[0]
    w_t = w_t_ref[...]

    def step(i, carry):
        dh, g_t, h_t = carry
        t = seq_len - 1 - i
        before = jnp.maximum(t - 1, 0)
        g_prev, h_prev = g_ref[before], hs_ref[before]
        dz = (dh + g_t) * _ACT[act][1](h_t)
        dz_ref[t] = dz
        return _matmul(dz, w_t, precision), g_prev, h_prev

    last = seq_len - 1
    dh0, _, _ = jax.lax.fori_loop(
        0, seq_len, step, (jnp.zeros(dh0_ref.shape, dh0_ref.dtype), g_ref[last], hs_ref[last])
    )
    dh0_ref[...] = dh0


def _elman_hs(act: str, w_h: Array, p: Array, h0: Array) -> Array:
    """All padded states ``[T, B', H']``."""
    seq_len, rows, hidden = _padded(p)
    kernel = partial(_elman_forward_kernel, act, _dot_precision(p.dtype))
    return _call(
        kernel,
        rows // _launch.block_rows,
        [_whole((hidden, hidden)), _rows((seq_len, rows, hidden)), _rows((rows, hidden))],
        _rows((seq_len, rows, hidden)),
        _sequence((seq_len, rows, hidden), p.dtype),
    )(_pad(w_h, (hidden, hidden)), _pad(p, (seq_len, rows, hidden)), _pad(h0, (rows, hidden)))


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def elman_recurrence(act: str, w_h: Array, p: Array, h0: Array) -> Array:
    r"""All states ``h_t = sigma(p_t + h_{t-1} W_h)``, ``[T, B, H]``, of a projected input.

    ``models.fused.elman_recurrence`` with each direction's time loop as one kernel.
    """
    _check(p, h0)
    seq_len, batch, hidden = p.shape
    return _elman_hs(act, w_h, p, h0)[:, :batch, :hidden]


def _elman_fwd(act, w_h, p, h0):
    _check(p, h0)
    seq_len, batch, hidden = p.shape
    hs_padded = _elman_hs(act, w_h, p, h0)
    return hs_padded[:, :batch, :hidden], (w_h, hs_padded, h0)


def _elman_bwd(act, residuals, g_hs):
    w_h, hs_padded, h0 = residuals
    seq_len, batch, hidden = g_hs.shape
    _, rows, padded = hs_padded.shape
    kernel = partial(_elman_backward_kernel, act, _dot_precision(g_hs.dtype))
    dz, dh0 = _call(
        kernel,
        rows // _launch.block_rows,
        [_whole((padded, padded)), _rows(hs_padded.shape), _rows(hs_padded.shape)],
        [_rows(hs_padded.shape), _rows((rows, padded))],
        [_sequence(hs_padded.shape, g_hs.dtype), jax.ShapeDtypeStruct((rows, padded), h0.dtype)],
    )(_pad(w_h.T, (padded, padded)), _pad(g_hs, hs_padded.shape), hs_padded)
    dz, hs = dz[:, :batch, :hidden], hs_padded[:, :batch, :hidden]
    return _outer_sum(_previous(h0, hs), dz), dz, dh0[:batch, :hidden]


elman_recurrence.defvjp(_elman_fwd, _elman_bwd)


# --- IndRNN: h_t = sigma(p_t + b + u * h_{t-1}) ------------------------------------------


def _indrnn_forward_kernel(act: str, u_ref, b_ref, p_ref, h0_ref, hs_ref):
    seq_len = p_ref.shape[0]
    u, b = u_ref[...], b_ref[...]

    def step(t, carry):
        h, p_t = carry
        p_next = p_ref[jnp.minimum(t + 1, seq_len - 1)]
        h = _ACT[act][0](p_t + b + u * h)
        hs_ref[t] = h
        return h, p_next

    jax.lax.fori_loop(0, seq_len, step, (h0_ref[...], p_ref[0]))


def _indrnn_backward_kernel(act: str, u_ref, g_ref, hs_ref, h0_ref, dz_ref, dh0_ref, dub_ref):
    seq_len = g_ref.shape[0]
    u, h0 = u_ref[...], h0_ref[...]

    def step(i, carry):
        dh, du, db, g_t, h_t = carry
        t = seq_len - 1 - i
        before = jnp.maximum(t - 1, 0)
        h_prev = jnp.where(t > 0, hs_ref[before], h0)
        g_prev = g_ref[before]
        dz = (dh + g_t) * _ACT[act][1](h_t)
        dz_ref[t] = dz
        return u * dz, du + h_prev * dz, db + dz, g_prev, h_prev

    zeros = jnp.zeros(h0.shape, h0.dtype)
    last = seq_len - 1
    dh0, du, db, _, _ = jax.lax.fori_loop(
        0, seq_len, step, (zeros, zeros, zeros, g_ref[last], hs_ref[last])
    )
    dh0_ref[...] = dh0
    dub_ref[0] = du
    dub_ref[1] = db


def _indrnn_hs(act: str, u: Array, b: Array, p: Array, h0: Array) -> Array:
    seq_len, rows, hidden = _padded(p)
    return _call(
        partial(_indrnn_forward_kernel, act),
        rows // _launch.block_rows,
        [
            _whole((1, hidden)),
            _whole((1, hidden)),
            _rows((seq_len, rows, hidden)),
            _rows((rows, hidden)),
        ],
        _rows((seq_len, rows, hidden)),
        _sequence((seq_len, rows, hidden), p.dtype),
    )(
        _pad(u[None], (1, hidden)),
        _pad(b[None], (1, hidden)),
        _pad(p, (seq_len, rows, hidden)),
        _pad(h0, (rows, hidden)),
    )


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def indrnn_recurrence(act: str, u: Array, b: Array, p: Array, h0: Array) -> Array:
    r"""All states ``h_t = sigma(p_t + b + u * h_{t-1})``, ``[T, B, H]``, of a projected input.

    ``models.fused.indrnn_recurrence`` with each direction's time loop as one kernel; the
    backward kernel accumulates ``du`` and ``db`` per batch row, summed after it.
    """
    _check(p, h0)
    seq_len, batch, hidden = p.shape
    return _indrnn_hs(act, u, b, p, h0)[:, :batch, :hidden]


def _indrnn_fwd(act, u, b, p, h0):
    _check(p, h0)
    seq_len, batch, hidden = p.shape
    hs_padded = _indrnn_hs(act, u, b, p, h0)
    return hs_padded[:, :batch, :hidden], (u, hs_padded, h0)


def _indrnn_bwd(act, residuals, g_hs):
    u, hs_padded, h0 = residuals
    seq_len, batch, hidden = g_hs.shape
    _, rows, padded = hs_padded.shape
    dz, dh0, dub = _call(
        partial(_indrnn_backward_kernel, act),
        rows // _launch.block_rows,
        [
            _whole((1, padded)),
            _rows(hs_padded.shape),
            _rows(hs_padded.shape),
            _rows((rows, padded)),
        ],
        [_rows(hs_padded.shape), _rows((rows, padded)), _rows((2, rows, padded))],
        [
            _sequence(hs_padded.shape, g_hs.dtype),
            jax.ShapeDtypeStruct((rows, padded), h0.dtype),
            jax.ShapeDtypeStruct((2, rows, padded), h0.dtype),
        ],
    )(
        _pad(u[None], (1, padded)),
        _pad(g_hs, hs_padded.shape),
        hs_padded,
        _pad(h0, (rows, padded)),
    )
    du, db = dub[:, :batch, :hidden].sum(axis=1)
    return du, db, dz[:, :batch, :hidden], dh0[:batch, :hidden]


indrnn_recurrence.defvjp(_indrnn_fwd, _indrnn_bwd)


# --- Flax cells -> kernels ---------------------------------------------------------------


def _flat_batch(xs: Array, carry: Array) -> tuple[Array, Array, tuple[int, ...]]:
    """The kernels take one batch axis: ``[T, *batch, F] -> [T, prod(batch), F]``."""
    batch = carry.shape[:-1]
    return xs.reshape(xs.shape[0], -1, xs.shape[-1]), carry.reshape(-1, carry.shape[-1]), batch


def _simple(cell: nn.SimpleCell, params: Params, xs: Array, carry: Array):
    w_i, b, w_h = params["i"]["kernel"], params["i"]["bias"], params["h"]["kernel"]
    dtype = _common_dtype(w_i, b, w_h, xs, carry)
    w_i, b, w_h, xs, carry = _cast((w_i, b, w_h, xs, carry), dtype)
    xs, h0, batch = _flat_batch(xs, carry)
    hs = elman_recurrence(_activation_name(cell.activation_fn), w_h, xs @ w_i + b, h0)
    hs = hs.reshape(hs.shape[0], *batch, hs.shape[-1])
    return hs[-1], hs


def _indrnn(cell: IndRNNCell, params: Params, xs: Array, carry: Array):
    w_i, b, u = params["i"]["kernel"], params["i"]["bias"], params[INDRNN_RECURRENT_NAME]
    dtype = _common_dtype(w_i, b, u, xs, carry)
    w_i, b, u, xs, carry = _cast((w_i, b, u, xs, carry), dtype)
    xs, h0, batch = _flat_batch(xs, carry)
    hs = indrnn_recurrence(_activation_name(cell.activation_fn), u, b, xs @ w_i, h0)
    hs = hs.reshape(hs.shape[0], *batch, hs.shape[-1])
    return hs[-1], hs


_PALLAS: dict[type, Callable[..., tuple[Array, Array]]] = {
    nn.SimpleCell: _simple,
    IndRNNCell: _indrnn,
}


def supports_pallas(cell: nn.RNNCellBase) -> bool:
    """Whether ``pallas_scan_cell`` has kernels for this cell.

    Covered: ``SimpleCell`` (not ``residual``) and ``IndRNNCell`` with tanh, sigmoid or
    ReLU, without a separate computation ``dtype``, of at most ``MAX_HIDDEN`` units.
    """
    if type(cell) not in _PALLAS or getattr(cell, "dtype", None) is not None:
        return False
    if getattr(cell, "residual", False) or _activation_name(cell.activation_fn) is None:
        return False
    return supports_hidden(cell.features)


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
    del unroll
    if not supports_pallas(cell):
        raise ValueError(f"no Pallas kernel for cell {cell!r}; see supports_pallas")
    if xs.ndim < 3 or xs.shape[0] < 1:
        raise ValueError(f"xs must have shape [T >= 1, *batch, features], got shape {xs.shape}")
    return _PALLAS[type(cell)](cell, params, xs, carry)
