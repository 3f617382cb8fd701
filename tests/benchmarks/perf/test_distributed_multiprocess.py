"""Data-parallel Frank-Wolfe across processes: 2 processes on the loopback interface, 2 CPU
devices each, one global mesh of 4 (``jax.distributed.initialize``, gloo CPU collectives).

Three outer steps of synchronous and of local FW (``benchmarks.perf.distributed``'s training
loop) must give the parameters one process with 4 devices gives; synchronous also those of
one device on the global batch. Every process is killed when the test ends, however it ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests import ROOT

RTOL = 1e-5
TIMEOUT_S = 150

_WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    process_id, num_processes, devices, address = sys.argv[1:]
    process_id, num_processes, devices = int(process_id), int(num_processes), int(devices)
    jax.config.update("jax_num_cpu_devices", devices)
    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=address, num_processes=num_processes, process_id=process_id,
            initialization_timeout=60)

    import jax.numpy as jnp, numpy as np
    from benchmarks.perf import distributed
    from benchmarks.training import parallel

    rng = np.random.default_rng(0)
    params = {
        "w1": rng.normal(size=(3, 5)).astype(np.float32),
        "b1": rng.normal(size=(5,)).astype(np.float32),
        "w2": rng.normal(size=(5,)).astype(np.float32),
    }
    batches = (rng.normal(size=(3, 8, 3)).astype(np.float32),  # 3 outer steps of batch 8
               rng.normal(size=(3, 8)).astype(np.float32))

    def loss(p, batch):
        x, y = batch
        return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)

    def three_steps(mesh, mode):
        tx = distributed.optimizer(3, 0.3, 0.5, mode)
        run = distributed.train_chunk(loss, tx, mesh, mode)
        state = distributed.replicate((params, tx.init(params)), mesh)
        new, _ = run(*state, distributed.shard_steps(batches, mesh))
        return {k: v.tolist() for k, v in distributed.to_host(new).items()}

    mesh = parallel.data_mesh(jax.devices())
    out = {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": len(jax.devices()),
        "local_devices": len(jax.local_devices()),
        "sync": three_steps(mesh, "sync"),
        "local": three_steps(mesh, "local"),
    }
    if num_processes == 1:
        out["one device"] = three_steps(parallel.data_mesh(jax.devices()[:1]), "jit")
    print("RESULT " + json.dumps(out), flush=True)
    if num_processes > 1:
        jax.distributed.shutdown()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(
    process_id: int, num_processes: int, devices: int, port: int, logs: Path
) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
    }  # XLA_FLAGS: the session's (tests/conftest.py)
    env.pop("JAX_NUM_CPU_DEVICES", None)
    args = [str(process_id), str(num_processes), str(devices), f"localhost:{port}"]
    name = f"{num_processes}x{devices}_{process_id}"
    with open(logs / f"{name}.out", "w") as out, open(logs / f"{name}.err", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-c", _WORKER, *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, killed whole below
        )


def _wait(procs: list[subprocess.Popen]) -> bool:
    """Until every process has exited or one has failed (``True``), or the time-out
    (``False``); then kills the rest."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            codes = [proc.poll() for proc in procs]
            if None not in codes or any(code not in (None, 0) for code in codes):
                return True
            time.sleep(0.2)
        return False
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _result(proc: subprocess.Popen, out: Path, err: Path) -> dict:
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{err.read_text()[-4000:]}"
    (line,) = [x for x in out.read_text().splitlines() if x.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    logs = tmp_path_factory.mktemp("multiprocess")
    procs: list[subprocess.Popen] = []
    try:
        port = _free_port()
        procs += [_start(i, 2, 2, port, logs) for i in range(2)]
        procs.append(_start(0, 1, 4, _free_port(), logs))
    finally:
        in_time = _wait(procs)
    if not in_time:
        pytest.fail(f"the processes did not finish within {TIMEOUT_S} s; their logs: {logs}")
    names = ["2x2_0", "2x2_1", "1x4_0"]
    first, second, single = (
        _result(proc, logs / f"{name}.out", logs / f"{name}.err")
        for proc, name in zip(procs, names, strict=True)
    )
    return {"processes": [first, second], "single": single}


def test_two_processes_share_one_mesh_of_four_devices(runs):
    for index, result in enumerate(runs["processes"]):
        assert result["process"] == index
        assert (result["processes"], result["devices"], result["local_devices"]) == (2, 4, 2)
    single = runs["single"]
    assert (single["processes"], single["devices"], single["local_devices"]) == (1, 4, 4)


@pytest.mark.parametrize("mode", ["sync", "local"])
def test_two_processes_equal_one_process(runs, mode):
    for result in runs["processes"]:
        for name, expected in runs["single"][mode].items():
            np.testing.assert_allclose(result[mode][name], expected, rtol=RTOL, atol=1e-6)


def test_synchronous_across_processes_equals_one_device(runs):
    for name, expected in runs["single"]["one device"].items():
        got = runs["processes"][0]["sync"][name]
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-6)


def test_local_differs_from_synchronous(runs):
    # The comparisons above could pass with both modes doing the same thing: they do not.
    single = runs["single"]
    diff = max(
        np.max(np.abs(np.subtract(single["sync"][k], single["local"][k]))) for k in single["sync"]
    )
    assert diff > 1e-3
