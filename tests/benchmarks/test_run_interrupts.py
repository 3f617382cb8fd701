"""A run of ``python -m benchmarks.run`` killed at random moments (SIGKILL twice, then
Ctrl-C) and run again each time ends with the numbers and the evaluation curve of an
uninterrupted run: no evaluation missing or doubled, nothing trained twice."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import run

from tests import ROOT

STEPS, EVAL_EVERY = 300, 10
ARGS = ["--task", "adding", "--method", "fw", "--K", "2", "--flavour", "alg1",
        "--set", "hidden=3", "length=8", "unroll=1", "--steps", str(STEPS),
        "--eval-every", str(EVAL_EVERY), "--test-size", "10", "--no-progress",
        "--checkpoint-every", "30steps"]  # fmt: skip


def _start(out: Path, cache: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        # The four processes compile one program: compile it once.
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    command = [sys.executable, "-m", "benchmarks.run", *ARGS, "--out", str(out)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _records(curves: Path) -> list[dict]:
    if not curves.is_file():
        return []
    lines = curves.read_text().splitlines()
    # A line being written as it is read is not a record yet.
    return [json.loads(line) for line in lines if line.endswith("}")]


def _wait_for_step(process: subprocess.Popen, curves: Path, step: int) -> None:
    deadline = time.monotonic() + 120
    while not any(r["step"] >= step for r in _records(curves)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"no evaluation at step {step} within 120 s"
        time.sleep(0.002)


def _deterministic(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records]


def test_killed_at_random_moments_it_ends_as_an_uninterrupted_run(tmp_path):
    _, ((config,),) = run.parse_args([*ARGS, "--out", str(tmp_path)])
    # The uninterrupted run, in a process like the others (same XLA flags), alongside.
    reference = _start(tmp_path / "whole", tmp_path / "xla")
    out = tmp_path / "killed"
    summary_path, curves, _ = run.run_files(config, out)
    rng = random.Random(0)
    target = 0
    for signum in (signal.SIGKILL, signal.SIGKILL, signal.SIGINT):
        target += EVAL_EVERY * rng.randint(3, 8)  # at most 240 of the 300 steps
        process = _start(out, tmp_path / "xla")
        _wait_for_step(process, curves, target)
        time.sleep(rng.uniform(0.0, 0.02))
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
        assert not summary_path.exists(), f"the run finished before {signum.name}"
        if signum == signal.SIGKILL:
            assert process.returncode == -signal.SIGKILL
        else:  # Ctrl-C: saved, exit status 130, and the command that continues it
            assert process.returncode == 130, err
            assert "stopped by SIGINT" in err and "continue with: python -m benchmarks.run" in err
    process = _start(out, tmp_path / "xla")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    summary = json.loads(summary_path.read_text())
    records = _records(curves)
    assert [r["step"] for r in records] == list(range(0, STEPS + 1, EVAL_EVERY))
    _, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err
    whole_summary, whole_curves, _ = run.run_files(config, tmp_path / "whole")
    assert _deterministic(records) == _deterministic(_records(whole_curves))
    whole = json.loads(whole_summary.read_text())
    for key in ("test_loss", "train_loss", "step", "grad_evals"):
        assert summary["final"][key] == whole["final"][key]
