"""benchmarks/perf/gpu_check.sh, the one script a lent GPU runs: every step's command parses and
the steps fit the device's time, a toy step runs end to end on a CPU, and a failing step
fails the run, named."""

import importlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests import ROOT


def _gpu_check(out: Path, timeout: int, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "perf" / "gpu_check.sh"), str(out)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _dry_steps(out: Path) -> list[tuple[str, int, list[str]]]:
    result = _gpu_check(out, 60, GPU_CHECK_DRY="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("gpu_check: dry run, nothing ran")
    steps = []
    for line in result.stdout.splitlines():
        if line.startswith("DRY "):
            _, name, limit, *command = shlex.split(line)
            steps.append((name, int(limit), command))
    return steps


def test_every_step_of_the_gpu_run_parses_and_the_steps_fit_the_device_time(tmp_path):
    steps = _dry_steps(tmp_path)
    names = [name for name, _, _ in steps]
    assert names == [
        "perf_models", "compare_torch", "compare_torch_large", "compare_torch_float32",
        "perf_seeds", "perf_models_float32", "tests",
    ]  # fmt: skip
    # One device command may run 600 s; the script keeps 90 s for start-up and copying.
    assert sum(limit for _, limit, _ in steps) <= 510
    for name, _, command in steps:
        assert command[1] == "-m", command
        if command[2] == "pytest":
            continue
        module = importlib.import_module(command[2])
        args = module.parse_args(command[3:])  # exits (fails the test) on a bad option
        if getattr(args, "out", None):
            assert Path(args.out).parent == tmp_path, name
    # The test step selects the kernels' tests it names.
    (tests,) = [command for name, _, command in steps if name == "tests"]
    collected = subprocess.run(
        [sys.executable, *tests[1:], "--collect-only"], cwd=ROOT, capture_output=True, text=True
    )
    assert collected.returncode == 0, collected.stdout[-2000:]
    assert sum("test_pallas.py::" in line for line in collected.stdout.splitlines()) >= 10


def test_a_toy_step_runs_end_to_end_and_writes_its_file(tmp_path):
    result = _gpu_check(tmp_path, 300, GPU_CHECK_TOY="1", GPU_CHECK_STEPS="seeds",
                        PYTHON=sys.executable, JAX_PLATFORMS="cpu")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "gpu_check: every step passed" in result.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"env.txt", "perf_seeds.txt"}
    assert "jax" in (tmp_path / "env.txt").read_text()
    assert "| toy adding" in (tmp_path / "perf_seeds.txt").read_text()


def test_a_failing_step_fails_the_run_and_is_named(tmp_path):
    result = _gpu_check(tmp_path, 60, GPU_CHECK_STEPS="seeds", PYTHON="false")  # exits 1
    assert result.returncode == 1
    assert "FAILED steps: perf_seeds" in result.stdout
