"""The one seeded mini-batch iterator shared by every experiment.

Each epoch draws a fresh permutation of the example indices from a generator seeded once,
and gathers each batch by fancy indexing: only the batch is copied, never the dataset.
A ``transform`` may change a batch as it is read (e.g. add fresh noise); it gets its own
random stream, so adding one does not change the order in which examples are drawn.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator

import numpy as np

Batch = tuple[np.ndarray, ...]
Transform = Callable[[Batch, np.random.Generator], Batch]
"""``transform(batch, rng) -> batch``: called on every batch as it is read."""


def steps_per_epoch(num_examples: int, batch_size: int, *, drop_remainder: bool = True) -> int:
    """Number of batches ``batches`` yields per epoch."""
    _check_positive_int("batch_size", batch_size)
    full, rest = divmod(num_examples, batch_size)
    return full if drop_remainder or rest == 0 else full + 1


def batches(
    arrays: Batch,
    batch_size: int,
    *,
    seed: int,
    epochs: int | None = None,
    shuffle: bool = True,
    drop_remainder: bool = True,
    transform: Transform | None = None,
) -> Iterator[Batch]:
    """Yields mini-batches of ``arrays`` (sliced together along axis 0).

    Args:
      arrays: arrays with the same leading size N, e.g. ``(x, y)``.
      batch_size: examples per batch.
      seed: seeds the per-epoch shuffles and the transform's random stream.
      epochs: number of passes over the data; ``None`` iterates forever.
      shuffle: draw a new permutation every epoch; ``False`` reads in order (evaluation).
      drop_remainder: skip the last ``N % batch_size`` examples of each epoch (the order
        is reshuffled every epoch, so each example is still seen); ``False`` yields a
        smaller last batch.
      transform: ``transform(batch, rng)`` applied to every batch, with ``rng`` a
        ``np.random.Generator`` drawn from ``seed``.

    Returns:
      An iterator of tuples, one array per input, each ``[batch_size, ...]``.
    """
    arrays = tuple(arrays)
    if not arrays:
        raise ValueError("batches needs at least one array")
    sizes = {len(a) for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"arrays must share their leading size, got {[len(a) for a in arrays]}")
    num_examples = sizes.pop()
    _check_positive_int("batch_size", batch_size)
    if epochs is not None:
        _check_positive_int("epochs", epochs)
    if steps_per_epoch(num_examples, batch_size, drop_remainder=drop_remainder) == 0:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {num_examples} examples and "
            "drop_remainder=True: no batch would be yielded"
        )
    return _iterate(
        arrays, num_examples, batch_size, seed, epochs, shuffle, drop_remainder, transform
    )


def _iterate(
    arrays: Batch,
    num_examples: int,
    batch_size: int,
    seed: int,
    epochs: int | None,
    shuffle: bool,
    drop_remainder: bool,
    transform: Transform | None,
) -> Iterator[Batch]:
    order_seed, transform_seed = np.random.SeedSequence(seed).spawn(2)
    order_rng = np.random.default_rng(order_seed)
    transform_rng = np.random.default_rng(transform_seed)
    stop = num_examples - num_examples % batch_size if drop_remainder else num_examples
    epoch = 0
    while epochs is None or epoch < epochs:
        order = order_rng.permutation(num_examples) if shuffle else np.arange(num_examples)
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            batch = tuple(a[index] for a in arrays)
            yield batch if transform is None else transform(batch, transform_rng)
        epoch += 1


def add_gaussian_noise(std: float, *, index: int = 0) -> Transform:
    """A transform adding fresh ``N(0, std^2)`` noise to ``batch[index]`` at every read.

    The noise is drawn in the dtype of that array, so float32 inputs stay float32.
    """
    if not std >= 0:
        raise ValueError(f"noise std must be >= 0, got {std}")

    def transform(batch: Batch, rng: np.random.Generator) -> Batch:
        i = index % len(batch)
        x = batch[i]
        noisy = x + rng.standard_normal(x.shape, dtype=x.dtype) * x.dtype.type(std)
        return (*batch[:i], noisy, *batch[i + 1 :])

    return transform


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
