"""The in-memory dataset type every loader returns, and the error for a missing data package."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from typing import Any

import numpy as np

from benchmarks.training.data.batches import Transform


class MissingDataPackageError(ImportError):
    """An optional package that ships (or reads) a dataset is not installed."""

    def __init__(self, package: str, needed_for: str, install: str, hint: str = "") -> None:
        self.package = package
        self.install = install
        message = f"{needed_for} needs the package {package!r}, which is not installed. "
        message += f"Install it with:\n    {install}"
        if hint:
            message += f"\n{hint}"
        super().__init__(message, name=package)


def package_dir(package: str, needed_for: str, install: str, hint: str = "") -> str:
    """Returns the folder of an installed package without importing (running) it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackageError(package, needed_for, install, hint)
    return next(iter(spec.submodule_search_locations))


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset held in memory as NumPy arrays.

    Attributes:
      name: short identifier, e.g. ``"pixel-mnist"``.
      x_train: float32 inputs ``[N_train, T, F]`` (sequence length T, F features per step).
      y_train: int32 class labels ``[N_train]`` in ``[0, num_classes)``.
      x_test: float32 inputs ``[N_test, T, F]``.
      y_test: int32 class labels ``[N_test]``.
      num_classes: number of classes.
      card: the dataset card: source, license as stated, sizes, preprocessing.
      transform: applied to every batch as it is read (``batches(..., transform=...)``), on
        train and test alike; ``None`` for datasets read as stored. Noisy-HAR-2 uses it to
        draw fresh noise at every read.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    card: Mapping[str, Any]
    transform: Transform | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 3 or x.dtype != np.float32:
                raise ValueError(f"x_{split} must be float32 [N, T, F], got {x.dtype} {x.shape}")
            if y.shape != x.shape[:1] or y.dtype != np.int32:
                raise ValueError(f"y_{split} must be int32 [{len(x)}], got {y.dtype} {y.shape}")
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"y_{split} must lie in [0, {self.num_classes}), got [{y.min()}, {y.max()}]"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"train and test steps/features differ: {self.x_train.shape[1:]} vs "
                f"{self.x_test.shape[1:]}"
            )

    @property
    def sequence_length(self) -> int:
        return self.x_train.shape[1]

    @property
    def num_features(self) -> int:
        return self.x_train.shape[2]
