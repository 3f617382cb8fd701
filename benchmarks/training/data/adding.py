"""The adding problem (Hochreiter & Schmidhuber, 1997), generated on the fly.

Each sample is a sequence of length T with two channels: channel 0 holds values drawn from
U(0, 1), channel 1 is a marker that is 1 at exactly two positions (one in each half of the
sequence) and 0 elsewhere. The target is the sum of the two marked values. Always answering
the mean, 1, gives MSE = Var[U + U'] = 1/6 ≈ 0.167: the plateau that a model which has not
learned the long-range dependency sits on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PLATEAU_MSE = 1.0 / 6.0


def adding_batch(key: jax.Array, batch_size: int, length: int) -> tuple[jax.Array, jax.Array]:
    """One batch of the adding problem, pure and jit-friendly.

    Args:
      key: a JAX PRNG key; the batch is a function of it alone.
      batch_size: B.
      length: the sequence length T >= 2.

    Returns:
      ``(x, y)``: inputs float32 ``[B, T, 2]`` and targets float32 ``[B, 1]``.
    """
    if length < 2:
        raise ValueError(f"the adding problem needs length >= 2, got length={length}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size}.")
    k_values, k_first, k_second = jax.random.split(key, 3)
    values = jax.random.uniform(k_values, (batch_size, length))
    half = length // 2
    first = jax.random.randint(k_first, (batch_size,), 0, half)
    second = jax.random.randint(k_second, (batch_size,), half, length)
    positions = jnp.arange(length)
    marker = (positions == first[:, None]) | (positions == second[:, None])
    marker = marker.astype(jnp.float32)
    x = jnp.stack([values, marker], axis=-1)
    y = jnp.sum(values * marker, axis=1, keepdims=True)
    return x, y
