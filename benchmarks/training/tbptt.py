r"""Truncated backpropagation through time (TBPTT), alone and with Frank-Wolfe.

The sequence ``x [B, T, F]`` is cut into ``n = T / L`` chunks of length L. Chunk c starts
from the carry its predecessor ended with, passed through ``jax.lax.stop_gradient``, so no
gradient crosses a chunk boundary. As in the authors' code, chunk c's loss is the loss of
*its last output* against the sequence's label:

.. math::

    (h_c, y_c) = f_\omega(\mathrm{sg}(h_{c-1}), x_{[cL, (c+1)L)}), \qquad
    \ell_c(\omega) = \mathrm{loss}(y_c, \mathrm{label})

Two ways to turn the chunk losses into updates:

* ``tbptt_loss``: the mean of the ``\ell_c``, one update per sequence; its gradient is the
  mean of the truncated chunk gradients, all at the same weights. With ``L = T`` it is
  full BPTT. Functional and cheap to reason about; not what the authors ran.
* ``tbptt_step``: the authors' scheme. The chunks are consumed in order, K at a time,
  each group of K chunks feeding one optimizer update: with ``inner_steps = K = 1``
  (Adam, or ``frank_wolfe(K=1)``) every chunk is one update (the TBPTT baseline); with
  ``frank_wolfe(K)`` chunk ``uK + k - 1`` gives inner step k of update u (TBPTT + FW).

Where ``tbptt_step`` differs from the authors, and why:

* Carries. Their chunk c started from the hidden state computed at whatever weights
  the previous chunk ran with (perturbed ones inside FW). ``fw_optax``'s ``value_fn`` is a
  pure function of the weights, so before each update we run the update's K chunks
  forward once at the update's weights ω (under ``stop_gradient``) and hand chunk
  k's entering carry to inner step k through ``inner_batches``. The carry into the
  first chunk of an update comes from the previous update's weights, as theirs did.
  Cost: one extra forward pass over the update's chunks but the first, whose carry out
  comes from its gradient's forward pass (so none at K = 1).
* Batches. They took chunks from a stream of mini-batches; here a call handles one
  batch: ``ceil(n / K)`` updates, and when K does not divide n the last update wraps
  around to chunk 0 of the same batch (restarting from ``initial_carry``) instead of
  reading the next batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
Params = Any
Carry = Any
ChunkFn = Callable[[Params, Carry, Array], tuple[Carry, Array]]
LossFn = Callable[[Array, Array], Array]


class ChunkBatch(NamedTuple):
    """What one chunk's loss needs: its inputs ``[B, L, F]``, entering carry, and labels."""

    x: Array
    carry: Carry
    y: Array


def num_chunks(seq_len: int, chunk_length: int) -> int:
    """``T / L``, after checking that L is a positive divisor of T."""
    if chunk_length <= 0:
        raise ValueError(f"chunk_length must be > 0, got {chunk_length}")
    if seq_len % chunk_length:
        raise ValueError(
            f"chunk_length {chunk_length} does not divide the sequence length {seq_len}"
        )
    return seq_len // chunk_length


def split_chunks(x: Array, chunk_length: int) -> Array:
    """Cut ``x [B, T, F]`` into ``[n, B, L, F]`` chunks, ``n = T / L``."""
    if x.ndim != 3:
        raise ValueError(f"x must have shape [batch, time, features], got shape {x.shape}")
    n = num_chunks(x.shape[1], chunk_length)
    return jnp.moveaxis(x.reshape(x.shape[0], n, chunk_length, x.shape[2]), 1, 0)


def rnn_chunk_fn(model: Any, state: dict[str, Any] | None = None) -> ChunkFn:
    """``(params, carry, x_chunk) -> (carry, y)`` for an ``RNNModel``, in eval mode.

    ``state`` holds non-parameter collections (``batch_stats``); they are read, not
    updated (batch norm uses its running averages), so TBPTT of batch-norm models
    trains with frozen statistics.
    """
    state = state or {}

    def apply(params: Params, carry: Carry, x_chunk: Array) -> tuple[Carry, Array]:
        return model.apply(
            {"params": params, **state}, x_chunk, initial_carry=carry, return_carry=True
        )

    return apply


def _loss_and_carry(
    chunk_fn: ChunkFn, loss_fn: LossFn
) -> Callable[[Params, ChunkBatch], tuple[Array, Carry]]:
    """``(loss, carry out)`` of one chunk from its given, constant, entering carry."""

    def loss_and_carry(params: Params, batch: ChunkBatch) -> tuple[Array, Carry]:
        carry, y = chunk_fn(params, jax.lax.stop_gradient(batch.carry), batch.x)
        return loss_fn(y, batch.y), carry

    return loss_and_carry


def chunk_loss(chunk_fn: ChunkFn, loss_fn: LossFn) -> Callable[[Params, ChunkBatch], Array]:
    """``value(params, batch) = loss(y_last, label)`` of one chunk from its given carry.

    The entering carry is a constant (``stop_gradient``): the gradient stays in the chunk.
    This is the ``value_fn`` that ``tbptt_step`` hands to ``frank_wolfe``.
    """
    loss_and_carry = _loss_and_carry(chunk_fn, loss_fn)
    return lambda params, batch: loss_and_carry(params, batch)[0]


def tbptt_loss(
    chunk_fn: ChunkFn,
    loss_fn: LossFn,
    params: Params,
    x: Array,
    y: Array,
    *,
    chunk_length: int,
    initial_carry: Carry,
) -> tuple[Array, Array]:
    r"""Mean truncated chunk loss ``(1/n) \sum_c \ell_c``, and the per-chunk losses ``[n]``.

    ``jax.grad`` of the mean is the mean of the chunk gradients, each truncated at its
    chunk's start; with ``chunk_length = T`` it equals full BPTT.
    """
    chunks = split_chunks(x, chunk_length)

    def body(carry: Carry, x_chunk: Array) -> tuple[Carry, Array]:
        carry = jax.lax.stop_gradient(carry)
        new_carry, out = chunk_fn(params, carry, x_chunk)
        return new_carry, loss_fn(out, y)

    _, losses = jax.lax.scan(body, initial_carry, chunks)
    return losses.mean(), losses


def _chunk_schedule(n: int, inner_steps: int) -> tuple[int, Array]:
    """Updates per batch and the chunk index of every inner step, ``[updates, K]``."""
    updates = math.ceil(n / inner_steps)
    return updates, (jnp.arange(updates * inner_steps) % n).reshape(updates, inner_steps)


def tbptt_step(
    chunk_fn: ChunkFn,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    params: Params,
    opt_state: optax.OptState,
    x: Array,
    y: Array,
    *,
    chunk_length: int,
    initial_carry: Carry,
    inner_steps: int = 1,
) -> tuple[Params, optax.OptState, Array]:
    """The authors' TBPTT: ``ceil(n / K)`` optimizer updates on one batch, K chunks each.

    Update u runs chunks ``uK .. uK + K - 1`` (modulo n) forward at its weights to get
    each chunk's entering carry (chunk 0 enters with ``initial_carry``), takes the gradient
    of the first chunk's loss, and calls ``tx.update(grads, opt_state, params,
    value_fn=chunk_loss(...), inner_batches=<chunks 2..K as ChunkBatch>)``. Set
    ``inner_steps`` to the K of ``frank_wolfe`` in ``tx``, or to 1 for other optimizers.

    Example (TBPTT + FW, K = 4 chunks per update)::

        tx = optax.chain(fw_optax.frank_wolfe(K=4, delta=0.1), optax.adam(1e-3))
        params, opt_state, losses = tbptt_step(
            rnn_chunk_fn(model), cross_entropy_loss, tx, params, opt_state, x, y,
            chunk_length=196, initial_carry=model.initialize_carry(x.shape[0]),
            inner_steps=4)

    Returns:
      ``(params, opt_state, losses)``, ``losses [updates]`` the first chunk's loss of each
      update at the weights before it.
    """
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
    chunks = split_chunks(x, chunk_length)
    updates, schedule = _chunk_schedule(chunks.shape[0], inner_steps)
    value = chunk_loss(chunk_fn, loss_fn)
    grad_and_carry = jax.value_and_grad(_loss_and_carry(chunk_fn, loss_fn), has_aux=True)
    tx = optax.with_extra_args_support(tx)

    def enter(carry: Carry, i: Array) -> Carry:
        """The carry entering chunk ``i``: ``initial_carry`` at chunk 0, else ``carry``."""
        return jax.tree.map(lambda c, c0: jnp.where(i == 0, c0, c), carry, initial_carry)

    def later_carries(params: Params, carry: Carry, idx: Array) -> tuple[Carry, Carry]:
        """Carries entering each chunk of ``idx`` at ``params``, and the carry after them."""

        def body(carry: Carry, i: Array) -> tuple[Carry, Carry]:
            carry = enter(carry, i)
            return chunk_fn(params, carry, chunks[i])[0], carry

        return jax.lax.scan(body, carry, idx)

    def update(state: tuple[Params, optax.OptState, Carry], idx: Array):
        params, opt_state, carry = state
        first = ChunkBatch(chunks[idx[0]], enter(carry, idx[0]), y)
        (loss, carry), grads = grad_and_carry(params, first)
        carry = jax.lax.stop_gradient(carry)
        if inner_steps == 1:
            extra = {"value_fn": lambda w: value(w, first)}
        else:
            carry, carries = jax.lax.stop_gradient(later_carries(params, carry, idx[1:]))
            batches = ChunkBatch(
                chunks[idx[1:]], carries, jnp.broadcast_to(y, (inner_steps - 1,) + y.shape)
            )
            extra = {"value_fn": value, "inner_batches": batches}
        step, opt_state = tx.update(grads, opt_state, params, **extra)
        return (optax.apply_updates(params, step), opt_state, carry), loss

    (params, opt_state, _), losses = jax.lax.scan(
        update, (params, opt_state, initial_carry), schedule, length=updates
    )
    return params, opt_state, losses
