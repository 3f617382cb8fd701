"""Recurrent cells Flax lacks, the initializers that matter for long sequences, and the
registry of the cells the project knows by name.

Flax's own cells (``SimpleCell``, ``OptimizedLSTMCell``, ``GRUCell``) are used as they are;
this module adds the IndRNN cell and the named recurrent initializers. ``CELLS`` holds one
entry per cell: its name, its Flax classes, how ``make_cell`` builds it, and the recurrences
that run it fast (``models.scan_rnn``, ``models.fused`` and ``models.pallas`` add theirs with
``register_path``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import default_kernel_init
from flax.typing import Dtype, Initializer, PRNGKey

Array = jax.Array
Carry = Any
# A recurrence over a whole sequence: (cell, its params, xs [T, *batch, F], carry, unroll)
# -> (carry_T, hs [T, *batch, H]), what ``nn.RNN(cell, time_major=True, return_carry=True)``
# returns.
CellScan = Callable[[nn.RNNCellBase, Mapping[str, Any], Array, Carry, int], tuple[Carry, Array]]
FastImpl = Literal["hoisted", "fused", "pallas"]
FAST_IMPLS: tuple[FastImpl, ...] = get_args(FastImpl)

RECURRENT_INIT_NAMES: tuple[str, ...] = ("orthogonal", "identity")
INDRNN_RECURRENT_NAME = "recurrent_kernel"


def identity_init(scale: float = 1.0) -> Initializer:
    """Initializer for an identity recurrence ``h_{t-1} -> scale * h_{t-1}`` (IRNN, Le et al.).

    A square matrix becomes ``scale * I``; a vector (IndRNN's element-wise ``u``) becomes
    ``scale * 1``. With ``scale = 1`` and a ReLU cell the hidden state is copied forward
    unchanged when the input is zero, the initialization Le, Jaitly and Hinton (2015) use
    for long sequences.
    """

    def init(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        del key
        if len(shape) == 1:
            return jnp.full(shape, scale, dtype)
        if len(shape) == 2 and shape[0] == shape[1]:
            return scale * jnp.eye(shape[0], dtype=dtype)
        raise ValueError(f"identity_init needs a vector or a square matrix, got shape {shape}")

    return init


def indrnn_recurrent_bound(gamma: float, seq_len: int) -> float:
    """The IndRNN bound ``|u| <= gamma^(1/T)`` on the recurrent weights (Li et al., 2018).

    Over T steps a ReLU IndRNN unit scales the gradient by at most ``prod_t |u| <= gamma``,
    so the bound keeps gradients from exploding (``gamma > 1`` lets them grow a little,
    the IndRNN code uses ``gamma = 2``).

    Args:
      gamma: the largest total gradient growth over the sequence, ``gamma > 0``.
      seq_len: the sequence length T, ``T >= 1``.

    Returns:
      The bound ``gamma ** (1 / T)``.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return float(math.pow(gamma, 1.0 / seq_len))


def clip_indrnn_recurrent(params: Any, bound: float) -> Any:
    """Project every IndRNN recurrent vector ``u`` onto ``[-bound, bound]``.

    Apply it after each optimizer update (the IndRNN paper and the authors' FW code clip
    the recurrent weights after the step); every leaf named ``recurrent_kernel`` (the name
    ``IndRNNCell`` gives u; Flax's cells name theirs ``h*/kernel``) is clipped, all other
    leaves are returned unchanged.
    """
    if not bound > 0:
        raise ValueError(f"bound must be > 0, got {bound}")

    def clip(path: tuple[Any, ...], leaf: Array) -> Array:
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return jnp.clip(leaf, -bound, bound) if name == INDRNN_RECURRENT_NAME else leaf

    return jax.tree_util.tree_map_with_path(clip, params)


class IndRNNCell(nn.RNNCellBase):
    r"""Independently recurrent cell (IndRNN, Li et al., CVPR 2018).

    .. math::

        h_t = \sigma(W x_t + u \odot h_{t-1} + b)

    with ``sigma = relu`` by default. Each hidden unit has one scalar recurrent weight
    ``u_j``, so units do not interact through time; deep stacks make them interact.

    Parameters (Flax layout): ``i/kernel`` (W, ``[F, H]``), ``i/bias`` (b, ``[H]``) and
    ``recurrent_kernel`` (u, ``[H]``).

    Attributes:
      features: hidden size H.
      activation_fn: the nonlinearity sigma (default ReLU).
      kernel_init: initializer of W (default lecun normal, as Flax's cells).
      recurrent_kernel_init: initializer of u; ``None`` draws ``u ~ U(0, recurrent_bound)``
        (``U(0, 1)`` without a bound), the IndRNN paper's choice.
      recurrent_bound: the bound on ``|u|`` used by the default initializer, usually
        ``indrnn_recurrent_bound(gamma, T)``; enforce it during training with
        ``clip_indrnn_recurrent``.
      bias_init: initializer of b (zeros).
      carry_init: initializer of ``h_0`` (zeros).

    References:
      Li, Li, Cook, Zhu, Gao. "Independently Recurrent Neural Network (IndRNN): Building
      A Longer and Deeper RNN". CVPR 2018. https://arxiv.org/abs/1803.04831
    """

    features: int
    activation_fn: Callable[[Array], Array] = nn.relu
    kernel_init: Initializer = default_kernel_init
    recurrent_kernel_init: Initializer | None = None
    recurrent_bound: float | None = None
    bias_init: Initializer = nn.initializers.zeros_init()
    carry_init: Initializer = nn.initializers.zeros_init()
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, carry: Array, inputs: Array) -> tuple[Array, Array]:
        """One step ``h_t = sigma(W x_t + u * h_{t-1} + b)``; returns ``(h_t, h_t)``."""
        u = self.param(
            INDRNN_RECURRENT_NAME, self.recurrent_initializer(), (self.features,), self.param_dtype
        )
        projected = nn.Dense(
            self.features,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="i",
        )(inputs)
        new_h = self.activation_fn(projected + u * carry)
        return new_h, new_h

    @nn.nowrap
    def recurrent_initializer(self) -> Initializer:
        """The initializer of u: the given one, else ``U(0, recurrent_bound or 1)``."""
        if self.recurrent_kernel_init is not None:
            return self.recurrent_kernel_init
        high = 1.0 if self.recurrent_bound is None else self.recurrent_bound

        def init(key: PRNGKey, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
            return jax.random.uniform(key, shape, dtype, minval=0.0, maxval=high)

        return init

    @nn.nowrap
    def initialize_carry(self, rng: PRNGKey, input_shape: tuple[int, ...]) -> Array:
        """Zero hidden state of shape ``input_shape[:-1] + (features,)``."""
        return self.carry_init(rng, input_shape[:-1] + (self.features,), self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


def recurrent_initializer(name_or_init: str | Initializer | None) -> Initializer | None:
    """Resolve a recurrent initializer given by name.

    ``"orthogonal"``: a random orthogonal ``W_h`` (Saxe et al., 2014), Flax's default for its
    cells; eigenvalues of modulus 1 keep the linearized recurrence norm-preserving.
    ``"identity"``: ``W_h = I`` (or ``u = 1`` for IndRNN), the IRNN initialization.
    A callable is returned unchanged; ``None`` means the cell's own default.
    """
    if name_or_init is None or callable(name_or_init):
        return name_or_init
    if name_or_init == "orthogonal":
        return nn.initializers.orthogonal()
    if name_or_init == "identity":
        return identity_init()
    raise ValueError(
        f"unknown recurrent_init {name_or_init!r}; expected one of {RECURRENT_INIT_NAMES} "
        "or an initializer"
    )


@dataclasses.dataclass(frozen=True)
class RegisteredCell:
    """One recurrent cell the project knows by name.

    Attributes:
      name: what ``make_cell`` and ``RNNModel(cell=...)`` call it.
      classes: its Flax classes; ``make_cell`` builds the first. A cell is recognized by its
        exact type (``registered_cell``): a subclass may change the math.
      vector_recurrence: the recurrent weight is a vector ``u`` (``u * h_{t-1}``, IndRNN):
        it takes a ``recurrent_bound``, and orthogonal init does not apply.
      paths: fast implementation (``FAST_IMPLS``) -> the ``CellScan`` that runs this cell:
        ``"hoisted"``, the scan step of ``models.scan_rnn``; ``"fused"``, the custom-VJP
        recurrence of ``models.fused``; ``"pallas"``, the kernels of ``models.pallas``. Each
        module adds its own with ``register_path``; ``nn.RNN`` ("flax") runs every cell.
    """

    name: str
    classes: tuple[type[nn.RNNCellBase], ...]
    vector_recurrence: bool = False
    paths: dict[FastImpl, CellScan] = dataclasses.field(default_factory=dict)

    def make(
        self,
        features: int,
        *,
        recurrent_init: str | Initializer | None = None,
        activation_fn: Callable[[Array], Array] | None = None,
        recurrent_bound: float | None = None,
    ) -> nn.RNNCellBase:
        """This cell with ``features`` units, unbound (see ``make_cell``)."""
        if features < 1:
            raise ValueError(f"features must be >= 1, got {features}")
        init = recurrent_initializer(recurrent_init)
        kwargs: dict[str, Any] = {"parent": None}
        if activation_fn is not None:
            kwargs["activation_fn"] = activation_fn
        if self.vector_recurrence:
            if recurrent_init == "orthogonal":
                raise ValueError(
                    f"recurrent_init 'orthogonal' does not apply to {self.name!r} (u is a vector)"
                )
            kwargs["recurrent_bound"] = recurrent_bound
        elif recurrent_bound is not None:
            raise ValueError(f"recurrent_bound only applies to 'indrnn', got cell {self.name!r}")
        if init is not None:
            kwargs["recurrent_kernel_init"] = init
        return self.classes[0](features, **kwargs)


CELLS: dict[str, RegisteredCell] = {
    cell.name: cell
    for cell in (
        RegisteredCell("simple", (nn.SimpleCell,)),
        RegisteredCell("lstm", (nn.OptimizedLSTMCell, nn.LSTMCell)),
        RegisteredCell("gru", (nn.GRUCell,)),
        RegisteredCell("indrnn", (IndRNNCell,), vector_recurrence=True),
    )
}
CELL_NAMES: tuple[str, ...] = tuple(CELLS)
_BY_CLASS: dict[type, RegisteredCell] = {
    cls: cell for cell in CELLS.values() for cls in cell.classes
}


def registered_cell(cell: nn.RNNCellBase) -> RegisteredCell | None:
    """The registry entry of ``cell``'s exact type, or ``None`` for a cell it does not know."""
    return _BY_CLASS.get(type(cell))


def cell_path(cell: nn.RNNCellBase, impl: FastImpl) -> CellScan | None:
    """The recurrence ``impl`` registered for ``cell``'s type, or ``None``."""
    entry = registered_cell(cell)
    return None if entry is None else entry.paths.get(impl)


def register_path(impl: FastImpl, *names: str) -> Callable[[CellScan], CellScan]:
    """Decorator: the function runs the cells ``names`` (``CELL_NAMES``) with ``impl``."""
    if impl not in FAST_IMPLS:
        raise ValueError(f"unknown impl {impl!r}; expected one of {FAST_IMPLS}")
    unknown = [name for name in names if name not in CELLS]
    if unknown:
        raise ValueError(f"unknown cells {unknown}; expected names from {CELL_NAMES}")

    def register(scan: CellScan) -> CellScan:
        for name in names:
            paths = CELLS[name].paths
            if paths.get(impl, scan) is not scan:
                raise ValueError(f"cell {name!r} already has a {impl!r} path: {paths[impl]}")
        for name in names:
            CELLS[name].paths[impl] = scan
        return scan

    return register


def make_cell(
    name: str,
    features: int,
    *,
    recurrent_init: str | Initializer | None = None,
    activation_fn: Callable[[Array], Array] | None = None,
    recurrent_bound: float | None = None,
) -> nn.RNNCellBase:
    """Build the cell called ``name`` (one of ``CELL_NAMES``), unbound.

    ``"simple"``: ``flax.linen.SimpleCell`` (``h_t = tanh(W_i x_t + b + W_h h_{t-1})``);
    ``"lstm"``: ``flax.linen.OptimizedLSTMCell``; ``"gru"``: ``flax.linen.GRUCell``;
    ``"indrnn"``: ``IndRNNCell``. ``activation_fn`` overrides the cell's nonlinearity
    (e.g. ``relu`` with ``"identity"`` init gives the IRNN); ``recurrent_bound`` only
    applies to IndRNN and orthogonal init does not (its recurrent weight is a vector).
    """
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; expected one of {CELL_NAMES}")
    return CELLS[name].make(
        features,
        recurrent_init=recurrent_init,
        activation_fn=activation_fn,
        recurrent_bound=recurrent_bound,
    )
