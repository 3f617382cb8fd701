"""What installing fw-optax gives: the library on jax, optax and chex alone."""

import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


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
