"""What installing fw-optax gives: the library on jax, optax and chex alone, typed, linted,
built into a wheel that works away from the repository."""

import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import fw_optax

from tests import ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

# The library's source files, __init__ included, and the modules pkgutil lists (without it).
LIBRARY_FILES = sorted(p.name for p in (ROOT / "fw_optax").glob("*.py"))
LIBRARY_MODULES = sorted(name[:-3] for name in LIBRARY_FILES if name != "__init__.py")


def _run(*args, cwd=ROOT, env=None, timeout=300):
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=timeout
    )


def test_the_library_depends_on_jax_optax_and_chex_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0] for dep in project["dependencies"]}
    assert names == {"jax", "jaxlib", "optax", "chex"}
    assert any(dep.startswith("flax") for dep in project["optional-dependencies"]["benchmarks"])


def test_importing_fw_optax_imports_no_flax():
    code = "import sys, fw_optax; print(sorted(m for m in sys.modules if m.startswith('flax')))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_one_version_source_that_the_changelog_names():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fw_optax.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", fw_optax.__version__)
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases[0] == fw_optax.__version__


def test_mypy_strict_is_clean():
    out = _run(sys.executable, "-m", "mypy", "--strict", "fw_optax")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found in" in out.stdout


def test_ruff_check_and_format_are_clean():
    check = _run(sys.executable, "-m", "ruff", "check", ".")
    assert check.returncode == 0, check.stdout + check.stderr
    form = _run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert form.returncode == 0, form.stdout + form.stderr


# Run in the fresh environment: fw_optax comes from it, the README's Quick start runs and
# learns, and every docstring example of every module runs.
CHECK_INSTALLED = """
import doctest, importlib, importlib.metadata, importlib.util, inspect, json, pathlib, pkgutil
import sys
import fw_optax, jax

namespace = {}
exec(compile(pathlib.Path(sys.argv[1]).read_text(), "README.md", "exec"), namespace)
loss_fn, params, batch = namespace["loss_fn"], namespace["params"], namespace["batch"]
zeros = jax.tree.map(lambda x: 0 * x, params)
doctests = {}
for info in pkgutil.iter_modules(fw_optax.__path__):
    module = importlib.import_module(f"fw_optax.{info.name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    doctests[info.name] = [result.attempted, result.failed, inspect.getsource(module).count(">>>")]
print(json.dumps({
    "file": fw_optax.__file__,
    "version": fw_optax.__version__,
    "metadata_version": importlib.metadata.version("fw-optax"),
    "sys_path": [str(pathlib.Path(p).resolve()) for p in sys.path],
    "repository_packages": [m for m in ("models", "benchmarks") if importlib.util.find_spec(m)],
    "outer_steps": int(namespace["state"][0].count),
    "loss": float(loss_fn(params, batch)),
    "initial_loss": float(loss_fn(zeros, batch)),
    "doctests": doctests,
}))
"""


def _quick_start() -> str:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)[0]


def test_wheel_and_sdist_hold_the_library_alone_and_the_wheel_runs_on_its_own(tmp_path):
    dist = tmp_path / "dist"
    build = _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(dist))
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = dist.glob("fw_optax-*.whl")
    (sdist,) = dist.glob("fw_optax-*.tar.gz")
    version = fw_optax.__version__
    assert wheel.name == f"fw_optax-{version}-py3-none-any.whl"
    assert sdist.name == f"fw_optax-{version}.tar.gz"

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        shipped_license = archive.read(f"fw_optax-{version}.dist-info/licenses/LICENSE")
        metadata = archive.read(f"fw_optax-{version}.dist-info/METADATA").decode()
    assert {name.split("/")[0] for name in names} == {"fw_optax", f"fw_optax-{version}.dist-info"}
    assert sorted(n[len("fw_optax/") :] for n in names if n.endswith(".py")) == LIBRARY_FILES
    assert "fw_optax/py.typed" in names
    assert shipped_license == (ROOT / "LICENSE").read_bytes()
    assert b"Apache License" in shipped_license and b"Version 2.0" in shipped_license
    assert f"\nVersion: {version}\n" in metadata
    assert "\nLicense-Expression: Apache-2.0\n" in metadata
    assert "\nClassifier: Typing :: Typed\n" in metadata
    assert "\nDescription-Content-Type: text/markdown\n" in metadata
    assert "\nProject-URL: Paper, https://arxiv.org/abs/2010.05397\n" in metadata

    with tarfile.open(sdist) as archive:
        top = {Path(name).parts[1] for name in archive.getnames() if len(Path(name).parts) > 1}
    assert not top & {"models", "benchmarks", "tests", "results"}
    assert top == {
        "fw_optax",
        "fw_optax.egg-info",
        "PKG-INFO",
        "setup.cfg",
        "pyproject.toml",
        "MANIFEST.in",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
    }

    twine = _run(sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist))
    assert twine.returncode == 0, twine.stdout + twine.stderr
    assert twine.stdout.count("PASSED") == 2

    # A fresh environment away from the repository; its dependencies (jax, optax, chex) are
    # the current environment's, reached through a .pth file, so no network is needed. Only
    # a directory listed in a .pth file joins sys.path: the .pth files inside it (the
    # repository's editable install among them) are not run.
    env_dir = tmp_path / "env"
    venv = _run(sys.executable, "-m", "venv", "--without-pip", str(env_dir))
    assert venv.returncode == 0, venv.stderr
    python = env_dir / "bin" / "python"
    env_site = _run(
        str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path
    )
    assert env_site.returncode == 0, env_site.stderr
    (Path(env_site.stdout.strip()) / "current_venv.pth").write_text(
        sysconfig.get_path("purelib") + "\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    pip = _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--no-deps",
        "--no-index",
        str(wheel),
        cwd=tmp_path,
        env=env,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr

    (tmp_path / "quick_start.py").write_text(_quick_start())
    (tmp_path / "check_installed.py").write_text(CHECK_INSTALLED)
    out = _run(str(python), "check_installed.py", "quick_start.py", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])

    assert Path(report["file"]).is_relative_to(env_dir)
    assert str(ROOT) not in report["sys_path"]
    assert report["repository_packages"] == []
    assert report["version"] == report["metadata_version"] == version
    assert report["outer_steps"] == 3
    assert report["loss"] < report["initial_loss"]
    assert sorted(report["doctests"]) == LIBRARY_MODULES
    for name, (attempted, failed, written) in report["doctests"].items():
        assert (attempted, failed) == (written, 0), name
    assert sum(attempted for attempted, _, _ in report["doctests"].values()) > 0
