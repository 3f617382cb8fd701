"""Run experiments: one command per claim, every setting from the command line.

    python -m benchmarks.run --task har2 --method fw --K 5 --flavour authors --preset cpu
    python -m benchmarks.run --task adding --method sgd adam fw --K 1 5 --length 200 --seed 1
    python -m benchmarks.run --task har2 --method sgd --set lr=0.05 hidden=64
    python -m benchmarks.run --task har2 --method fw --K 5 --seeds 0 1 2   # one program
    python -m benchmarks.run --task noisy_har2 --method all --preset cpu

Settings come from the task and method registries (``benchmarks/registry/tasks.py``,
``benchmarks/registry/methods.py``) through ``benchmarks/registry/configs.py`` (``--preset paper``:
the authors'; ``cpu``: a reduced budget); ``--set field=value`` changes any other field, checked
against the configuration's fields and types before anything runs. Each run writes, under ``--out``
(default ``runs``, which git ignores; the reproduction's ``results`` only when named):

* ``<task>/<run>.jsonl``: the curves, one record per evaluation, written as measured;
* ``<task>/<run>.json``: the configuration, the overrides, the machine, the final numbers and
  their cost (``status``: ``finished``, or ``diverged`` with the step and loss); a run
  resumed on another machine adds ``trained_on``, the stretches of steps and the machine
  of each;
* ``<task>/ckpt/<run>/``: orbax checkpoints (the last two); rerunning the same command
  resumes from the last readable one (on any machine and device count), a larger
  ``--steps`` / ``--epochs`` extends a finished run, ``--restart`` starts over,
  ``--start-from FOLDER`` continues a run new to ``--out`` from its checkpoint in another
  results folder (a longer budget kept apart from the shorter one). A run sent
  SIGTERM (a scheduler, ``timeout``) or Ctrl-C saves at its next evaluation point, prints
  the command that continues it and exits with status 143 (130 for Ctrl-C) without a
  summary; a second Ctrl-C aborts at once. The state is also saved every
  ``--checkpoint-every`` (default ``60s``; or steps, ``500steps``), all a SIGKILL can lose;
* ``<task>/ckpt/<run>.lock``: held while the run trains, so a second process training the
  same run into the same folder is refused.

A run whose summary already records it finished with the same configuration (budget
included) is not trained again: the command says so and moves on, so a loop over rows can
be rerun after an interruption, on a fresh clone too (checkpoints are not committed). A run
whose summary records other settings or a larger budget is not replaced: the command
refuses before training anything and names the difference (``--restart`` replaces it).

``<task>`` is ``adding_T<length>`` for the adding task, and ``<run>`` is
``<method>[_K<K>_<flavour>][_<override>...]_<preset>_seed<seed>``. ``--seeds`` trains the
seeds in one compiled program and writes the same per-seed files as separate runs.

A run whose training loss stops being finite stops there with a message naming the step,
the loss and the run; its summary says ``diverged`` and the command exits with status 1.
``--on-nonfinite skip`` skips such updates instead (``optax.apply_if_finite``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.registry import configs
from benchmarks.registry.configs import Config, get_config
from benchmarks.registry.methods import METHODS, build_optimizer
from benchmarks.registry.tasks import (
    TASKS,
    TaskData,
    build_model,
    get_task,
    init_variables,
    load_task_data,
    make_objective,
    missing_packages,
)
from benchmarks.training.curves import read_records
from benchmarks.training.summaries import RunSummary, read_summary, write_summary

if TYPE_CHECKING:
    import jax

    from benchmarks.training.data import Dataset
    from benchmarks.training.stopping import Diverged
    from benchmarks.training.train import TrainResult

# jax, the training loop and the devices are imported where a run trains, so that the
# command line answers --help and refuses bad input at once.


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a configuration maps onto the loop: steps, evaluation interval and costs."""

    steps: int
    eval_every: int
    batches_per_step: int
    updates_per_step: int
    grad_evals_per_step: float
    updates_per_epoch: int | None


def make_plan(config: Config, data: TaskData) -> Plan:
    """Outer steps, evaluation interval and per-step costs of ``config`` on ``data``.

    Datasets: an epoch is a pass of ``batches_per_epoch`` mini-batches; the authors' FW
    flavour eats K of them per outer step. TBPTT makes ``ceil(n / K)`` updates per batch
    (n chunks), each K chunk gradients of ``L / T`` of a sequence.
    """
    bps = configs.batches_per_step(config)
    K = config.K if configs.is_fw(config) else 1
    updates, grads = 1, float(K)
    if configs.is_tbptt(config):
        n = data.sequence_length // config.chunk_length
        updates = -(-n // K)
        grads = updates * K / n
    per_epoch = data.stream.batches_per_epoch
    if per_epoch is None:  # generated data: the budget is in outer steps
        return Plan(config.steps, config.eval_every, bps, updates, grads, None)
    steps_per_epoch = per_epoch // bps
    if steps_per_epoch < 1:
        raise ValueError(
            f"an epoch of {per_epoch} batches is shorter than one outer step of {bps} "
            "batches; lower K or the batch size"
        )
    eval_every = max(1, steps_per_epoch // config.evals_per_epoch)
    steps = eval_every * config.evals_per_epoch * config.epochs
    return Plan(steps, eval_every, bps, updates, grads, steps_per_epoch * updates)


def epoch_note(config: Config, data: TaskData, plan: Plan) -> str | None:
    """What ``--epochs`` trains, when it is not that many whole passes over the training
    set: the examples a pass leaves out (a partial last batch is dropped; the order is
    reshuffled every pass) and the batches the epochs of outer steps leave out (whole outer
    steps of K batches, evaluations at equal intervals). ``None`` when nothing is left out."""
    per_pass = data.stream.batches_per_epoch
    if per_pass is None or config.epochs is None:
        return None
    examples, batch = len(data.stream.arrays[0]), config.batch_size
    left_out = examples - per_pass * batch
    passes = plan.steps * plan.batches_per_step / per_pass
    if not left_out and passes == config.epochs:
        return None
    steps_per_epoch = plan.steps // config.epochs
    text = (
        f"--epochs {config.epochs} trains {passes:.2f} passes over the data: a pass is "
        f"{per_pass} batches of {batch}, {per_pass * batch} of the {examples} training examples"
    )
    if left_out:
        text += f" (the last {left_out} dropped, others each pass)"
    if passes != config.epochs:
        text += (
            f"; an epoch here is {steps_per_epoch} outer steps of {plan.batches_per_step} "
            f"batch(es) ({config.evals_per_epoch} evaluation(s) every {plan.eval_every} steps), "
            f"{per_pass - steps_per_epoch * plan.batches_per_step} batch(es) short of a pass"
        )
    return text


def run_files(config: Config, out: Path) -> tuple[Path, Path, Path]:
    """``(summary .json, curves .jsonl, checkpoint folder)`` of a run under ``out``."""
    folder, name = out / configs.task_dir(config), configs.run_name(config)
    return folder / f"{name}.json", folder / f"{name}.jsonl", folder / "ckpt" / name


def _label(config: Config) -> str:
    """How messages name a run: its folder and name."""
    return f"{configs.task_dir(config)} {configs.run_name(config)}"


def _group_checkpoints(configs_: Sequence[Config], out: Path) -> Path:
    """The checkpoint folder of seeds trained in one program."""
    first = configs_[0]
    seeds = "-".join(str(c.seed) for c in configs_)
    name = configs.run_name(first).rsplit("_seed", 1)[0] + f"_seeds{seeds}"
    return out / configs.task_dir(first) / "ckpt" / name


def _checkpoint_meta(config: Config, plan: Plan, seeds: Sequence[int]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: everything but the budget."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in configs.RESUMABLE}
    settings["seed"] = list(seeds)
    schedule = {k: v for k, v in dataclasses.asdict(plan).items() if k != "steps"}
    return {"config": settings, "plan": schedule}


def _finished(config: Config, summary_path: Path) -> dict[str, Any] | None:
    """The summary at ``summary_path`` if it records a finished run of exactly ``config``
    (every field, the budget included, as :func:`_differences` compares them), else
    ``None``."""
    summary = read_summary(summary_path)
    if summary is None or summary.status != "finished" or _differences(config, summary):
        return None
    return summary.to_json()


def _differences(config: Config, summary: RunSummary) -> dict[str, tuple[Any, Any]]:
    """``{field: (recorded, asked)}`` where ``summary``'s configuration and ``config`` differ.

    A field added to :class:`Config` after the summary was written counts as its default
    there; a field the summary has and ``Config`` no longer has differs (asked: ``None``).
    """
    recorded = configs.recorded_config(summary.config)
    current = configs.as_json(dataclasses.asdict(config))
    names = sorted(set(recorded) | set(current))
    return {
        k: (recorded.get(k), current.get(k)) for k in names if recorded.get(k) != current.get(k)
    }


class RunExists(ValueError):
    """A run's folder already holds a run that this command would replace."""


def refuse_replacing(
    configs_: Sequence[Config], out: Path, *, start_from: Path | None = None
) -> None:
    """Raises :class:`RunExists` if a run under ``out`` would be overwritten: its summary
    (finished or diverged) records other settings or a larger budget than the command asks
    for (a larger budget with the same settings extends it), or it has curves past step 0 but
    no summary and no checkpoint folder (a run cut where its checkpoints were not kept:
    training would start over on them; ``start_from`` gives it another checkpoint)."""
    for config in configs_:
        summary_path, curves_path, ckpt = run_files(config, out)
        if not summary_path.is_file():
            cut = max((r["step"] for r in read_records(curves_path)), default=0)
            group = _group_checkpoints(configs_, out) if len(configs_) > 1 else ckpt
            # A checkpoint folder without a step: killed here before its first save, so
            # training anew recomputes those curves. No folder: trained elsewhere.
            trained_here = ckpt.is_dir() or group.is_dir()
            if cut and not trained_here and start_from is None:
                raise RunExists(
                    f"{curves_path} holds the curves of a run cut at step {cut}, with no "
                    f"summary and no checkpoint under {ckpt.parent} to continue it; this "
                    "command would train it from step 0 and replace them. Nothing was "
                    "written. Choose another --out, give its checkpoint with --start-from, "
                    "or --restart to replace it."
                )
            continue
        summary = read_summary(summary_path)
        if summary is None:
            continue
        changed = _differences(config, summary)
        extends = set(changed) <= set(configs.RESUMABLE) and all(
            asked is not None and (old is None or asked >= old) for old, asked in changed.values()
        )
        if changed and not extends:
            was = ", ".join(f"{k}={old!r}" for k, (old, _) in changed.items())
            now = ", ".join(f"{k}={asked!r}" for k, (_, asked) in changed.items())
            raise RunExists(
                f"{summary_path} holds a {summary.status} run with {was}; "
                f"this command asks for {now} and would replace it. Nothing was written. "
                "Choose another --out, or --restart to replace it."
            )


@contextlib.contextmanager
def _locked(configs_: Sequence[Config], out: Path):
    """Holds an exclusive lock on each run (a ``.lock`` file beside its checkpoints) while
    it trains; a second process training the same run into the same folder is refused with
    :class:`RunLocked`. The operating system releases the lock when the process ends, a
    SIGKILL included."""
    import fcntl

    with contextlib.ExitStack() as stack:
        for config in configs_:
            ckpt = run_files(config, out)[2]
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(open(ckpt.with_name(ckpt.name + ".lock"), "a+"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLocked(
                    f"{_label(config)} is training in another process into {out}; wait for it "
                    "to end, or choose another --out"
                ) from None
        yield


class RunLocked(RuntimeError):
    """Another process is training the same run into the same folder."""


def run_experiment(config: Config, out: Path, **options: Any) -> dict[str, Any]:
    """Trains and evaluates one configuration; writes its curves, summary and checkpoints.

    ``options`` are :func:`run_seeds`'s. Returns the summary.
    """
    (summary,) = run_seeds([config], out, one_program=False, **options)
    return summary


def run_seeds(
    configs_: Sequence[Config],
    out: Path,
    *,
    dataset: Dataset | None = None,
    restart: bool = False,
    progress: bool = True,
    checkpoint_every_s: float = 60.0,
    checkpoint_every_steps: int | None = None,
    steps_per_call: int | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    devices: int | None = 1,
    one_program: bool = True,
    start_from: Path | None = None,
    data_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Trains configurations that differ only in their seed, in one compiled program
    (``benchmarks.training.train.train_seeds``), and writes each seed's files as a separate run
    would. ``one_program=False`` with one configuration is :func:`run_experiment`.

    ``dataset`` replaces the task's loader (toy data in tests); ``steps_per_call`` is
    :func:`benchmarks.training.train.train`'s (outer steps per jitted call; default one evaluation
    interval). ``devices``: how many of the local devices train data-parallel (``None``:
    all of them); truncated BPTT and batches that do not split evenly run on one device.
    A run whose loss stops being finite writes a ``"diverged"`` summary (in one program the
    other seeds train on and finish), then :class:`benchmarks.training.stopping.Diverged` is raised.
    ``data_dir``: a local copy of the task's data (``Task.local_data`` says what it
    holds) instead of its data package. ``start_from``: another results folder; a run with
    no checkpoint under ``out`` yet continues from its checkpoint there
    (:func:`start_from_folder`). ``checkpoint_every_s`` or ``checkpoint_every_steps``: how
    often the state is saved (:class:`benchmarks.training.checkpoints.Checkpoints`). Each run
    is locked while it trains (:class:`RunLocked` if another process holds it), and without
    ``restart`` a summary of other settings or a larger budget is not replaced
    (:class:`RunExists`, raised before anything is written).
    Returns the summaries, in the order of ``configs_``.
    """
    if restart and start_from is not None:
        raise ValueError("restart starts over; it cannot also start from another folder")
    first = configs_[0]
    seeds = [c.seed for c in configs_]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    for config in configs_:
        if dataclasses.replace(config, seed=first.seed) != first:
            raise ValueError(f"seeds in one program need one configuration, got {config}")
    if not one_program and len(configs_) > 1:
        raise ValueError("one_program=False runs one configuration")
    files = [run_files(c, out) for c in configs_]
    with _locked(configs_, out):
        if not restart:
            refuse_replacing(configs_, out, start_from=start_from)
            done = [_finished(c, f[0]) for c, f in zip(configs_, files, strict=True)]
            if all(done):
                for summary in done:
                    print(
                        f"{configs.task_dir(first)} {summary['run']}: finished before "
                        f"({summary['steps']} outer steps); not trained again (--restart "
                        "trains it anew)",
                        flush=True,
                    )
                return done
        options = _Options(
            dataset, restart, progress, checkpoint_every_s, checkpoint_every_steps,
            steps_per_call, on_record, devices, one_program, start_from, data_dir,
        )  # fmt: skip
        return _train_group(configs_, out, files, options)


@dataclasses.dataclass(frozen=True)
class _Options:
    """:func:`run_seeds`'s keyword arguments, passed on as one."""

    dataset: Dataset | None
    restart: bool
    progress: bool
    checkpoint_every_s: float
    checkpoint_every_steps: int | None
    steps_per_call: int | None
    on_record: Callable[[dict[str, Any]], None] | None
    devices: int | None
    one_program: bool
    start_from: Path | None
    data_dir: str | None


Files = list[tuple[Path, Path, Path]]


def _train_group(
    configs_: Sequence[Config], out: Path, files: Files, options: _Options
) -> list[dict[str, Any]]:
    """:func:`run_seeds` once the runs are locked and due to train: the data and the plan,
    the checkpoint folder made ready, the loop, then one summary per seed."""
    first = configs_[0]
    datas = [load_task_data(c, options.dataset, options.data_dir) for c in configs_]
    plan = make_plan(first, datas[0])
    note = epoch_note(first, datas[0], plan)
    if note:
        print(f"{_label(first)}: {note}", flush=True)
    one_program = options.one_program
    ckpt_dir = _group_checkpoints(configs_, out) if one_program else files[0][2]
    origin = _ready_checkpoints(configs_, out, files, ckpt_dir, options)
    mesh = _mesh(first, options.devices)
    t0 = time.perf_counter()
    results, diverged = _fit(configs_, datas, plan, files, ckpt_dir, mesh, options)
    extra = dict(
        process_time_s=time.perf_counter() - t0,
        steps_per_call=options.steps_per_call or plan.eval_every,
        seeds_in_program=[c.seed for c in configs_] if one_program else None,
        started_from=origin,
    )
    summaries, failed = [], None
    for config, data, (summary_path, curves_path, _), result in zip(
        configs_, datas, files, results, strict=True
    ):
        gone = diverged if result is None else result.diverged
        failed = failed or gone
        summary = _summary(config, data, plan, result, curves_path, mesh, gone).replace(**extra)
        write_summary(summary_path, summary)
        summaries.append(summary.to_json())
    if failed is not None:
        raise failed
    return summaries


def _ready_checkpoints(
    configs_: Sequence[Config], out: Path, files: Files, ckpt_dir: Path, options: _Options
) -> dict[str, Any] | None:
    """Clears the runs' checkpoints and curves for ``restart``, or copies another folder's
    checkpoint in for ``start_from``; returns where the checkpoint came from, if copied."""
    if options.restart:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        _origin(ckpt_dir).unlink(missing_ok=True)
        for _, curves, _ in files:
            curves.unlink(missing_ok=True)
    if options.start_from is not None:
        start_from_folder(Path(options.start_from), out, configs_, ckpt_dir)
    origin = _origin(ckpt_dir)
    return json.loads(origin.read_text()) if origin.is_file() else None


def _fit(
    configs_: Sequence[Config],
    datas: Sequence[TaskData],
    plan: Plan,
    files: Files,
    ckpt_dir: Path,
    mesh: jax.sharding.Mesh | None,
    options: _Options,
) -> tuple[list[TrainResult | None], Diverged | None]:
    """Builds the model, objective and optimizer and trains the seeds, in one program or as
    one run; returns each seed's ``TrainResult`` (``None`` for all when the run diverged)
    and the divergence."""
    import jax
    import jax.numpy as jnp

    from benchmarks.training import train as training
    from benchmarks.training.stopping import Diverged

    first = configs_[0]
    model = build_model(first, datas[0])
    variables = [init_variables(c, model, d) for c, d in zip(configs_, datas, strict=True)]
    objective = make_objective(first, model, datas[0])
    loop = _loop_options(configs_, plan, ckpt_dir, mesh, options)
    try:
        if options.one_program:
            tests = [make_objective(c, model, d).test for c, d in zip(configs_, datas, strict=True)]
            objective = dataclasses.replace(
                objective, test=jax.tree.map(lambda *xs: np.stack(xs), *tests)
            )
            stack = lambda *xs: jnp.stack(xs)  # noqa: E731
            _, results = training.train_seeds(
                objective=objective,
                stream=datas[0].stream,
                params=jax.tree.map(stack, *[v[0] for v in variables]),
                model_state=jax.tree.map(stack, *[v[1] for v in variables]),
                seeds=[c.seed for c in configs_],
                curves=[curves for _, curves, _ in files],
                **loop,
            )
            return list(results), None
        (params, model_state), (_, curves, _) = variables[0], files[0]
        _, _, result = training.train(
            objective=objective,
            stream=datas[0].stream,
            params=params,
            model_state=model_state,
            seed=first.seed,
            curves=curves,
            **loop,
        )
        return [result], None
    except Diverged as error:
        return [None] * len(configs_), error


def _loop_options(
    configs_: Sequence[Config],
    plan: Plan,
    ckpt_dir: Path,
    mesh: jax.sharding.Mesh | None,
    options: _Options,
) -> dict[str, Any]:
    """The keyword arguments of ``benchmarks.training.train.train`` that the configuration
    and plan set: the optimizer (and the K = 1 phase of ``k1_steps``), budget, checkpoints."""
    from benchmarks.machine import machine
    from benchmarks.training.checkpoints import Checkpoints

    first, seeds = configs_[0], [c.seed for c in configs_]
    local = first.fw_mode == "local" and mesh is not None
    axis = mesh.axis_names[0] if local else None
    tx = build_optimizer(first, plan.updates_per_epoch, batch_axis_name=axis)
    then = []
    if first.k1_steps is not None:  # K = 1 first, then the config's K, state carried over
        warmup = dataclasses.replace(first, K=1, k1_steps=None)
        then = [(first.k1_steps, tx, plan.batches_per_step)]
        tx = build_optimizer(warmup, plan.updates_per_epoch, batch_axis_name=axis)
    checkpoints = Checkpoints(
        ckpt_dir,
        every_s=options.checkpoint_every_s,
        every_steps=options.checkpoint_every_steps,
        meta=_checkpoint_meta(first, plan, seeds),
        machine=machine(),
    )
    return dict(
        tx=tx,
        then=then,
        local_gradients=local,
        steps=plan.steps,
        eval_every=plan.eval_every,
        batches_per_step=plan.batches_per_step if not then else 1,
        updates_per_step=plan.updates_per_step,
        grad_evals_per_step=plan.grad_evals_per_step,
        steps_per_call=options.steps_per_call,
        checkpoints=checkpoints,
        desc=_label(first) + (f" seeds {seeds}" if options.one_program else ""),
        progress=options.progress,
        on_record=options.on_record,
        mesh=mesh,
        skip_nonfinite=first.on_nonfinite == "skip",
    )


def _origin(ckpt_dir: Path) -> Path:
    """Where :func:`start_from_folder` notes what a checkpoint folder was copied from (beside
    it: orbax owns the folder itself)."""
    return ckpt_dir.with_name(ckpt_dir.name + ".started_from.json")


def _checkpoint_steps(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def start_from_folder(source: Path, out: Path, configs_: Sequence[Config], ckpt_dir: Path) -> None:
    """Gives runs with no checkpoint under ``out`` the checkpoints and curves of the same runs
    under ``source``, so they continue from there: e.g. baselines at a larger budget (equal
    gradient evaluations) in their own folder, from the runs of the smaller one. A longer
    run continues the same schedule, so this equals training it from the start. The source
    is noted beside the checkpoint folder and in the summaries (``started_from``). Where the
    source holds no checkpoint of the runs (a fresh clone: checkpoints are not committed),
    they train from the start, and say so.
    """
    if _checkpoint_steps(ckpt_dir):
        return  # trained here before: its own checkpoint goes on
    source_ckpt = source / ckpt_dir.relative_to(out)
    steps = _checkpoint_steps(source_ckpt)
    label = f"{configs.task_dir(configs_[0])} {ckpt_dir.name}"
    if not steps:
        print(
            f"{label}: no checkpoint at {source_ckpt} to start from; trains from step 0", flush=True
        )
        return
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    shutil.copytree(source_ckpt, ckpt_dir)
    for config in configs_:
        curves, source_curves = run_files(config, out)[1], run_files(config, source)[1]
        curves.unlink(missing_ok=True)
        if source_curves.is_file():
            shutil.copyfile(source_curves, curves)
    origin = {"folder": str(source), "checkpoint_steps": steps}
    _write_atomic(_origin(ckpt_dir), json.dumps(origin))
    print(f"{label}: starts from {source_ckpt} (steps {steps})", flush=True)


def _summary(
    config, data, plan, result: TrainResult | None, curves_path, mesh, diverged
) -> RunSummary:
    from benchmarks.machine import machine

    spec = get_task(config.task)
    devices = mesh.size if mesh is not None else 1
    summary = RunSummary(
        task=config.task,
        title=spec.title,
        method=config.method,
        run=configs.run_name(config),
        config=dataclasses.asdict(config),
        overrides=configs.overrides(config),
        plan=dataclasses.asdict(plan),
        machine=machine(),
        data=dict(data.card),
        metric=spec.metric,
        devices=devices,
        per_device_batch=config.batch_size // devices,
        curves=curves_path.name,
        final=None,
    )
    if diverged is not None:
        records = read_records(curves_path)
        return summary.replace(
            status="diverged",
            diverged=diverged.as_dict(),
            final=records[-1] if records else None,
            steps=records[-1]["step"] if records else 0,
        )
    metric = f"test_{spec.metric}"
    final = result.records[-1]
    epochs = final.get("epoch")
    resumed_elsewhere = [s["machine"] for s in result.trained_on] != [summary.machine]
    return summary.replace(
        final=dict(final),
        best_test=(min if spec.metric == "loss" else max)(r[metric] for r in result.records),
        steps=result.steps,
        updates=result.updates,
        batches=result.batches,
        epochs=epochs,
        grad_evals=result.grad_evals,
        wall_time_s=result.wall_time_s,
        time_per_epoch_s=result.wall_time_s / epochs if epochs else None,
        compile_time_s=result.compile_time_s,
        skipped_updates=result.skipped_updates,
        trained_on=result.trained_on if resumed_elsewhere else None,
    )


def _mesh(config: Config, devices: int | None) -> jax.sharding.Mesh | None:
    """The data mesh a run trains on, or ``None`` for one device.

    Truncated BPTT stays on one device: its chunk gradients are taken inside
    ``benchmarks.training.tbptt``, outside the loss that ``benchmarks.training.parallel`` averages.
    """
    from benchmarks.training import parallel

    mesh = parallel.training_mesh(devices, config.batch_size)
    return None if configs.is_tbptt(config) else mesh


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


_SHORTCUTS = (
    "length",
    "steps",
    "epochs",
    "train_size",
    "test_size",
    "eval_every",
    "gap_tol",
    "step_rule",
    "on_nonfinite",
    "fw_mode",
)
"""Flags that are shorthands for ``--set field=value``."""


def configs_from_args(args: argparse.Namespace) -> list[list[Config]]:
    """The runs a command line names, grouped by configuration (one group per configuration,
    one entry per seed); raises ValueError on any bad combination."""
    overrides = configs.parse_settings(args.set or [])
    for name in _SHORTCUTS:
        value = getattr(args, name)
        if value is not None:
            if name in overrides:
                raise ValueError(f"{name} is given twice: by --{name.replace('_', '-')} and --set")
            overrides[name] = value
    seeds = args.seeds if args.seeds is not None else [args.seed]
    methods = list(args.method)
    if "all" in methods:
        if methods != ["all"]:
            raise ValueError("--method all names every method of the task; name no other")
        if args.K is not None or args.flavour is not None:
            raise ValueError("--K and --flavour name one run; drop them with --method all")
        per_seed = [configs.table_for(args.task, args.preset, seed=s, **overrides) for s in seeds]
        return [list(group) for group in zip(*per_seed, strict=True)]
    fw = [m for m in methods if m in METHODS and METHODS[m].frank_wolfe]
    if (args.K is not None or args.flavour is not None) and not fw:
        raise ValueError(f"--K and --flavour apply to Frank-Wolfe methods only, not {methods}")
    groups = []
    for method in methods:
        Ks = (args.K or [None]) if method in fw else [None]
        flavour = args.flavour if method in fw else None
        for K in Ks:
            groups.append(
                [
                    get_config(
                        args.task, method, args.preset, seed=s, K=K, flavour=flavour, **overrides
                    )
                    for s in seeds
                ]
            )
    return groups


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description and epilog as written; an option's default where it has one and its
    help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = action.default is None or action.default is False
        if unset or action.default == argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[list[Config]]]:
    """The command line: its arguments, checked, and the run groups they ask for."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    try:
        groups = configs_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.data_dir is not None:
        if not get_task(args.task).local_data:
            parser.error(f"--data-dir: the {args.task} task generates its data")
        if not Path(args.data_dir).is_dir():
            parser.error(f"--data-dir {args.data_dir} is not a folder")
    if args.devices is not None and args.devices < 1:
        parser.error(f"--devices must be >= 1, got {args.devices}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    if args.start_from is not None:
        if args.restart:
            parser.error("--restart starts over; drop --start-from or --restart")
        if not args.start_from.is_dir():
            parser.error(f"--start-from {args.start_from} is not a folder")
        if args.start_from.resolve() == args.out.resolve():
            parser.error(f"--start-from {args.start_from} is --out itself")
    return args, groups


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n")[0],
        formatter_class=_HelpFormatter,
        epilog="methods:\n"
        + "\n".join(f"  {k:10s} {m.description}" for k, m in METHODS.items())
        + "\n\n--set fields (field=value; the preset and method give the defaults):\n"
        + "\n".join(f"  {name:18s} {kind}" for name, kind in configs.settable_fields()),
    )
    _run_arguments(parser.add_argument_group("what to run"))
    _fw_arguments(parser.add_argument_group("Frank-Wolfe"))
    _budget_arguments(parser.add_argument_group("data and budget"))
    _output_arguments(parser.add_argument_group("results, checkpoints and progress"))
    return parser


def _run_arguments(group: argparse._ArgumentGroup) -> None:
    """The task, methods, preset, K, flavour, seeds and --set overrides."""
    group.add_argument("--task", required=True, choices=tuple(TASKS))
    group.add_argument(
        "--method",
        required=True,
        nargs="+",
        choices=(*METHODS, "all"),
        help="one or more rows of the paper's tables; 'all': every method that fits the task",
    )
    group.add_argument(
        "--preset",
        default="cpu",
        choices=configs.PRESETS,
        help="the budget and settings: paper (the authors') or cpu (a reduced budget)",
    )
    group.add_argument(
        "--K",
        type=int,
        nargs="+",
        help="Frank-Wolfe inner steps (FW methods; several: one run each)",
    )
    group.add_argument("--flavour", choices=configs.FLAVOURS, help="FW flavour (default authors)")
    group.add_argument("--seed", type=int, default=0, help="the seed of one run")
    group.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="several seeds of each configuration, trained in one compiled program",
    )
    group.add_argument(
        "--set",
        nargs="+",
        metavar="FIELD=VALUE",
        help="any other setting of benchmarks.registry.config.Config, e.g. --set lr=3e-4 hidden=64",
    )


def _fw_arguments(group: argparse._ArgumentGroup) -> None:
    """Frank-Wolfe settings with their own flags."""
    group.add_argument(
        "--gap-tol",
        dest="gap_tol",
        type=float,
        help="FW adaptive K: stop the inner loop once the FW gap is <= gap_tol x the first one",
    )
    group.add_argument(
        "--step-rule",
        dest="step_rule",
        help="FW step size γ_k, frank_wolfe's step_rule: average (1/k, the paper; default) "
        "or open_loop (2/(k+1))",
    )
    group.add_argument(
        "--on-nonfinite",
        dest="on_nonfinite",
        choices=configs.ON_NONFINITE,
        help="stop (default) at the first non-finite loss, or skip non-finite updates",
    )
    group.add_argument(
        "--fw-mode",
        dest="fw_mode",
        choices=configs.FW_MODES,
        help="Frank-Wolfe on several devices: sync (default: every gradient averaged, equal to "
        "one device on the whole batch) or local (inner steps on each device's shard, Δ_K "
        "averaged once per outer step)",
    )


def _budget_arguments(group: argparse._ArgumentGroup) -> None:
    """The budget, the data subsets, and how the steps are placed."""
    group.add_argument("--length", type=int, help="adding task: sequence length T")
    group.add_argument("--steps", type=int, help="adding task: outer steps (may grow on resume)")
    group.add_argument("--eval-every", dest="eval_every", type=int, help="adding task")
    group.add_argument("--epochs", type=int, help="datasets: epochs (may grow on resume)")
    group.add_argument("--train-size", dest="train_size", type=int, help="first N train examples")
    group.add_argument("--test-size", dest="test_size", type=int, help="first N test examples")
    group.add_argument(
        "--steps-per-call",
        dest="steps_per_call",
        type=int,
        help="outer steps per jitted call, a divisor of the evaluation interval (default: all)",
    )
    group.add_argument(
        "--devices",
        type=int,
        help="train data-parallel over this many devices (default: all; on CPU one device "
        "per core, see benchmarks.training.parallel)",
    )


def _output_arguments(group: argparse._ArgumentGroup) -> None:
    """Where the runs go, restarting, checkpoints, data, progress."""
    group.add_argument(
        "--out",
        type=Path,
        default=Path("runs"),
        help="the folder the runs go to (default runs/, which git ignores); the "
        "reproduction's evidence is written only when named: --out results",
    )
    group.add_argument(
        "--restart",
        action="store_true",
        help="start over: drop the runs' checkpoints and replace their files",
    )
    group.add_argument(
        "--checkpoint-every",
        dest="checkpoint_every",
        type=parse_interval,
        default=(60.0, None),
        metavar="INTERVAL",
        help="save the training state this often: seconds ('90s', '10m', '1h') or outer "
        "steps ('500steps'), at the next evaluation point (default 60s); a SIGKILL loses "
        "at most that much work, while SIGTERM and Ctrl-C save before stopping",
    )
    group.add_argument(
        "--start-from",
        dest="start_from",
        type=Path,
        metavar="FOLDER",
        help="a run with no checkpoint under --out continues from its checkpoint and curves "
        "in this results folder (e.g. a larger --steps in another folder)",
    )
    group.add_argument(
        "--data-dir",
        dest="data_dir",
        metavar="FOLDER",
        help='a local copy of the data instead of its package: the official "UCI HAR '
        'Dataset" folder (HAR-2, Noisy-HAR-2) or the four MNIST IDX files',
    )
    group.add_argument("--no-progress", action="store_true")


_INTERVAL = re.compile(r"(?P<steps>\d+)steps?|(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<unit>[smh])")
_SECONDS_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_interval(text: str) -> tuple[float, int | None]:
    """``--checkpoint-every``: ``'90s'``, ``'10m'``, ``'1h'`` -> ``(seconds, None)``;
    ``'500steps'`` -> ``(0.0, 500)``."""
    match = _INTERVAL.fullmatch(text.strip().lower().replace(" ", ""))
    if match and match["steps"] is not None and int(match["steps"]) >= 1:
        return 0.0, int(match["steps"])
    if match and match["number"] is not None:
        return float(match["number"]) * _SECONDS_PER[match["unit"]], None
    raise argparse.ArgumentTypeError(
        f"{text!r} is not an interval: give seconds ('90s', '10m', '1h', >= 0) or outer "
        "steps ('500steps', >= 1)"
    )


def continue_command(argv: Sequence[str]) -> str:
    """The command that continues a stopped run: the same one, less ``--restart`` (which
    would start over) and ``--start-from`` (the run has its own checkpoint now)."""
    kept, args = [], iter(argv)
    for arg in args:
        if arg == "--start-from":
            next(args, None)  # its folder
        elif arg != "--restart" and not arg.startswith("--start-from="):
            kept.append(arg)
    return shlex.join(["python", "-m", "benchmarks.run", *kept])


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs every configuration the command line names; exits with status 1 (after the
    others ran) if any diverged, with 2 before training anything if a run would replace a
    different one or another process is training it, and with 128 + the signal (143 for
    SIGTERM, 130 for Ctrl-C) at once when a signal stopped one (its state saved)."""
    args, groups = parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    missing = missing_packages([group[0].task for group in groups], args.data_dir)
    if missing:
        sys.exit(f"python -m benchmarks.run: {missing}")
    if not args.restart:
        try:
            for group in groups:
                refuse_replacing(group, args.out, start_from=args.start_from)
        except RunExists as error:
            sys.exit(f"REFUSED {error}")
    from benchmarks.training import parallel
    from benchmarks.training.stopping import Diverged, Stopped

    parallel.start_cpu_devices(args.devices)
    every_s, every_steps = args.checkpoint_every
    summaries, diverged = [], []
    for group in groups:
        try:
            done = run_seeds(
                group,
                args.out,
                restart=args.restart,
                progress=not args.no_progress,
                checkpoint_every_s=every_s,
                checkpoint_every_steps=every_steps,
                steps_per_call=args.steps_per_call,
                devices=args.devices,
                one_program=args.seeds is not None,
                start_from=args.start_from,
                data_dir=args.data_dir,
            )
        except Diverged as error:
            print(f"DIVERGED {error}", file=sys.stderr, flush=True)
            diverged.append(str(error))
            continue
        except (RunExists, RunLocked) as error:
            print(f"REFUSED {error}", file=sys.stderr, flush=True)
            sys.exit(2)
        except Stopped as error:
            print(
                f"STOPPED {_label(group[0])}: {error}\ncontinue with: {continue_command(argv)}",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(128 + error.signum)
        for config, summary in zip(group, done, strict=True):
            final = summary["final"]
            metric = f"test_{summary['metric']}"
            print(
                f"{_label(config)}: {metric} {final[metric]:.4f} "
                f"(best {summary['best_test']:.4f}), train loss {final['train_loss']:.4f}, "
                f"{summary['steps']} steps, {summary['grad_evals']:.0f} grad evals, "
                f"{summary['wall_time_s']:.1f} s",
                flush=True,
            )
        summaries += done
    if diverged:
        sys.exit(f"{len(diverged)} run(s) diverged; their summaries say where")
    return summaries


if __name__ == "__main__":
    sys.exit(main() and 0)
