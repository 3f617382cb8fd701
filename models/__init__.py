"""The paper's RNN family in Flax: cells, stacked models, heads, and truncated BPTT."""

from models.cells import (
    CELL_NAMES,
    IndRNNCell,
    clip_indrnn_recurrent,
    identity_init,
    indrnn_recurrent_bound,
    make_cell,
)
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
    make_train_loss,
    resolve_impl,
    split_variables,
)
from models.scan_rnn import scan_cell, simple_rnn_scan
from models.tbptt import (
    ChunkBatch,
    chunk_loss,
    rnn_chunk_fn,
    split_chunks,
    tbptt_loss,
    tbptt_step,
)

__all__ = [
    "CELL_NAMES",
    "ChunkBatch",
    "HEADS",
    "Head",
    "HoistedRNN",
    "IndRNNCell",
    "RNNModel",
    "binary_cross_entropy_loss",
    "chunk_loss",
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
    "make_train_loss",
    "mse_loss",
    "resolve_impl",
    "rnn_chunk_fn",
    "scan_cell",
    "sigmoid_mse_loss",
    "simple_rnn_scan",
    "split_chunks",
    "split_variables",
    "supports_fused",
    "tbptt_loss",
    "tbptt_step",
]
