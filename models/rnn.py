"""Sequence models: stacked recurrent layers of any cell, batch norm, and a linear head.

``RNNModel`` covers every model the paper's tables name: a vanilla tanh RNN, LSTM, GRU or
IndRNN, one layer or a deep stack (P2), optional batch norm between layers (the authors'
deep IndRNN) or on the final hidden state ("RNN + BN"), and a linear head on ``h_T``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Initializer

from models.batch_norm import BatchNorm
from models.cells import CELL_NAMES, IndRNNCell, make_cell
from models.dropout import Dropout
from models.fused import fused_scan_cell, supports_fused
from models.scan_rnn import scan_cell, supports_hoisting

Array = jax.Array
Carry = Any
IMPLS: tuple[str, ...] = ("auto", "fused", "hoisted", "flax")

# PyTorch's BatchNorm1d defaults (momentum 0.1 = Flax 0.9, eps 1e-5), as the authors ran.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


class HoistedRNN(nn.Module):
    """A Flax cell run with its input projection hoisted out of the time loop.

    ``fused=True`` runs ``models.fused.fused_scan_cell`` (custom VJP: the backward loop
    carries only the state cotangent, weight gradients are one matmul after it);
    ``fused=False`` runs ``models.scan_rnn.scan_cell`` and lets autodiff differentiate the
    scan. The cell is a child module named ``cell``, so the parameters are created by the
    cell itself and the tree equals ``nn.RNN(cell)``'s: the three are interchangeable.
    """

    cell: nn.RNNCellBase
    unroll: int = 1
    fused: bool = False

    @nn.compact
    def __call__(self, xs: Array, initial_carry: Carry) -> tuple[Carry, Array]:
        """Inputs ``[T, B, F]`` and a carry; returns ``(carry_T, outputs [T, B, H])``."""
        if self.is_initializing():
            self.cell(initial_carry, xs[0])
        run = fused_scan_cell if self.fused else scan_cell
        return run(self.cell, self.cell.variables["params"], xs, initial_carry, unroll=self.unroll)


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
    uses the stored averages and changes nothing. ``benchmarks.train.make_train_loss``
    wraps this into a pure loss for ``jax.grad`` and ``frank_wolfe`` (see there how the
    statistics flow).

    Attributes:
      hidden_size: H, units per layer.
      output_size: size of ``y`` (classes for a classifier, 1 for regression/binary).
      cell: one of ``"simple"`` (Flax ``SimpleCell``, tanh), ``"lstm"``
        (``OptimizedLSTMCell``), ``"gru"`` (``GRUCell``), ``"indrnn"`` (``IndRNNCell``).
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
      impl: ``"fused"`` (``models.fused``: input projection of all steps as one matmul
        before the scan, a custom backward pass whose loop does only the sequential part),
        ``"hoisted"`` (the same projection, autodiff through ``scan_cell``), ``"flax"``
        (``nn.RNN`` over the cell, as landed), or ``"auto"``: the measured fastest on the
        default backend (``default_impl``), ``"flax"`` for a cell without that fast path.
        Same parameters, same function.
      unroll: time steps per scan iteration; ``None`` picks ``default_unroll()``.
    """

    hidden_size: int
    output_size: int
    cell: str = "simple"
    depth: int = 1
    batch_norm: bool = False
    layer_batch_norm: bool = False
    dropout_rate: float = 0.0
    recurrent_init: str | Initializer | None = None
    activation_fn: Callable[[Array], Array] | None = None
    recurrent_bound: float | None = None
    impl: str = "auto"
    unroll: int | None = None

    def __post_init__(self) -> None:
        if self.cell not in CELL_NAMES:
            raise ValueError(f"unknown cell {self.cell!r}; expected one of {CELL_NAMES}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.hidden_size < 1 or self.output_size < 1:
            raise ValueError(
                f"hidden_size and output_size must be >= 1, got {self.hidden_size}, "
                f"{self.output_size}"
            )
        if self.impl not in IMPLS:
            raise ValueError(f"unknown impl {self.impl!r}; expected one of {IMPLS}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.unroll is not None and self.unroll < 1:
            raise ValueError(f"unroll must be >= 1, got {self.unroll}")
        make_cell(self.cell, self.hidden_size, **self._cell_options())
        super().__post_init__()

    def _cell_options(self) -> dict[str, Any]:
        return {
            "recurrent_init": self.recurrent_init,
            "activation_fn": self.activation_fn,
            "recurrent_bound": self.recurrent_bound,
        }

    @nn.nowrap
    def initialize_carry(self, batch_size: int) -> tuple[Carry, ...]:
        """Zero initial carry: one per layer, each as the cell lays it out (LSTM: ``(c, h)``)."""
        cell = make_cell(self.cell, self.hidden_size, **self._cell_options())
        key = jax.random.key(0)
        return tuple(
            cell.initialize_carry(key, (batch_size, self.hidden_size)) for _ in range(self.depth)
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
            cell = make_cell(self.cell, self.hidden_size, **self._cell_options())
            impl = resolve_impl(self.impl, cell)
            if impl in ("fused", "hoisted"):
                rnn = HoistedRNN(cell, unroll=unroll, fused=impl == "fused", name=f"rnn_{layer}")
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
    """The measured way to run each cell on one backend.

    Attributes:
      impl: cell name (``CELL_NAMES``) -> implementation (``"fused"``, ``"hoisted"`` or
        ``"flax"``), the fastest gradient measured for that cell.
      unroll: time steps per scan iteration.
      source: where the numbers come from.
    """

    impl: Mapping[str, str]
    unroll: int
    source: str


MEASURED: dict[str, Recurrence] = {
    "cpu": Recurrence(
        {"simple": "fused", "lstm": "flax", "gru": "flax", "indrnn": "fused"},
        1,
        "benchmarks/perf_models.py on the 2-core Xeon (results/cpu/perf_models.txt and the "
        "runs before it): the fused vanilla-RNN gradient is 1.27-1.32x Flax's at T=100 and "
        "level with it at T=400 within run-to-run noise (0.85-1.14x in three runs), so the "
        "vanilla cell takes the fused path. The deep IndRNN (6 layers, batch norm, dropout) "
        "trains faster with the fused recurrence, which adds the bias and accumulates du and "
        "db inside its loops, than with Flax's cell: 1.3x per step at T=128 (HAR-2) and T=784"
        " (Pixel-MNIST) on one device in a probe whose script is not in the repository "
        "(results/cpu/perf_models.txt section [6] times the whole step against the model as "
        "it landed), though a lone IndRNN layer at T=400 is 0.81x (section [3]). For the LSTM"
        " and GRU with 2 inputs the per-step Flax cell was faster (fused 0.60-0.92x): on "
        "XLA:CPU the [T, B, H] arrays that the hoisted projection, its cotangent and the "
        "stacked pre-activation cotangents add cost more memory traffic than the small "
        "per-step products they replace. Unroll 1: larger unrolls were no faster at T=400 "
        "(section [7]).",
    ),
    "gpu": Recurrence(
        dict.fromkeys(CELL_NAMES, "hoisted"),
        8,
        "an H200 (perf_models of commit 3b1eb99): the hoisted projection was 1.1-2.3x faster "
        "than the Flax cell for the vanilla RNN, LSTM and IndRNN, unroll 8 about 2x faster "
        "than 1. The fused backward has not been measured on a GPU yet.",
    ),
    "tpu": Recurrence(
        dict.fromkeys(CELL_NAMES, "hoisted"),
        8,
        "not measured on a TPU: the GPU choice, the nearest measured accelerator.",
    ),
}

_CELL_NAMES_BY_TYPE: dict[type, str] = {
    nn.SimpleCell: "simple",
    nn.LSTMCell: "lstm",
    nn.OptimizedLSTMCell: "lstm",
    nn.GRUCell: "gru",
    IndRNNCell: "indrnn",
}


def _recurrence(backend: str | None = None) -> Recurrence:
    backend = jax.default_backend() if backend is None else backend
    return MEASURED.get(backend, MEASURED["gpu"])


def default_impl(cell: str = "simple", backend: str | None = None) -> str:
    """The implementation ``impl="auto"`` picks for ``cell`` (a ``CELL_NAMES`` entry) on
    ``backend`` (default: JAX's default), read from ``MEASURED``.

    An unknown backend gets the GPU choice.
    """
    if cell not in CELL_NAMES:
        raise ValueError(f"unknown cell {cell!r}; expected one of {CELL_NAMES}")
    return _recurrence(backend).impl[cell]


def default_unroll(backend: str | None = None) -> int:
    """Scan steps per iteration for ``backend`` (default: JAX's default), from ``MEASURED``.

    1 on CPU, 8 on GPU/TPU. Training code should pass ``unroll=None`` to ``RNNModel`` (or
    call this function) rather than hard-code a number, so each backend gets its own.
    """
    return _recurrence(backend).unroll


_SUPPORTS: dict[str, Callable[[nn.RNNCellBase], bool]] = {
    "fused": supports_fused,
    "hoisted": supports_hoisting,
    "flax": lambda cell: True,
}


def resolve_impl(impl: str, cell: nn.RNNCellBase, backend: str | None = None) -> str:
    """The implementation that runs ``cell``: ``impl`` itself, or for ``"auto"`` the
    backend's measured choice for the cell's type when it has that fast path, else
    ``"flax"`` (``nn.RNN`` runs any cell, a user's own included).

    Raises:
      ValueError: for an unknown ``impl``, or an explicit ``"fused"`` / ``"hoisted"`` that
        has no recurrence for this cell.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    if impl == "auto":
        name = _CELL_NAMES_BY_TYPE.get(type(cell))
        choice = "flax" if name is None else default_impl(name, backend)
        return choice if _SUPPORTS[choice](cell) else "flax"
    if not _SUPPORTS[impl](cell):
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
    **kwargs: Any,
) -> RNNModel:
    """The authors' deep IndRNN: 6 layers x 128, batch norm after each layer, dropout 0.1.

    ``recurrent_bound`` is ``indrnn_recurrent_bound(gamma, T)``; clip to it after each step
    with ``clip_indrnn_recurrent``.
    """
    return RNNModel(
        hidden_size=hidden_size,
        output_size=output_size,
        cell="indrnn",
        depth=depth,
        layer_batch_norm=True,
        dropout_rate=dropout_rate,
        recurrent_bound=recurrent_bound,
        **kwargs,
    )
