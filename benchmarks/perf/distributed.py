"""Frank-Wolfe on several devices: what one outer step communicates, and how synchronous and
local Frank-Wolfe train at the same number of gradient evaluations.

    python -m benchmarks.perf.distributed                     # 4 fake CPU devices, 3 seeds
    python -m benchmarks.perf.distributed --quick --out /tmp/d    # a smoke test at toy size
    python -m benchmarks.perf.distributed --devices 8         # 8 GPUs of one machine
    python -m benchmarks.perf.distributed --devices 16 --coordinator host0:1234 \\
        --num-processes 2 --process-id 0                 # and --process-id 1 on the other host

The batch of ``chain(frank_wolfe(K, δ), sgd(η))`` is split over a 1-D mesh (axis
``"data"``); parameters and optimizer state are replicated. One outer step runs three ways:

- ``jit``: ``jax.jit`` with the batch sharded by a ``NamedSharding`` and
  ``batch_axis_name=None``: the compiler places the collectives;
- ``sync``: ``jax.shard_map`` with ``frank_wolfe(..., batch_axis_name="data")``: every
  gradient is averaged over the devices (K all-reduces), the step of one device on the
  global batch;
- ``local``: ``frank_wolfe(..., batch_axis_name="data", local=True)``: each device runs the K
  inner steps on its own shard and Δ_K is averaged once (one all-reduce).

(a) The all-reduces (and all collectives) one outer step executes and the megabytes they
return per device, read from the compiled program (``benchmarks.training.parallel.collectives``,
loop trips counted), on the adding task's RNN (``benchmarks.registry.tasks.adding_problem``).

(b) ``sync`` against ``local`` from the same initial weights on the same batches, K=5
gradient evaluations per outer step on every device in both. Each run is built from the
registry as the runner builds it (the ``cpu`` preset, Algorithm 1's flavour, ``fw_mode``
``sync`` or ``local``) and trained by the one loop (``benchmarks.training.train``) on the
mesh: the adding task (T=100, vanilla RNN of 128 units, δ=0.1, η=1, 2000 outer steps, test
MSE on 1000 samples) and HAR-2 (vanilla RNN of 80 units, binary head, δ=1, η=0.05, batch
128, 5 epochs of whole passes, test accuracy). The adding batch is 52: the paper's 50
rounded up to a multiple of 4 devices.

On CPU the devices are ``--devices`` fake ones (``jax_num_cpu_devices``, set before JAX
starts; with several processes each makes its share). Elsewhere the mesh takes the first
``--devices`` of ``jax.devices()``, every process's devices after
``jax.distributed.initialize`` (``--coordinator``). Process 0 prints and writes
``summary.json`` and ``summary.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import fw_optax
from benchmarks.machine import describe, machine
from benchmarks.registry.configs import Config, get_config
from benchmarks.registry.methods import build_optimizer
from benchmarks.registry.tasks import (
    adding_problem,
    build_model,
    get_task,
    init_variables,
    load_task_data,
    make_objective,
)
from benchmarks.run import make_plan
from benchmarks.training import parallel
from benchmarks.training import train as training

AXIS = parallel.DATA_AXIS
MODES: tuple[str, ...] = ("jit", "sync", "local")
TASKS: tuple[str, ...] = ("adding", "har2")
ROOT = Path(__file__).resolve().parents[2]
SETTINGS: dict[str, dict[str, Any]] = {
    "adding": {"batch_size": 52},  # a multiple of 4 devices
    "har2": {"evals_per_epoch": 1},  # whole passes: 5 x 57 outer steps
}
"""What the runs change in the registry's ``cpu`` preset (Algorithm 1's flavour, K=5)."""
QUICK: dict[str, dict[str, Any]] = {
    "adding": {"length": 8, "hidden": 8, "steps": 4, "eval_every": 4, "test_size": 16},
    "har2": {"hidden": 8, "epochs": 1, "evals_per_epoch": 1, "train_size": 64, "test_size": 64},
}
"""``--quick``'s toy sizes (with a batch of 2 per device)."""
METRICS = {"adding": "test MSE", "har2": "test accuracy"}


def task_config(
    name: str, *, quick: bool, devices: int, seed: int = 0, mode: str = "sync"
) -> Config:
    """The run of task ``name`` from ``seed`` in ``mode`` (``"sync"`` or ``"local"``): the
    settings of the module docstring, or toy ones."""
    settings = {**QUICK[name], "batch_size": 2 * devices} if quick else SETTINGS[name]
    return get_config(name, "fw", "cpu", seed=seed, K=5, flavour="alg1", fw_mode=mode, **settings)


def title(config: Config) -> str:
    """What the tables call the task of ``config``."""
    return f"adding T={config.length}" if config.task == "adding" else get_task(config.task).title


def optimizer(K: int, delta: float, lr: float, mode: str) -> optax.GradientTransformation:
    """``chain(frank_wolfe(K, delta), sgd(lr))`` as ``mode`` runs it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got mode={mode!r}.")
    axis = None if mode == "jit" else AXIS
    fw = fw_optax.frank_wolfe(K, delta, batch_axis_name=axis, local=mode == "local")
    return optax.chain(fw, optax.sgd(lr))


def train_chunk(
    loss: Callable[[Any, Any], jax.Array],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    mode: str,
    *,
    check_vma: bool = False,
) -> Callable[..., Any]:
    """``(params, opt_state, batches) -> (params, opt_state)``, jitted: one outer step per
    batch (the batches' leading axis), the batch (axis 1) split over ``mesh``.

    ``loss(params, batch)`` is written for one device: in ``sync`` and ``local`` it is each
    device's loss on its shard, and the gradient it gives ``tx`` the device's own
    (:func:`fw_optax.per_device`). ``check_vma`` is ``jax.shard_map``'s (Flax's RNNs trace
    only with ``False``).
    """

    def step(carry: tuple[Any, Any], batch: Any) -> tuple[tuple[Any, Any], None]:
        params, opt_state = carry

        def batch_loss(w: Any) -> jax.Array:
            return loss(w, batch)

        at = params if mode == "jit" else fw_optax.per_device(params, AXIS)
        grads = jax.grad(batch_loss)(at)
        updates, opt_state = tx.update(grads, opt_state, params, value_fn=batch_loss)
        return (optax.apply_updates(params, updates), opt_state), None

    def chunk(params: Any, opt_state: Any, batches: Any) -> tuple[Any, Any]:
        return jax.lax.scan(step, (params, opt_state), batches)[0]

    if mode == "jit":
        replicated = NamedSharding(mesh, P())
        split = NamedSharding(mesh, parallel.batch_spec(batch_axis=1))
        return jax.jit(
            chunk, in_shardings=(replicated, replicated, split), out_shardings=replicated
        )
    specs = (P(), P(), parallel.batch_spec(batch_axis=1))
    mapped = jax.shard_map(chunk, mesh=mesh, in_specs=specs, out_specs=P(), check_vma=check_vma)
    return jax.jit(mapped)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` on every device of ``mesh`` (also across processes: every process holds it)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def to_host(tree: Any) -> Any:
    """A replicated ``tree`` as NumPy arrays, from this process's first copy."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)


def shard_steps(batches: Any, mesh: Mesh) -> Any:
    """Batches ``[steps, B, ...]`` split over ``mesh`` along B; a clear error when B is not a
    multiple of the device count (``benchmarks.training.parallel.per_device_batch``)."""
    return parallel.shard_batch(batches, mesh, batch_axis=1)


_NOT_ALL_REDUCE = re.compile(
    r" (all-gather|reduce-scatter|all-to-all|collective-permute)(-start)?\("
)


def communication(config: Config, mesh: Mesh, mode: str, K: int) -> dict[str, Any]:
    """The collectives one outer step of ``mode`` executes on the adding task of ``config``
    and the megabytes they return per device: all kinds, and the all-reduces alone."""
    problem = adding_problem(
        length=config.length, batch_size=config.batch_size, hidden=config.hidden
    )
    tx = optimizer(K, config.delta, config.lr, mode)
    params = problem.init(0)
    batch = problem.make_batch(jax.random.key(0))
    one_step = shard_steps(jax.tree.map(lambda a: a[None], batch), mesh)
    compiled = (
        train_chunk(problem.loss, tx, mesh, mode)
        .lower(replicate(params, mesh), replicate(tx.init(params), mesh), one_step)
        .compile()
    )
    hlo = compiled.as_text()
    count, size = parallel.collectives(hlo)
    only_all_reduces = "\n".join(x for x in hlo.splitlines() if not _NOT_ALL_REDUCE.search(x))
    all_reduces, reduced = parallel.collectives(only_all_reduces)
    return {
        "mode": mode,
        "K": K,
        "all_reduces": all_reduces,
        "all_reduce_megabytes": reduced / 1e6,
        "collectives": count,
        "megabytes": size / 1e6,
    }


def train(config: Config, mesh: Mesh) -> tuple[dict[str, Any], int]:
    """One run of ``config`` on ``mesh``, built from the registry as the runner builds it and
    trained by the one loop: its row (test metric, seconds with compilation) and its outer
    steps."""
    data = load_task_data(config)
    plan = make_plan(config, data)
    model = build_model(config, data)
    params, model_state = init_variables(config, model, data)
    local = config.fw_mode == "local" and mesh.size > 1
    axis = mesh.axis_names[0] if local else None
    _, _, result = training.train(
        objective=make_objective(config, model, data),
        tx=build_optimizer(config, plan.updates_per_epoch, batch_axis_name=axis),
        params=params,
        model_state=model_state,
        stream=data.stream,
        steps=plan.steps,
        eval_every=plan.eval_every,
        seed=config.seed,
        grad_evals_per_step=plan.grad_evals_per_step,
        mesh=mesh,
        local_gradients=local,
        progress=False,
    )
    row = {
        "task": title(config),
        "mode": config.fw_mode,
        "seed": config.seed,
        "metric": result.final_eval,
        "seconds": result.wall_time_s + result.compile_time_s,
    }
    return row, result.steps


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(
    runs: list[dict[str, Any]], configs: Sequence[Config], steps: Mapping[str, int]
) -> list[dict[str, Any]]:
    """Per task (its ``configs``, and ``steps`` by task name): the metric of ``sync`` and
    ``local`` over the seeds (mean, std, values)."""
    rows = []
    for config in configs:
        name = title(config)
        row: dict[str, Any] = {
            "task": name,
            "metric": METRICS[config.task],
            "K": config.K,
            "outer_steps": steps[config.task],
            "batch": config.batch_size,
        }
        for mode in ("sync", "local"):
            values = [r["metric"] for r in runs if r["task"] == name and r["mode"] == mode]
            mean, std = _mean_std(values)
            row[mode] = {"mean": mean, "std": std, "values": values}
        rows.append(row)
    return rows


def markdown(summary: dict[str, Any]) -> str:
    """The two tables of ``summary`` as Markdown."""
    devices = summary["devices"]
    comm = summary["communication"]
    lines = [
        f"# Frank-Wolfe on {devices} devices",
        "",
        f"Machine: {describe(summary['machine'])}; {devices} {summary['device_kind']} "
        f"devices. Command: `{summary['command']}` at commit {summary['commit']}.",
        "",
        f"## Communication per outer step ({comm['task']}, batch {comm['batch']} over "
        f"{devices} devices)",
        "",
        "Read from the compiled outer step, loop trips counted; MB: what they return on one "
        "device, summed over the step. jit: `jax.jit` + `NamedSharding` (the compiler's "
        "collectives); sync: `shard_map`, every gradient averaged; local: `shard_map`, Δ_K "
        "averaged once.",
        "",
        "| mode | K | all-reduces | MB | all collectives | MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['mode']} | {r['K']} | {r['all_reduces']} | {r['all_reduce_megabytes']:.3f} "
        f"| {r['collectives']} | {r['megabytes']:.3f} |"
        for r in comm["rows"]
    ]
    lines += [
        "",
        f"## Synchronous vs local, same gradient evaluations (seeds {summary['seeds']})",
        "",
        "K gradient evaluations per outer step on every device in both modes; mean ± std "
        "over the seeds.",
        "",
        "| task | metric | K | outer steps | batch (per device) | sync | local |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary["accuracy"]:
        cells = [f"{r[m]['mean']:.4f} ± {r[m]['std']:.4f}" for m in ("sync", "local")]
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['K']} | {r['outer_steps']} | {r['batch']} "
            f"({r['batch'] // devices}) "
            f"| {cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines) + "\n"


def _commit() -> str:
    """The commit the numbers come from, flagged if the library, the registry, the loop or
    the measurement scripts have changed."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    paths = ("fw_optax", "benchmarks/registry", "benchmarks/training", "benchmarks/perf")
    changed = git("status", "--porcelain", "--", *paths)
    return (git("rev-parse", "--short", "HEAD") or "unknown") + (" (modified)" if changed else "")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _run_arguments(parser.add_argument_group("what to run"))
    _process_arguments(parser.add_argument_group("several processes"))
    return parser


def _run_arguments(group: argparse._ArgumentGroup) -> None:
    """The devices, seeds, tasks, sizes and where the summary goes."""
    group.add_argument("--devices", type=int, default=4, help="devices to split the batch over")
    group.add_argument("--seeds", type=int, default=3)
    group.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    group.add_argument(
        "--out",
        default=str(ROOT / "runs" / "distributed"),
        help="where summary.json/.md go (default runs/distributed, which git ignores; the "
        "committed measurement: --out results/distributed)",
    )
    group.add_argument("--quick", action="store_true", help="toy sizes, 1 seed: a smoke test")


def _process_arguments(group: argparse._ArgumentGroup) -> None:
    """One process per host: ``jax.distributed.initialize``'s settings."""
    group.add_argument("--coordinator", default=None, help="host:port of process 0")
    group.add_argument("--num-processes", type=int, default=1)
    group.add_argument("--process-id", type=int, default=0)


def _start_mesh(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Mesh:
    """The mesh of ``--devices`` devices: fake CPU devices made, the processes joined."""
    if args.devices < 1 or args.devices % args.num_processes:
        parser.error(
            f"--devices must be a positive multiple of --num-processes={args.num_processes}, "
            f"got --devices {args.devices}"
        )
    # Before anything computes: JAX reads the CPU device count when its backends start.
    parallel.start_cpu_devices(args.devices // args.num_processes)
    if args.coordinator is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    if len(jax.devices()) < args.devices:
        parser.error(f"--devices {args.devices}: JAX has only {len(jax.devices())} devices")
    return parallel.data_mesh(jax.devices()[: args.devices])


def _communication_rows(adding: Config, mesh: Mesh, say: Callable[..., None]) -> list[dict]:
    """(a): the collectives of every mode's outer step, K = 1 and 5."""
    rows = []
    for K in (1, 5):
        for mode in MODES:
            rows.append(communication(adding, mesh, mode, K))
            say(rows[-1], flush=True)
    return rows


def _train_runs(
    args: argparse.Namespace, seeds: Sequence[int], mesh: Mesh, say: Callable[..., None]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(b): every task, seed and mode trained; the runs' rows and each task's outer steps."""
    runs, steps = [], {}
    for name in args.tasks:
        for seed in seeds:
            for mode in ("sync", "local"):
                config = task_config(
                    name, quick=args.quick, devices=args.devices, seed=seed, mode=mode
                )
                row, steps[name] = train(config, mesh)
                runs.append(row)
                say(row, flush=True)
    return runs, steps


def _write(summary: dict[str, Any], out: Path, say: Callable[..., None]) -> None:
    """``summary.json`` and ``summary.md`` in ``out``, the tables printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    say(markdown(summary))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    mesh = _start_mesh(args, parser)
    seeds = [0] if args.quick else list(range(args.seeds))
    configs = {
        name: task_config(name, quick=args.quick, devices=args.devices)
        for name in dict.fromkeys(["adding", *args.tasks])
    }
    commit = _commit()  # now: the files may change while the runs go on
    say = print if jax.process_index() == 0 else (lambda *_, **__: None)
    kind = jax.devices()[0].device_kind
    say(f"Machine: {describe(machine())}; a mesh of {args.devices} {kind} devices", flush=True)
    communicated = _communication_rows(configs["adding"], mesh, say)
    runs, steps = _train_runs(args, seeds, mesh, say)
    adding = configs["adding"]
    summary = {
        "machine": machine(),
        "devices": args.devices,
        "device_kind": kind,
        "processes": jax.process_count(),
        "command": " ".join(["python -m benchmarks.perf.distributed", *argv]),
        "commit": commit,
        "seeds": seeds,
        "communication": {"task": title(adding), "batch": adding.batch_size, "rows": communicated},
        "accuracy": summarize(runs, [configs[name] for name in args.tasks], steps),
        "runs": runs,
    }
    if jax.process_index() == 0:
        _write(summary, Path(args.out), say)
    return summary


if __name__ == "__main__":
    main()
