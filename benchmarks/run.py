"""Run one experiment of the reproduction (or every row of a task): one command per claim.

    python -m benchmarks.run --task har2 --method fw --K 5 --flavour authors --preset cpu
    python -m benchmarks.run --task adding --method sgd --preset cpu --length 200 --seed 1
    python -m benchmarks.run --task noisy_har2 --method all --preset cpu

Settings come from ``benchmarks/configs.py`` (``--preset paper``: the authors'; ``cpu``: a
reduced budget). Each run writes, under ``--out`` (default ``results``):

* ``<task>/<run>.jsonl``: the curves, one record per evaluation, written as measured;
* ``<task>/<run>.json``: the configuration, the machine, the final numbers and their cost;
* ``<task>/ckpt/<run>/``: orbax checkpoints; rerunning the same command resumes from the
  last one (``--restart`` starts over).

``<task>`` is ``adding_T<length>`` for the adding task, and ``<run>`` is
``<method>[_K<K>_<flavour>]_<preset>_seed<seed>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import optax

import fw_optax
from benchmarks import configs, parallel
from benchmarks.configs import Config, get_config
from benchmarks.data import Dataset
from benchmarks.machine import machine
from benchmarks.tasks import (
    TASK_SPECS,
    TaskData,
    build_model,
    init_variables,
    load_task_data,
    make_objective,
)
from benchmarks.train import Checkpoints, train

INDRNN_RECURRENT = "recurrent_kernel"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a configuration maps onto the loop: steps, evaluation interval and costs."""

    steps: int
    eval_every: int
    batches_per_step: int
    updates_per_step: int
    grad_evals_per_step: float
    updates_per_epoch: int | None


def plan(config: Config, data: TaskData) -> Plan:
    """Outer steps, evaluation interval and per-step costs of ``config`` on ``data``.

    Datasets: an epoch is a pass of ``batches_per_epoch`` mini-batches; the authors' FW
    flavour eats K of them per outer step. TBPTT makes ``ceil(n / K)`` updates per batch
    (n chunks), each K chunk gradients of ``L / T`` of a sequence.
    """
    bps = config.batches_per_step
    updates, grads = 1, float(config.K if config.is_fw else 1)
    if config.method in configs.TBPTT_METHODS:
        n = data.sequence_length // config.chunk_length
        K = config.K if config.method == "tbptt_fw" else 1
        updates = -(-n // K)
        grads = updates * K / n
    if config.task == "adding":
        return Plan(config.steps, config.eval_every, bps, updates, grads, None)
    steps_per_epoch = data.stream.batches_per_epoch // bps
    if steps_per_epoch < 1:
        raise ValueError(
            f"an epoch of {data.stream.batches_per_epoch} batches is shorter than one outer "
            f"step of {bps} batches; lower K or the batch size"
        )
    eval_every = max(1, steps_per_epoch // config.evals_per_epoch)
    steps = eval_every * config.evals_per_epoch * config.epochs
    return Plan(steps, eval_every, bps, updates, grads, steps_per_epoch * updates)


def _schedule(config: Config, value: float, updates_per_epoch: int | None):
    if not config.lr_decay_epochs or updates_per_epoch is None:
        return value
    boundaries = {e * updates_per_epoch: config.lr_decay_factor for e in config.lr_decay_epochs}
    return optax.piecewise_constant_schedule(value, boundaries)


def _not_recurrent(params: Any) -> Any:
    def keep(path, _):
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) != INDRNN_RECURRENT

    return jax.tree_util.tree_map_with_path(keep, params)


def build_optimizer(config: Config, updates_per_epoch: int | None) -> optax.GradientTransformation:
    """The method's optimizer: SGD/Adam (+ clipping, weight decay) or a Frank-Wolfe chain.

    FW ``alg1``: ``chain(frank_wolfe(K, δ, p), sgd(η))``. FW ``authors``:
    ``chain(frank_wolfe(K, lr, 2, scope="leaf", cumulative=True), adam(lr))`` with one
    schedule for δ and lr. IndRNN+FW clamps gradients to ``±grad_clamp`` first.
    """
    lr = _schedule(config, config.lr, updates_per_epoch)
    outer = optax.sgd(lr) if config.optimizer == "sgd" else optax.adam(lr)
    parts: list[optax.GradientTransformation] = []
    if config.grad_clamp is not None:
        parts.append(optax.clip(config.grad_clamp))
    if config.clip is not None:
        parts.append(optax.clip_by_global_norm(config.clip))
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay, mask=_not_recurrent))
    if config.is_fw:
        authors = config.flavour == "authors"
        delta = _schedule(config, config.delta, updates_per_epoch) if authors else config.delta
        parts.append(
            fw_optax.frank_wolfe(
                config.K,
                delta,
                config.p,
                scope="leaf" if authors else "global",
                cumulative=authors,
                gap_tol=config.gap_tol,
                step_rule=config.step_rule,
            )
        )
    return optax.chain(*parts, outer)


def run_files(config: Config, out: Path) -> tuple[Path, Path, Path]:
    """``(summary .json, curves .jsonl, checkpoint folder)`` of a run under ``out``."""
    folder = out / config.task_dir
    return (
        folder / f"{config.run_name}.json",
        folder / f"{config.run_name}.jsonl",
        folder / "ckpt" / config.run_name,
    )


def run_experiment(
    config: Config,
    out: Path,
    *,
    dataset: Dataset | None = None,
    restart: bool = False,
    progress: bool = True,
    checkpoint_every_s: float = 60.0,
    steps_per_call: int | None = None,
    on_record=None,
    devices: int | None = 1,
) -> dict[str, Any]:
    """Trains and evaluates one configuration; writes its curves, summary and checkpoints.

    ``dataset`` replaces the task's loader (toy data in tests); ``steps_per_call`` is
    :func:`benchmarks.train.train`'s (outer steps per jitted call; default one evaluation
    interval). ``devices``: how many of the local devices train data-parallel (``None``:
    all of them); truncated BPTT and batches that do not split evenly run on one device.
    Returns the summary.
    """
    data = load_task_data(config, dataset)
    schedule = plan(config, data)
    model = build_model(config, data)
    params, model_state = init_variables(config, model, data)
    objective = make_objective(config, model, data)
    tx = build_optimizer(config, schedule.updates_per_epoch)
    summary_path, curves_path, ckpt_dir = run_files(config, out)
    if restart:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        curves_path.unlink(missing_ok=True)
    meta = {"config": dataclasses.asdict(config), "plan": dataclasses.asdict(schedule)}
    mesh = _mesh(config, devices)
    t0 = time.perf_counter()
    _, _, result = train(
        objective=objective,
        tx=tx,
        params=params,
        model_state=model_state,
        stream=data.stream,
        steps=schedule.steps,
        eval_every=schedule.eval_every,
        seed=config.seed,
        batches_per_step=schedule.batches_per_step,
        updates_per_step=schedule.updates_per_step,
        grad_evals_per_step=schedule.grad_evals_per_step,
        steps_per_call=steps_per_call,
        curves=curves_path,
        checkpoints=Checkpoints(ckpt_dir, checkpoint_every_s, meta),
        desc=f"{config.task_dir} {config.run_name}",
        progress=progress,
        on_record=on_record,
        mesh=mesh,
    )
    spec = TASK_SPECS[config.task]
    final = result.records[-1]
    metric = f"test_{spec.metric}"
    best = (min if spec.metric == "loss" else max)(r[metric] for r in result.records)
    epochs = final.get("epoch")
    summary = {
        "task": config.task,
        "title": spec.title,
        "method": config.method,
        "run": config.run_name,
        "config": dataclasses.asdict(config),
        "plan": dataclasses.asdict(schedule),
        "machine": machine(),
        "data": dict(data.card),
        "metric": spec.metric,
        "final": {k: v for k, v in final.items()},
        "best_test": best,
        "steps": result.steps,
        "updates": result.updates,
        "batches": result.batches,
        "epochs": epochs,
        "grad_evals": result.grad_evals,
        "wall_time_s": result.wall_time_s,
        "time_per_epoch_s": result.wall_time_s / epochs if epochs else None,
        "compile_time_s": result.compile_time_s,
        "process_time_s": time.perf_counter() - t0,
        "steps_per_call": steps_per_call or schedule.eval_every,
        "devices": mesh.size if mesh is not None else 1,
        "per_device_batch": config.batch_size // (mesh.size if mesh is not None else 1),
        "curves": curves_path.name,
    }
    _write_atomic(summary_path, json.dumps(summary, indent=1))
    return summary


def _mesh(config: Config, devices: int | None) -> jax.sharding.Mesh | None:
    """The data mesh a run trains on, or ``None`` for one device.

    Truncated BPTT stays on one device: its chunk gradients are taken inside
    ``models.tbptt``, outside the loss that ``benchmarks.parallel`` averages.
    """
    mesh = parallel.training_mesh(devices, config.batch_size)
    return None if config.method in configs.TBPTT_METHODS else mesh


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def configs_from_args(args: argparse.Namespace) -> list[Config]:
    """The configurations a command line names; raises ValueError on any bad combination."""
    overrides = {
        name: getattr(args, name)
        for name in (
            "length",
            "steps",
            "epochs",
            "train_size",
            "test_size",
            "eval_every",
            "gap_tol",
            "step_rule",
        )
        if getattr(args, name) is not None
    }
    if args.method == "all":
        if args.K is not None or args.flavour is not None:
            raise ValueError("--K and --flavour name one run; drop them with --method all")
        return configs.table_for(args.task, args.preset, seed=args.seed, **overrides)
    return [
        get_config(
            args.task,
            args.method,
            args.preset,
            seed=args.seed,
            K=args.K,
            flavour=args.flavour,
            **overrides,
        )
    ]


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[Config]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--task", required=True, choices=configs.TASKS)
    parser.add_argument(
        "--method",
        required=True,
        choices=(*configs.METHODS, "all"),
        help="a row of the paper's tables; 'all': every method that fits the task",
    )
    parser.add_argument("--preset", default="cpu", choices=configs.PRESETS)
    parser.add_argument("--K", type=int, help="Frank-Wolfe inner steps (FW methods)")
    parser.add_argument("--flavour", choices=configs.FLAVOURS, help="FW flavour (default authors)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gap-tol",
        dest="gap_tol",
        type=float,
        help="FW adaptive K: stop the inner loop once the FW gap is <= gap_tol x the first one",
    )
    parser.add_argument("--step-rule", dest="step_rule", choices=configs.STEP_RULES)
    parser.add_argument("--length", type=int, help="adding task: sequence length T")
    parser.add_argument("--steps", type=int, help="adding task: outer steps")
    parser.add_argument("--eval-every", dest="eval_every", type=int, help="adding task")
    parser.add_argument("--epochs", type=int, help="datasets: epochs")
    parser.add_argument("--train-size", dest="train_size", type=int, help="first N train examples")
    parser.add_argument("--test-size", dest="test_size", type=int, help="first N test examples")
    parser.add_argument(
        "--steps-per-call",
        dest="steps_per_call",
        type=int,
        help="outer steps per jitted call, a divisor of the evaluation interval (default: all)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        help="train data-parallel over this many devices (default: all; on CPU one device "
        "per core, see benchmarks.parallel)",
    )
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--restart", action="store_true", help="ignore existing checkpoints")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        runs = configs_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.devices is not None and args.devices < 1:
        parser.error(f"--devices must be >= 1, got {args.devices}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    return args, runs


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args, runs = parse_args(argv)
    parallel.start_cpu_devices(args.devices)
    summaries = []
    for config in runs:
        summary = run_experiment(
            config,
            args.out,
            restart=args.restart,
            progress=not args.no_progress,
            steps_per_call=args.steps_per_call,
            devices=args.devices,
        )
        final = summary["final"]
        metric = f"test_{summary['metric']}"
        print(
            f"{config.task_dir} {config.run_name}: {metric} {final[metric]:.4f} "
            f"(best {summary['best_test']:.4f}), train loss {final['train_loss']:.4f}, "
            f"{summary['steps']} steps, {summary['grad_evals']:.0f} grad evals, "
            f"{summary['wall_time_s']:.1f} s",
            flush=True,
        )
        summaries.append(summary)
    return summaries


if __name__ == "__main__":
    sys.exit(main() and 0)
