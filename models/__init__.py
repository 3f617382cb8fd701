"""The paper's RNN family in Flax: cells, stacked models and heads (modules only; the
training pieces, truncated BPTT included, live in ``benchmarks``)."""

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
from models.fused import fused_scan_cell, supports_fused
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
    HoistedRNN,
    RNNModel,
    deep_indrnn,
    default_impl,
    default_unroll,
    resolve_impl,
)
from models.scan_rnn import scan_cell, simple_rnn_scan

__all__ = [
    "CELL_NAMES",
    "BatchNorm",
    "Dropout",
    "HEADS",
    "Head",
    "HoistedRNN",
    "IndRNNCell",
    "RNNModel",
    "binary_cross_entropy_loss",
    "clip_indrnn_recurrent",
    "cross_entropy_loss",
    "deep_indrnn",
    "default_impl",
    "default_unroll",
    "fused_scan_cell",
    "get_head",
    "identity_init",
    "indrnn_recurrent_bound",
    "make_cell",
    "mse_loss",
    "resolve_impl",
    "scan_cell",
    "sigmoid_mse_loss",
    "simple_rnn_scan",
    "supports_fused",
]
