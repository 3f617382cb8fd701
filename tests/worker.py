"""Run a Python snippet in a fresh process and read back the JSON it prints.

Several CPU devices exist only if JAX is told before it starts, so the multi-device tests
run their checks in a process of their own (``JAX_PLATFORMS=cpu``), which prints one line
``RESULT <json>``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests import ROOT


def host_devices(count: int) -> dict[str, str]:
    """The environment for a worker with ``count`` CPU devices, the session's XLA flags
    (``tests/conftest.py``) kept."""
    session = os.environ.get("XLA_FLAGS", "")
    return {"XLA_FLAGS": f"{session} --xla_force_host_platform_device_count={count}".strip()}


def run_worker(code: str, env: dict[str, str], *, drop: tuple[str, ...] = ()) -> dict:
    """Runs ``code`` from the repository root with ``env`` added and ``drop`` removed from
    this environment; returns the JSON of its ``RESULT`` line (the test fails with the
    worker's stderr if it exits non-zero)."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **env}
    for name in drop:
        full.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))
