"""Sequence models: stacked recurrent layers of any cell, batch norm, and a linear head.

``RNNModel`` covers every model the paper's tables name: a vanilla tanh RNN, LSTM, GRU or
IndRNN, one layer or a deep stack (P2), optional batch norm between layers (the authors'
deep IndRNN) or on the final hidden state ("RNN + BN"), and a linear head on ``h_T``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Initializer

from models.batch_norm import BatchNorm
from models.cells import (
    CELL_NAMES,
    CELLS,
    FAST_IMPLS,
    FastImpl,
    make_cell,
    registered_cell,
)
from models.dropout import Dropout
from models.fused import fused_scan_cell, supports_fused
from models.pallas import pallas_scan_cell, supports_pallas
from models.scan_rnn import scan_cell, supports_hoisting

Array = jax.Array
Carry = Any
Impl = Literal["auto", "pallas", "fused", "hoisted", "flax"]
IMPLS: tuple[Impl, ...] = get_args(Impl)

# PyTorch's BatchNorm1d defaults (momentum 0.1 = Flax 0.9, eps 1e-5), as the authors ran.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


class _Fast(NamedTuple):
    """A fast implementation: what runs a cell (``scan_cell``'s arguments), and which cells."""

    run: Callable[..., tuple[Carry, Array]]
    supports: Callable[[nn.RNNCellBase], bool]


_FAST: dict[FastImpl, _Fast] = {
    "pallas": _Fast(pallas_scan_cell, supports_pallas),
    "fused": _Fast(fused_scan_cell, supports_fused),
    "hoisted": _Fast(scan_cell, supports_hoisting),
}


def check_impl(impl: str, allowed: tuple[str, ...] = IMPLS) -> Impl:
    """``impl`` if it is one of ``allowed`` (``IMPLS``); raises ``ValueError`` naming it."""
    if impl not in allowed:
        raise ValueError(f"unknown impl {impl!r}; expected one of {allowed}")
    return impl


class HoistedRNN(nn.Module):
    """A Flax cell run with its input projection hoisted out of the time loop.

    ``impl="fused"`` runs ``models.fused.fused_scan_cell`` (custom VJP: the backward loop
    carries only the state cotangent, weight gradients are one matmul after it);
    ``"pallas"`` runs ``models.pallas.pallas_scan_cell`` (the same split, each direction's
    time loop as one persistent kernel); ``"hoisted"`` runs ``models.scan_rnn.scan_cell``
    and lets autodiff differentiate the scan. The cell is a child module named ``cell``, so
    the parameters are created by the cell itself and the tree equals ``nn.RNN(cell)``'s:
    all are interchangeable.
    """

    cell: nn.RNNCellBase
    unroll: int = 1
    impl: FastImpl = "hoisted"

    def __post_init__(self) -> None:
        check_impl(self.impl, FAST_IMPLS)
        super().__post_init__()

    @nn.compact
    def __call__(self, xs: Array, initial_carry: Carry) -> tuple[Carry, Array]:
        """Inputs ``[T, B, F]`` and a carry; returns ``(carry_T, outputs [T, B, H])``."""
        if self.is_initializing():
            self.cell(initial_carry, xs[0])
        params = self.cell.variables["params"]
        return _FAST[self.impl].run(self.cell, params, xs, initial_carry, unroll=self.unroll)


class RNNModel(nn.Module):
    r"""Stacked RNN with a linear head on the last hidden state.

    .. math::

        h^{(0)}_t = x_t,\quad h^{(l)}_t = \mathrm{cell}_l(h^{(l)}_{t-1}, \mathrm{N}(h^{(l-1)}_t)),
        \quad y = W_o\, \mathrm{BN}(h^{(d)}_T) + b_o

    where N is the optional between-layer batch norm and dropout, and BN the optional final
    batch norm. ``y`` is linear; the loss that gives it meaning is in ``models.heads``.

    Batch norm ("RNN + BN", ``batch_norm``; between layers, ``layer_batch_norm``) keeps its
    running statistics in the ``batch_stats`` collection, the Flax way: ``train=True``
    normalizes with the batch's statistics and, when applied with
    ``mutable=["batch_stats"]``, returns the updated running averages; ``train=False``
    uses the stored averages and changes nothing. ``benchmarks.training.step.make_train_loss``
    wraps this into a pure loss for ``jax.grad`` and ``frank_wolfe`` (see there how the
    statistics flow).

    Attributes:
      hidden_size: H, units per layer; taken from a cell instance's ``features`` when
        omitted (given too, it must agree).
      output_size: size of ``y`` (classes for a classifier, 1 for regression/binary);
        required.
      cell: one of ``CELL_NAMES``: ``"simple"`` (Flax ``SimpleCell``, tanh), ``"lstm"``
        (``OptimizedLSTMCell``), ``"gru"`` (``GRUCell``), ``"indrnn"`` (``IndRNNCell``);
        or an unbound Flax cell, as ``nn.RNN`` takes it (``nn.LSTMCell(64)``), which every
        layer copies. A cell type without an entry in ``models.cells.CELLS`` runs with
        ``nn.RNN`` only (``"flax"``, which ``"auto"`` then picks). The three options below
        configure a named cell; set them on an instance itself.
      depth: number d of stacked recurrent layers, ``d >= 1``.
      batch_norm: batch norm on ``h_T`` before the head.
      layer_batch_norm: batch norm after every recurrent layer, over batch and time.
      dropout_rate: dropout after every recurrent layer in training (needs a ``"dropout"``
        rng when ``> 0``): ``models.dropout.Dropout``, whose masks cost under a fifth
        of ``nn.Dropout``'s on CPU.
      recurrent_init: ``"orthogonal"`` (Flax's default for its cells), ``"identity"``
        (IRNN; ``u = 1`` for IndRNN), an initializer, or ``None`` for the cell's default.
        For long sequences an orthogonal or identity ``W_h`` keeps the linearized
        recurrence from shrinking or blowing up the state at initialization.
      activation_fn: overrides the cell's nonlinearity (e.g. ``nn.relu`` for an IRNN).
      recurrent_bound: IndRNN only: ``u ~ U(0, bound)`` at init; keep it during training
        with ``models.clip_indrnn_recurrent``.
      impl: ``"pallas"`` (``models.pallas``: ``"fused"``'s split, with each direction's time
        loop as one persistent kernel; every cell above up to 256 units, on a GPU),
        ``"fused"`` (``models.fused``: input projection of all steps as one matmul
        before the scan, a custom backward pass whose loop does only the sequential part),
        ``"hoisted"`` (the same projection, autodiff through ``scan_cell``), ``"flax"``
        (``nn.RNN`` over the cell, as landed), or ``"auto"``: the measured fastest on the
        default backend at the nearest measured sequence length (``MEASURED``) that runs
        this cell, ``"flax"`` for a cell without a fast path. A fast ``impl`` that cannot
        run the cell is a ``ValueError`` here. Same parameters, same function.
      unroll: time steps per scan iteration; ``None`` picks ``default_unroll()``.
    """

    hidden_size: int | None = None
    output_size: int | None = None
    cell: str | nn.RNNCellBase = "simple"
    depth: int = 1
    batch_norm: bool = False
    layer_batch_norm: bool = False
    dropout_rate: float = 0.0
    recurrent_init: str | Initializer | None = None
    activation_fn: Callable[[Array], Array] | None = None
    recurrent_bound: float | None = None
    impl: Impl = "auto"
    unroll: int | None = None

    def __post_init__(self) -> None:
        check_impl(self.impl)
        if isinstance(self.cell, str) and self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; expected one of {CELL_NAMES}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.output_size is None:
            raise ValueError("output_size is required (the head's size)")
        if self.units < 1 or self.output_size < 1:
            raise ValueError(
                f"hidden_size and output_size must be >= 1, got {self.units}, {self.output_size}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.unroll is not None and self.unroll < 1:
            raise ValueError(f"unroll must be >= 1, got {self.unroll}")
        cell = self.layer_cell()
        if self.impl not in ("auto", "flax"):
            resolve_impl(self.impl, cell)
        super().__post_init__()

    @property
    def units(self) -> int:
        """H, units per layer: ``hidden_size``, or the cell instance's ``features``."""
        if isinstance(self.cell, str):
            if self.hidden_size is None:
                raise ValueError(f"hidden_size is required with the cell name {self.cell!r}")
            return self.hidden_size
        features = getattr(self.cell, "features", self.hidden_size)
        if features is None:
            raise ValueError(f"hidden_size is required: {type(self.cell).__name__} has no features")
        if self.hidden_size not in (None, features):
            raise ValueError(
                f"hidden_size {self.hidden_size} disagrees with the cell's features {features}"
            )
        return features

    @nn.nowrap
    def layer_cell(self) -> nn.RNNCellBase:
        """A new unbound cell of one layer: the named one, or a copy of the instance."""
        options = {
            "recurrent_init": self.recurrent_init,
            "activation_fn": self.activation_fn,
            "recurrent_bound": self.recurrent_bound,
        }
        if isinstance(self.cell, str):
            return make_cell(self.cell, self.units, **options)
        given = sorted(k for k, v in options.items() if v is not None)
        if given:
            raise ValueError(
                f"{', '.join(given)} configure a cell given by name; set them on the "
                f"{type(self.cell).__name__} instance instead"
            )
        return self.cell.clone(parent=None, name=None)

    @nn.nowrap
    def initialize_carry(self, batch_size: int) -> tuple[Carry, ...]:
        """Zero initial carry: one per layer, each as the cell lays it out (LSTM: ``(c, h)``)."""
        cell = self.layer_cell()
        key = jax.random.key(0)
        return tuple(
            cell.initialize_carry(key, (batch_size, self.units)) for _ in range(self.depth)
        )

    @nn.compact
    def __call__(
        self,
        x: Array,
        *,
        train: bool = False,
        initial_carry: Sequence[Carry] | None = None,
        return_carry: bool = False,
    ) -> Array | tuple[tuple[Carry, ...], Array]:
        """Run the stack over ``x`` and apply the head to the last hidden state.

        Args:
          x: inputs ``[B, T, F]``.
          train: batch statistics and dropout (training) or running averages (eval).
          initial_carry: per-layer carries (``initialize_carry``); zeros when omitted.
          return_carry: also return the final per-layer carries (for truncated BPTT).

        Returns:
          ``y [B, output_size]``, or ``(carries, y)`` with ``return_carry``.
        """
        if x.ndim != 3:
            raise ValueError(f"x must have shape [batch, time, features], got shape {x.shape}")
        carries = self.initialize_carry(x.shape[0]) if initial_carry is None else initial_carry
        if len(carries) != self.depth:
            raise ValueError(f"initial_carry must hold {self.depth} carries, got {len(carries)}")
        unroll = default_unroll() if self.unroll is None else self.unroll
        xs = jnp.swapaxes(x, 0, 1)
        final_carries = []
        for layer, carry in enumerate(carries):
            cell = self.layer_cell()
            impl = resolve_impl(self.impl, cell, seq_len=xs.shape[0])
            if impl in _FAST:
                rnn = HoistedRNN(cell, unroll=unroll, impl=impl, name=f"rnn_{layer}")
                carry, xs = rnn(xs, carry)
            else:
                rnn = nn.RNN(
                    cell, time_major=True, return_carry=True, unroll=unroll, name=f"rnn_{layer}"
                )
                carry, xs = rnn(xs, initial_carry=carry)
            final_carries.append(carry)
            if self.layer_batch_norm:
                xs = _batch_norm(train, f"bn_{layer}")(xs)
            if self.dropout_rate > 0:
                xs = Dropout(self.dropout_rate, deterministic=not train)(xs)
        h_last = xs[-1]
        if self.batch_norm:
            h_last = _batch_norm(train, "bn_final")(h_last)
        y = nn.Dense(self.output_size, name="head")(h_last)
        return (tuple(final_carries), y) if return_carry else y


@dataclasses.dataclass(frozen=True)
class Recurrence:
    """What ``benchmarks.perf.perf_models --table`` measured on one backend, and what it decides.

    Attributes:
      ms: cell name (``CELL_NAMES``) -> sequence length T -> implementation -> milliseconds
        of one gradient (``perf_models`` section 3: batch 50, hidden 128, 2 inputs; the
        implementations of one length timed side by side in one run).
      unroll: the fastest scan unroll of the fused vanilla-RNN gradient (section 7).
      source: the results files the numbers come from.
    """

    ms: Mapping[str, Mapping[int, Mapping[str, float]]]
    unroll: int
    source: str

    def ranking(self, cell: str, seq_len: int | None = None) -> list[str]:
        """Implementations for ``cell``, fastest first, at the measured length nearest to
        ``seq_len`` on a log scale (``None``: the longest measured).

        Times within ``NOISE`` of the fastest count as level; among level ones, the fastest
        over all measured lengths (mean ratio to each length's fastest) comes first.
        """
        lengths = self.ms[cell]
        if seq_len is None:
            nearest = max(lengths)
        else:
            nearest = min(lengths, key=lambda t: (abs(math.log(t / max(seq_len, 1))), t))
        times = lengths[nearest]
        best = min(times.values())

        def overall(impl: str) -> float:
            ratios = [ms[impl] / min(ms.values()) for ms in lengths.values() if impl in ms]
            return sum(ratios) / len(ratios)

        return sorted(times, key=lambda i: (times[i] > best * (1 + NOISE), overall(i), times[i]))


# How these numbers and NOISE were chosen, entry by entry: results/MEASURED_history.md.
NOISE = 0.03
MEASURED: dict[str, Recurrence] = {
    "cpu": Recurrence(
        {
            "simple": {
                100: {"flax": 19.803, "hoisted": 19.819, "fused": 17.518},
                400: {"flax": 92.018, "hoisted": 118.088, "fused": 92.544},
            },
            "lstm": {
                100: {"flax": 77.414, "hoisted": 130.881, "fused": 120.813},
                400: {"flax": 352.794, "hoisted": 452.277, "fused": 414.656},
            },
            "gru": {
                100: {"flax": 63.218, "hoisted": 82.239, "fused": 86.137},
                400: {"flax": 315.228, "hoisted": 358.979, "fused": 323.458},
            },
            "indrnn": {
                100: {"flax": 4.905, "hoisted": 6.266, "fused": 4.201},
                400: {"flax": 20.612, "hoisted": 45.752, "fused": 16.785},
            },
        },
        1,
        "results/cpu/perf_models_table.txt",
    ),
    "gpu": Recurrence(
        {
            "simple": {
                100: {"flax": 1.78, "hoisted": 1.3, "fused": 1.0, "pallas": 0.6},
                400: {"flax": 5.4, "hoisted": 3.84, "fused": 2.92, "pallas": 1.36},
                784: {"flax": 10.43, "hoisted": 7.53, "fused": 6.04, "pallas": 2.67},
            },
            "lstm": {
                100: {"flax": 2.39, "hoisted": 2.03, "fused": 1.64},
                400: {"flax": 7.62, "hoisted": 6.25, "fused": 5.23},
            },
            "gru": {
                100: {"flax": 2.85, "hoisted": 1.87, "fused": 1.38},
                400: {"flax": 9.94, "hoisted": 6.76, "fused": 4.36},
            },
            "indrnn": {
                100: {"flax": 1.14, "hoisted": 0.79, "fused": 0.93},
                400: {"flax": 3.52, "hoisted": 1.48, "fused": 2.06},
            },
        },
        8,
        "results/gpu_h200/pallas_launch.txt section 4 (simple: us per step x T / 1000); "
        "results/gpu_h200/perf_models_4c3e4b0.txt section 3 (lstm, gru, indrnn)",
    ),
}
MEASURED["tpu"] = MEASURED["gpu"]  # not measured: the nearest measured accelerator's


def _recurrence(backend: str | None = None) -> Recurrence:
    backend = jax.default_backend() if backend is None else backend
    return MEASURED.get(backend, MEASURED["gpu"])


def default_impl(
    cell: str = "simple", backend: str | None = None, seq_len: int | None = None
) -> str:
    """The implementation ``impl="auto"`` picks for ``cell`` (a ``CELL_NAMES`` entry) on
    ``backend`` (default: JAX's default) at sequence length ``seq_len``: the fastest in
    ``MEASURED`` at the nearest measured length (``None``: the longest).

    An unknown backend gets the GPU's numbers.
    """
    if cell not in CELL_NAMES:
        raise ValueError(f"unknown cell {cell!r}; expected one of {CELL_NAMES}")
    return _recurrence(backend).ranking(cell, seq_len)[0]


def default_unroll(backend: str | None = None) -> int:
    """Scan steps per iteration for ``backend`` (default: JAX's default), from ``MEASURED``.

    Training code should pass ``unroll=None`` to ``RNNModel`` (or call this function) rather
    than hard-code a number, so each backend gets its own.
    """
    return _recurrence(backend).unroll


def _runs(impl: str, cell: nn.RNNCellBase) -> bool:
    return impl == "flax" or _FAST[impl].supports(cell)


def resolve_impl(
    impl: Impl, cell: nn.RNNCellBase, backend: str | None = None, seq_len: int | None = None
) -> Impl:
    """The implementation that runs ``cell``: ``impl`` itself, or for ``"auto"`` the fastest
    one measured for the cell's type (its ``models.cells.CELLS`` entry) on ``backend`` near
    ``seq_len`` that has a path for this cell (a hidden size over the Pallas kernels' limit,
    say), else ``"flax"`` (``nn.RNN`` runs any cell, a user's own included).

    Raises:
      ValueError: for an unknown ``impl``, or an explicit one that has no recurrence for
        this cell.
    """
    if check_impl(impl) == "auto":
        entry = registered_cell(cell)
        ranking = [] if entry is None else _recurrence(backend).ranking(entry.name, seq_len)
        return next((choice for choice in ranking if _runs(choice, cell)), "flax")
    if not _runs(impl, cell):
        raise ValueError(f"impl {impl!r} has no recurrence for cell {cell!r}; use 'auto' or 'flax'")
    return impl


def _batch_norm(train: bool, name: str) -> BatchNorm:
    return BatchNorm(
        use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name
    )


def deep_indrnn(
    output_size: int,
    recurrent_bound: float,
    *,
    depth: int = 6,
    hidden_size: int = 128,
    dropout_rate: float = 0.1,
    layer_batch_norm: bool = True,
    **kwargs: Any,
) -> RNNModel:
    """The authors' deep IndRNN: 6 layers x 128, batch norm after each layer
    (``layer_batch_norm``), dropout 0.1.

    ``recurrent_bound`` is ``indrnn_recurrent_bound(gamma, T)``; clip to it after each step
    with ``clip_indrnn_recurrent``.
    """
    return RNNModel(
        hidden_size=hidden_size,
        output_size=output_size,
        cell="indrnn",
        depth=depth,
        layer_batch_norm=layer_batch_norm,
        dropout_rate=dropout_rate,
        recurrent_bound=recurrent_bound,
        **kwargs,
    )
