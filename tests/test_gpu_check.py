"""benchmarks/gpu_check.sh runs end to end at toy size on a CPU: every step passes and writes
what it promises, so the script a lent GPU runs once has already run here."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check(out: Path, timeout: int, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)],
        env={**os.environ, "GPU_CHECK_TOY": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_toy_run_passes_every_step_and_writes_every_file(tmp_path):
    result = _gpu_check(tmp_path, 900, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "gpu_check: every step passed" in result.stdout
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {
        "env.txt",
        "perf_models.txt",
        "perf_models_float32.txt",
        "compare_torch.txt",
        "perf_seeds.txt",
        "test_pallas.log",
    }
    perf = (tmp_path / "perf_models.txt").read_text()
    assert "[3] gradient of each cell" in perf and "pallas" in perf
    compare = (tmp_path / "compare_torch.txt").read_text()
    # Checked in float64 before it timed anything, then both sides timed.
    assert compare.count("float64 check") == 1 and compare.count(": exit 0 after") == 1
    assert "fw-optax[pallas]" in compare and "torch" in compare
    assert "passed" in (tmp_path / "test_pallas.log").read_text()


def test_a_failing_step_fails_the_run_and_is_named(tmp_path):
    result = _gpu_check(tmp_path, 60, GPU_CHECK_STEPS="seeds", PYTHON="false")  # exits 1
    assert result.returncode == 1
    assert "FAILED steps: perf_seeds" in result.stdout
