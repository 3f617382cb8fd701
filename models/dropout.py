"""Dropout whose masks cost under a fifth of ``flax.linen.Dropout``'s on CPU.

A deep RNN drops units of every ``[T, B, H]`` layer output, and on XLA:CPU dropout took 56
of the 203 ms of the deep IndRNN's training step with ``flax.linen.Dropout``, 10 ms with
this module (``benchmarks/perf/perf_models.py``, section 6). ``flax.linen.Dropout`` draws a
uniform per unit from ``jax.random.bernoulli``, and JAX's threefry runs its 20 rounds on CPU
as a rolled loop, each iteration a pass over the whole bit array. ``Dropout`` here compares
one 32-bit word per unit with a threshold, the words from ``threefry_words``: the same
threefry-2x32 function of the key and a flat counter (bit for bit
``jax.extend.random.threefry_2x32``, tested) with the rounds written out, so that XLA fuses
the hash and the comparison into one pass; ``keep_mask`` stores the mask once for the
forward and the backward pass. Each unit is dropped with probability
``round(rate * 2**32) / 2**32``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

_LEVELS = 1 << 32
# Threefry-2x32 (Salmon et al., SC 2011), 20 rounds: the rotation schedule and the key
# schedule's parity constant, as in JAX's implementation.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA
_MASK_CHUNKS = 8


def _rotate_left(x: Array, bits: int) -> Array:
    return (x << jnp.uint32(bits)) | (x >> jnp.uint32(32 - bits))


def threefry_words(
    key_data: Array, count: int, start: Array | int = 0, size: int | None = None
) -> Array:
    """Random uint32 words ``start .. start + size - 1`` of ``count``: the first half of
    ``jax.extend.random.threefry_2x32(key_data, iota(2 * count))``, with the 20 rounds
    unrolled into element-wise operations that XLA fuses into one pass.

    Word ``i`` is the first output of the threefry block of counters ``(i, count + i)``
    (keeping the second output too would need a concatenation that XLA materializes with
    every block computed twice). Words past ``count`` continue the same formula.

    Args:
      key_data: a threefry key's two uint32 words (``jax.random.key_data``).
      count: the length of the stream the words are read from.
      start: the first word's index (may be traced).
      size: how many words (default ``count``).
    """
    size = count if size is None else size
    k0, k1 = key_data[0], key_data[1]
    keys = (k0, k1, k0 ^ k1 ^ jnp.uint32(_PARITY))
    counters = jax.lax.iota(jnp.uint32, size) + jnp.asarray(start, jnp.uint32)
    x0 = counters + keys[0]
    x1 = counters + jnp.uint32(count) + keys[1]
    for group in range(5):
        for bits in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, bits) ^ x0
        x0 = x0 + keys[(group + 1) % 3]
        x1 = x1 + keys[(group + 2) % 3] + jnp.uint32(group + 1)
    return x0


def drop_threshold(rate: float) -> int:
    """The 32-bit threshold ``round(rate * 2**32)``: a unit is dropped when its random word
    is below it, so the drop probability is ``drop_threshold(rate) / 2**32``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    return min(round(rate * _LEVELS), _LEVELS - 1)


def _threefry_key_data(key: Array) -> Array | None:
    """A threefry key's two words (typed or raw key), ``None`` for any other PRNG."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        threefry = str(jax.random.key_impl(key)) == "threefry2x32"
        return jax.random.key_data(key) if threefry else None
    return key if key.shape == (2,) else None


def keep_mask(key: Array, shape: tuple[int, ...], rate: float) -> Array:
    """A boolean mask of ``shape``, each entry ``False`` (dropped) with probability
    ``drop_threshold(rate) / 2**32``: entry ``i`` (row-major) compares
    ``threefry_words(key, size)[i]`` with the threshold (``jax.random.bits`` words for a
    key that is not threefry's).

    The words are drawn in ``_MASK_CHUNKS`` chunks under ``lax.map``: a loop's output is
    stored, so the mask is computed once and read by the forward and the backward pass,
    where a plain expression would be fused into both and hashed twice.
    """
    size = math.prod(shape)
    threshold = jnp.uint32(drop_threshold(rate))
    key_data = _threefry_key_data(key)
    if key_data is None:
        return jax.random.bits(key, shape, jnp.uint32) >= threshold
    chunk = -(-size // _MASK_CHUNKS)

    def draw(index: Array) -> Array:
        return threefry_words(key_data, size, index * chunk, chunk) >= threshold

    mask = jax.lax.map(draw, jnp.arange(_MASK_CHUNKS, dtype=jnp.uint32))
    return mask.reshape(-1)[:size].reshape(shape)


class Dropout(nn.Module):
    """Inverted dropout: ``x / (1 - rate)`` where kept, 0 where dropped, in training.

    A drop-in for ``flax.linen.Dropout`` (same arguments, the ``"dropout"`` rng stream by
    default) with a cheaper mask (``keep_mask``); the masks differ from Flax's for the same
    key.

    Attributes:
      rate: the drop probability, in ``[0, 1)``.
      deterministic: ``True`` returns ``x`` unchanged (evaluation); may be given per call.
      rng_collection: the rng stream the mask is drawn from.
    """

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: Array, deterministic: bool | None = None) -> Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        drop_threshold(self.rate)  # a rate outside [0, 1) is refused in evaluation too
        if deterministic or self.rate == 0.0:
            return x
        keep = keep_mask(self.make_rng(self.rng_collection), x.shape, self.rate)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
