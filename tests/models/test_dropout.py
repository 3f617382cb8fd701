"""Tests for models/dropout.py: the unrolled threefry equals JAX's, the masks have the
asked rate, and ``Dropout`` behaves as ``flax.linen.Dropout`` does (scaling, evaluation,
gradients, rng streams)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from models.dropout import Dropout, drop_threshold, keep_mask, threefry_words


@pytest.mark.parametrize("seed", [0, 1, 2**31 + 5])
@pytest.mark.parametrize("count", [1, 6, 1001])
def test_threefry_words_are_jax_threefry_bit_for_bit(seed, count):
    key_data = jax.random.key_data(jax.random.key(seed))
    expected = threefry_2x32(key_data, jax.lax.iota(jnp.uint32, 2 * count))[:count]
    np.testing.assert_array_equal(threefry_words(key_data, count), expected)
    # A window of the same stream, as keep_mask's chunks read it.
    np.testing.assert_array_equal(threefry_words(key_data, count, 1, count - 1), expected[1:])


@pytest.mark.parametrize("shape", [(64, 32, 16), (7, 5, 3), (1,)])
def test_keep_mask_reads_the_stream_in_order_whatever_the_chunking(shape):
    key = jax.random.key(3)
    size = int(np.prod(shape))
    words = threefry_words(jax.random.key_data(key), size)
    expected = (words >= drop_threshold(0.3)).reshape(shape)
    np.testing.assert_array_equal(keep_mask(key, shape, 0.3), expected)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_the_drop_fraction_is_the_rate(rate):
    mask = keep_mask(jax.random.key(0), (256, 1024), rate)
    dropped = 1.0 - float(jnp.mean(mask))
    sigma = np.sqrt(rate * (1 - rate) / mask.size)
    assert abs(dropped - rate) < 5 * sigma


def test_masks_are_deterministic_per_key_and_differ_across_keys():
    a, b = (keep_mask(jax.random.key(s), (100, 100), 0.5) for s in (0, 1))
    np.testing.assert_array_equal(a, keep_mask(jax.random.key(0), (100, 100), 0.5))
    assert 0.4 < float(jnp.mean(a == b)) < 0.6  # independent: agree half the time


def test_raw_and_typed_threefry_keys_give_the_same_mask_and_other_prngs_work():
    typed = keep_mask(jax.random.key(4), (10, 10), 0.5)
    np.testing.assert_array_equal(keep_mask(jax.random.PRNGKey(4), (10, 10), 0.5), typed)
    rbg = keep_mask(jax.random.key(4, impl="rbg"), (100, 100), 0.5)
    assert rbg.shape == (100, 100) and 0.4 < float(jnp.mean(rbg)) < 0.6


def test_vmap_over_keys_equals_one_key_at_a_time():
    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.vmap(lambda k: keep_mask(k, (6, 5), 0.4))(keys)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], keep_mask(keys[i], (6, 5), 0.4))


def test_dropout_scales_kept_units_and_zeros_the_rest_and_so_does_its_gradient():
    x = jax.random.normal(jax.random.key(1), (40, 30)) + 3.0  # no exact zeros
    layer = Dropout(0.25)
    rngs = {"dropout": jax.random.key(2)}
    y = layer.apply({}, x, deterministic=False, rngs=rngs)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    assert 0.6 < float(jnp.mean(kept)) < 0.9
    grad = jax.grad(lambda x: jnp.sum(layer.apply({}, x, deterministic=False, rngs=rngs)))(x)
    np.testing.assert_allclose(grad, jnp.where(kept, 1 / 0.75, 0.0), rtol=1e-6)


def test_dropout_in_evaluation_or_at_rate_zero_is_the_identity():
    x = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(Dropout(0.5).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(
        Dropout(0.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}), x
    )


def test_dropout_uses_its_rng_collection_like_flax():
    x = jnp.ones((8, 8))
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        Dropout(0.5).apply({}, x, deterministic=False)
    y = Dropout(0.5, rng_collection="noise").apply(
        {}, x, deterministic=False, rngs={"noise": jax.random.key(0)}
    )
    assert set(np.unique(np.asarray(y))) <= {0.0, 2.0}


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_a_rate_outside_zero_one_is_refused_naming_it(rate):
    with pytest.raises(ValueError, match=f"rate must be in \\[0, 1\\), got {rate}"):
        Dropout(rate).apply({}, jnp.ones(3), deterministic=True)
