"""The paper's RNN family in Flax: cells, stacked models and heads (modules only; the
training pieces, truncated BPTT included, live in ``benchmarks``).

What a model is built with is here; the recurrences behind ``RNNModel(impl=...)`` stay in
their modules: ``models.cells`` (the registry ``CELLS``), ``models.scan_rnn``,
``models.fused``, ``models.pallas``, and ``models.rnn`` (``resolve_impl``, ``MEASURED``).
"""

from models.batch_norm import BatchNorm
from models.cells import (
    CELL_NAMES,
    IndRNNCell,
    clip_indrnn_recurrent,
    identity_init,
    indrnn_recurrent_bound,
    make_cell,
)
from models.dropout import Dropout
from models.heads import (
    HEADS,
    Head,
    binary_cross_entropy_loss,
    cross_entropy_loss,
    get_head,
    mse_loss,
    sigmoid_mse_loss,
)
from models.rnn import (
    IMPLS,
    HoistedRNN,
    Impl,
    RNNModel,
    deep_indrnn,
    default_impl,
    default_unroll,
)

__all__ = [
    "CELL_NAMES",
    "IMPLS",
    "BatchNorm",
    "Dropout",
    "HEADS",
    "Head",
    "HoistedRNN",
    "Impl",
    "IndRNNCell",
    "RNNModel",
    "binary_cross_entropy_loss",
    "clip_indrnn_recurrent",
    "cross_entropy_loss",
    "deep_indrnn",
    "default_impl",
    "default_unroll",
    "get_head",
    "identity_init",
    "indrnn_recurrent_bound",
    "make_cell",
    "mse_loss",
    "sigmoid_mse_loss",
]
