"""The seeded mini-batch iterator and the noise-on-read transform
(benchmarks/training/data/batches.py)."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.training.data.batches import add_gaussian_noise, batches, steps_per_epoch


def _indexed(n: int) -> tuple[np.ndarray, np.ndarray]:
    """x[i] = [i, -i] and y[i] = i, so a batch shows which examples it holds."""
    ids = np.arange(n)
    return np.stack([ids, -ids], axis=1).astype(np.float32), ids.astype(np.int32)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    batch_size=st.integers(1, 70),
    seed=st.integers(0, 2**32 - 1),
    epochs=st.integers(1, 3),
)
def test_every_example_once_per_epoch_without_drop(n, batch_size, seed, epochs):
    x, y = _indexed(n)
    out = list(batches((x, y), batch_size, seed=seed, epochs=epochs, drop_remainder=False))
    per_epoch = steps_per_epoch(n, batch_size, drop_remainder=False)
    assert len(out) == per_epoch * epochs
    for epoch in range(epochs):
        epoch_batches = [yb for _, yb in out[epoch * per_epoch : (epoch + 1) * per_epoch]]
        np.testing.assert_array_equal(np.sort(np.concatenate(epoch_batches)), np.arange(n))
        assert all(len(yb) == batch_size for yb in epoch_batches[:-1])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), batch_size=st.integers(1, 60), seed=st.integers(0, 1000))
def test_drop_remainder_yields_full_distinct_batches(n, batch_size, seed):
    x, y = _indexed(n)
    if batch_size > n:
        with pytest.raises(ValueError, match="batch_size"):
            batches((x, y), batch_size, seed=seed)
        return
    out = list(batches((x, y), batch_size, seed=seed, epochs=1))
    assert len(out) == n // batch_size == steps_per_epoch(n, batch_size)
    seen = np.concatenate([yb for _, yb in out])
    assert len(np.unique(seen)) == len(seen) == (n // batch_size) * batch_size


def test_arrays_stay_aligned_and_keep_dtype():
    x, y = _indexed(37)
    for xb, yb in batches((x, y), 8, seed=3, epochs=2):
        assert xb.dtype == np.float32 and yb.dtype == np.int32
        np.testing.assert_array_equal(xb[:, 0], yb)
        np.testing.assert_array_equal(xb[:, 1], -yb)


def test_same_seed_same_order_and_new_order_each_epoch():
    x, y = _indexed(50)
    first = [yb for _, yb in batches((x, y), 10, seed=7, epochs=2)]
    again = [yb for _, yb in batches((x, y), 10, seed=7, epochs=2)]
    other = [yb for _, yb in batches((x, y), 10, seed=8, epochs=2)]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    assert not np.array_equal(np.concatenate(first), np.concatenate(other))
    assert not np.array_equal(np.concatenate(first[:5]), np.concatenate(first[5:]))


def test_shuffle_false_reads_in_order_with_smaller_last_batch():
    x, y = _indexed(10)
    out = [
        yb for _, yb in batches((x, y), 4, seed=0, epochs=1, shuffle=False, drop_remainder=False)
    ]
    assert [b.tolist() for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_epochs_none_iterates_forever():
    x, y = _indexed(5)
    out = list(itertools.islice(batches((x, y), 2, seed=0), 100))
    assert len(out) == 100


def test_reads_the_source_arrays_instead_of_a_copy():
    x, y = _indexed(6)
    iterator = batches((x, y), 6, seed=0)
    y += 100  # changed after the iterator was made: a copied dataset would not see this
    _, yb = next(iterator)
    np.testing.assert_array_equal(np.sort(yb), np.arange(100, 106))


def test_transform_does_not_change_the_draw_order():
    x, y = _indexed(40)
    plain = [yb for _, yb in batches((x, y), 8, seed=5, epochs=2)]
    noisy = [
        yb for _, yb in batches((x, y), 8, seed=5, epochs=2, transform=add_gaussian_noise(1.0))
    ]
    np.testing.assert_array_equal(np.concatenate(plain), np.concatenate(noisy))


def test_noise_statistics_dtype_and_labels_untouched():
    x = np.zeros((20_000, 4, 3), np.float32)
    y = np.arange(20_000, dtype=np.int32)
    xb, yb = next(batches((x, y), 20_000, seed=1, transform=add_gaussian_noise(2.0)))
    assert xb.dtype == np.float32
    np.testing.assert_allclose(xb.mean(), 0.0, atol=0.02)
    np.testing.assert_allclose(xb.std(), 2.0, rtol=0.01)
    assert np.array_equal(np.sort(yb), y)
    assert not x.any(), "the stored inputs must stay clean"


def test_noise_is_fresh_at_every_read_and_reproducible_from_the_seed():
    x = np.zeros((4, 2, 1), np.float32)
    y = np.arange(4, dtype=np.int32)

    def reads(seed):
        it = batches((x, y), 4, seed=seed, shuffle=False, transform=add_gaussian_noise(2.0))
        return [xb for xb, _ in itertools.islice(it, 2)]

    first_epoch, second_epoch = reads(0)
    assert not np.allclose(first_epoch, second_epoch)
    np.testing.assert_array_equal(reads(0)[0], first_epoch)
    assert not np.allclose(reads(1)[0], first_epoch)


def test_noise_on_another_array_of_the_batch():
    a, b = np.zeros((8, 1), np.float32), np.zeros((8, 1), np.float64)
    a_out, b_out = next(batches((a, b), 8, seed=0, transform=add_gaussian_noise(1.0, index=-1)))
    assert not a_out.any() and b_out.any() and b_out.dtype == np.float64


@pytest.mark.parametrize(
    ("arrays", "kwargs", "match"),
    [
        ((), {}, "at least one array"),
        ((np.zeros(3), np.zeros(4)), {}, "leading size"),
        ((np.zeros(3),), {"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ((np.zeros(3),), {"batch_size": True}, "batch_size"),
        ((np.zeros(3),), {"batch_size": 2.0}, "batch_size"),
        ((np.zeros(3),), {"epochs": 0}, "epochs must be a positive integer"),
        ((np.zeros(3),), {"batch_size": 4}, "exceeds the 3 examples"),
    ],
)
def test_bad_arguments_raise_early(arrays, kwargs, match):
    kwargs = {"batch_size": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        batches(arrays, kwargs.pop("batch_size"), seed=0, **kwargs)


def test_negative_noise_std_raises():
    with pytest.raises(ValueError, match="noise std must be >= 0, got -1"):
        add_gaussian_noise(-1.0)
