"""The declared minimum versions work: jax, jaxlib, optax and chex at the lowest versions that
pyproject.toml allows, installed together into a fresh environment, pass the library's own
tests there.

The versions come from ``.ci/minimum-versions.txt``, a pip constraints file that must agree
with pyproject.toml's ``>=`` bounds. The fresh environment needs the package index (PyPI or
a mirror); pip's download cache is reused, so a second run downloads nothing.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests import ROOT

CONSTRAINTS = ROOT / ".ci" / "minimum-versions.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# The tests of fw_optax itself, which need neither flax nor the repository's models/ and
# benchmarks/, and the modules they share.
# Paths relative to tests/.
LIBRARY_TESTS = [
    "fw_optax/test_doctests.py",
    "fw_optax/test_frank_wolfe.py",
    "fw_optax/test_lmo.py",
    "fw_optax/test_optax_battery.py",
]
HELPERS = ["conftest.py", "fw_optax/numpy_reference.py", "worker.py"]
# The packages they import the helpers through (``tests.worker``).
PACKAGE = ["__init__.py", "fw_optax/__init__.py"]
# What those files may import besides the standard library and each other.
ALLOWED_IMPORTS = {"fw_optax", "jax", "numpy", "optax", "chex", "pytest", "hypothesis"}
# The library's source: what pip builds the wheel from (pyproject.toml names the rest).
SOURCE = ["fw_optax", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "CHANGELOG.md"]


def _minimums() -> dict[str, str]:
    """``{name: version}`` of the constraints file's ``name==version`` lines."""
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


def _requirement(spec: str) -> tuple[str, str, str]:
    """``"jax>=0.8.2"`` -> ``("jax", ">=", "0.8.2")``."""
    match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)\s*(>=|==|<=|~=|<|>)\s*(\S+)", spec)
    assert match, spec
    name, op, version = match.groups()
    return name, op, version


def test_the_constraints_are_the_declared_minimums():
    declared = {}
    for spec in PYPROJECT["dependencies"]:
        name, op, version = _requirement(spec)
        assert op == ">=", f"{spec}: a dependency's lowest version is declared with >="
        declared[name] = version
    assert _minimums() == declared


def _imports(path: Path) -> set[str]:
    """The top-level modules ``path`` imports, including inside its code strings (the
    subprocess scripts of the multi-device tests)."""
    sources = [path.read_text()]
    tree = ast.parse(sources[0])
    sources += [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value
    ]
    names = set()
    for source in sources:
        try:
            parsed = ast.parse(source)
        except SyntaxError:
            continue  # a docstring or message, not code
        for node in ast.walk(parsed):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", LIBRARY_TESTS + HELPERS)
def test_the_library_tests_need_only_the_library_and_its_test_tools(name):
    local = {"tests"}
    extra = _imports(ROOT / "tests" / name) - set(sys.stdlib_module_names) - local
    assert extra <= ALLOWED_IMPORTS, f"{name} imports {sorted(extra - ALLOWED_IMPORTS)}"


def test_every_library_module_with_a_test_file_is_selected():
    # tests/ mirrors the modules: tests/fw_optax/test_lmo.py tests fw_optax/_lmo.py.
    mirrored = {
        f"fw_optax/test_{module.stem.lstrip('_')}.py"
        for module in (ROOT / "fw_optax").glob("_*.py")
    }
    present = {
        path.relative_to(ROOT / "tests").as_posix() for path in (ROOT / "tests").rglob("test_*.py")
    }
    assert mirrored & present <= set(LIBRARY_TESTS)


def _run(*args, cwd, env, timeout):
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


@pytest.mark.network
def test_the_library_tests_pass_at_the_minimum_versions(tmp_path):
    minimums = _minimums()
    tools = [
        spec
        for spec in PYPROJECT["optional-dependencies"]["test"]
        if _requirement(spec)[0] in ("pytest", "hypothesis")
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("PYTEST_")
    }
    venv = _run(sys.executable, "-m", "venv", tmp_path / "env", cwd=tmp_path, env=env, timeout=300)
    assert venv.returncode == 0, venv.stderr
    python = tmp_path / "env" / "bin" / "python"

    install = _run(
        python,
        "-m",
        "pip",
        "install",
        "--constraint",
        CONSTRAINTS,
        *minimums,
        *tools,
        cwd=tmp_path,
        env=env,
        timeout=1200,
    )
    if install.returncode != 0:
        pytest.fail(
            f"pip could not install {sorted(minimums.items())} with {tools} from the package "
            "index. This test needs PyPI (or a mirror pip is configured for): is it "
            f"reachable, and does it hold these versions?\n{install.stdout[-3000:]}"
            f"{install.stderr[-3000:]}"
        )
    # fw_optax alone, built from a copy of its source (pip builds in the source folder).
    source = tmp_path / "source"
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    own = _run(
        python, "-m", "pip", "install", "--no-deps", source, cwd=tmp_path, env=env, timeout=600
    )
    assert own.returncode == 0, own.stdout[-3000:] + own.stderr[-3000:]

    versions = _run(
        python,
        "-c",
        "import importlib.metadata as m, json, sys, fw_optax;"
        "print(json.dumps([{n: m.version(n) for n in sys.argv[1:]}, fw_optax.__file__]))",
        *sorted(minimums),
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert versions.returncode == 0, versions.stderr
    installed, library = json.loads(versions.stdout)
    assert installed == minimums
    assert Path(library).is_relative_to(tmp_path / "env")

    tests = tmp_path / "tests"
    for name in PACKAGE + LIBRARY_TESTS + HELPERS:
        (tests / name).parent.mkdir(parents=True, exist_ok=True)
        (tests / name).write_text((ROOT / "tests" / name).read_text())
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # this folder is the rootdir, no addopts
    run = _run(
        python,
        "-m",
        "pytest",
        "tests",
        "-q",
        "-p",
        "no:cacheprovider",
        "--junitxml=report.xml",
        cwd=tmp_path,
        env=env,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]

    # Every selected file ran its tests, and none was skipped.
    by_file: dict[str, list[str]] = {}
    for case in ET.parse(tmp_path / "report.xml").getroot().iter("testcase"):
        outcome = {child.tag for child in case} & {"failure", "error", "skipped"}
        by_file.setdefault("/".join(case.get("classname").split(".")[1:3]) + ".py", []).append(
            min(outcome, default="passed")
        )
    assert sorted(by_file) == sorted(LIBRARY_TESTS)
    for name, outcomes in by_file.items():
        assert set(outcomes) == {"passed"}, (name, sorted(set(outcomes)))
