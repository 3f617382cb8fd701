"""The runner on two CPU devices (``--devices``): the data-parallel run equals the one-device
run, resumes from its checkpoint, and sends what cannot be split to one device.

Two CPU devices exist only if JAX is told before it starts, so the runs happen in one fresh
Python process (``_WORKER``) that prints its results as JSON; the tests assert on them.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.worker import run_worker

RTOL = 1e-4  # float32 after a few outer steps; the batch sums are split differently

_WORKER = textwrap.dedent(
    """
    import json, tempfile
    from pathlib import Path
    from benchmarks.training import parallel
    from benchmarks import run
    from benchmarks.registry import configs
    parallel.use_cpu_devices(2)
    from tests.benchmarks.test_run import toy_config, toy_dataset

    out = {}
    tmp = Path(tempfile.mkdtemp())

    def final(summary):
        return {k: summary["final"][k] for k in ("train_loss", "test_loss")}

    cases = {
        "adding_fw": ("adding", "fw", {"flavour": "alg1", "K": 3}),
        "adding_authors": ("adding", "fw", {"flavour": "authors", "K": 2}),
        "har2_fw": ("har2", "fw", {"flavour": "authors", "K": 2}),
    }
    for name, (task, method, kwargs) in cases.items():
        config = toy_config(task, method, **kwargs)
        dataset = None if task == "adding" else toy_dataset(task)
        runs = {}
        for devices in (1, 2):
            summary = run.run_experiment(
                config, tmp / f"{name}{devices}", dataset=dataset, progress=False, devices=devices
            )
            runs[devices] = {**final(summary), "devices": summary["devices"],
                             "per_device_batch": summary["per_device_batch"]}
        out[name] = runs

    class Killed(Exception):
        pass

    def kill(record):
        if record["step"] > 0:
            raise Killed

    config = toy_config("adding", "fw", flavour="alg1", K=3)
    try:
        run.run_experiment(config, tmp / "resume", progress=False, devices=2,
                           checkpoint_every_s=0.0, on_record=kill)
        out["killed"] = False
    except Killed:
        out["killed"] = True
    summary_path, _, ckpt = run.run_files(config, tmp / "resume")
    out["summary_after_kill"] = summary_path.exists()
    out["checkpoints_after_kill"] = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    out["steps"] = config.steps
    out["resumed"] = final(run.run_experiment(config, tmp / "resume", progress=False, devices=2))

    tbptt = run.run_experiment(toy_config("har2", "tbptt"), tmp / "tbptt",
                               dataset=toy_dataset("har2"), progress=False, devices=2)
    out["tbptt_devices"] = tbptt["devices"]
    import dataclasses
    odd = dataclasses.replace(toy_config("har2", "fw", flavour="authors", K=1), batch_size=3)
    out["odd_devices"] = run.run_experiment(odd, tmp / "odd", dataset=toy_dataset("har2"),
                                            progress=False, devices=2)["devices"]
    try:
        run.run_experiment(config, tmp / "three", progress=False, devices=3)
    except ValueError as error:
        out["too_many"] = str(error)

    # Local Frank-Wolfe: inner steps on each device's shard, Δ_K averaged once.
    local = toy_config("adding", "fw", flavour="alg1", K=3, fw_mode="local")
    out["local"] = {d: final(run.run_experiment(local, tmp / f"local{d}", progress=False,
                                                devices=d)) for d in (1, 2)}
    out["local_name"] = configs.run_name(local)
    seeds = [toy_config("adding", "fw", flavour="alg1", K=3, seed=s) for s in (0, 1)]
    out["seeds_two_devices"] = [
        {**final(s), "devices": s["devices"]}
        for s in run.run_seeds(seeds, tmp / "seeds", progress=False, devices=2)
    ]
    out["seeds_apart"] = [final(run.run_experiment(c, tmp / "apart", progress=False, devices=2))
                          for c in seeds]
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def two_device_runs() -> dict:
    # The worker inherits the session's XLA flags (tests/conftest.py).
    return run_worker(_WORKER, {}, drop=("JAX_NUM_CPU_DEVICES",))


@pytest.mark.parametrize("case", ["adding_fw", "adding_authors", "har2_fw"])
def test_two_device_run_equals_one_device_run(two_device_runs, case):
    one, two = two_device_runs[case]["1"], two_device_runs[case]["2"]
    assert (one["devices"], two["devices"]) == (1, 2)
    assert two["per_device_batch"] * 2 == one["per_device_batch"]
    for key in ("train_loss", "test_loss"):
        assert two[key] == pytest.approx(one[key], rel=RTOL), key


def test_two_device_run_resumes_from_its_checkpoint(two_device_runs):
    # The first call was killed part way: no summary, a checkpoint before the last step.
    assert two_device_runs["killed"] and not two_device_runs["summary_after_kill"]
    saved = two_device_runs["checkpoints_after_kill"]
    assert saved and 0 < max(saved) < two_device_runs["steps"]
    whole = two_device_runs["adding_fw"]["2"]
    for key in ("train_loss", "test_loss"):
        assert two_device_runs["resumed"][key] == pytest.approx(whole[key], rel=RTOL)


def test_what_cannot_be_split_runs_on_one_device(two_device_runs):
    assert two_device_runs["tbptt_devices"] == 1
    assert two_device_runs["odd_devices"] == 1


def test_more_devices_than_there_are_is_a_clear_error(two_device_runs):
    assert "devices must be in 1..2, got devices=3" in two_device_runs["too_many"]


def test_local_frank_wolfe_on_one_device_is_synchronous_and_on_two_is_not(two_device_runs):
    local, sync = two_device_runs["local"], two_device_runs["adding_fw"]
    for key in ("train_loss", "test_loss"):
        assert local["1"][key] == sync["1"][key]
        # Each device's own inner gradients: another trajectory than the global batch's.
        assert local["2"][key] != pytest.approx(sync["2"][key], rel=RTOL)
    assert "_fwmodelocal_" in two_device_runs["local_name"]


def test_seeds_in_one_program_on_two_devices_equal_separate_runs(two_device_runs):
    together, apart = two_device_runs["seeds_two_devices"], two_device_runs["seeds_apart"]
    assert [s["devices"] for s in together] == [2, 2]
    for a, b in zip(together, apart, strict=True):
        for key in ("train_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=RTOL)
