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
loop trips counted), on the adding task's RNN.

(b) ``sync`` against ``local`` from the same initial weights on the same batches, K=5
gradient evaluations per outer step on every device in both: the adding task (T=100,
vanilla RNN of 128 units, δ=0.1, η=1, 2000 outer steps, test MSE on 1000 samples) and
HAR-2 (vanilla RNN of 80 units, binary head, δ=1, η=0.05, batch 128, 5 epochs, test
accuracy). The adding batch is 52: the paper's 50 rounded up to a multiple of 4 devices.

On CPU the devices are ``--devices`` fake ones (``jax_num_cpu_devices``, set before JAX
starts; with several processes each makes its share). Elsewhere the mesh takes the first
``--devices`` of ``jax.devices()``, every process's devices after
``jax.distributed.initialize`` (``--coordinator``). Process 0 prints and writes
``summary.json`` and ``summary.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import fw_optax
from benchmarks.machine import describe, machine
from benchmarks.training import parallel
from benchmarks.training.data import load_har2
from benchmarks.training.data.adding import adding_batch
from models import RNNModel, get_head

AXIS = parallel.DATA_AXIS
MODES: tuple[str, ...] = ("jit", "sync", "local")
TASKS: tuple[str, ...] = ("adding", "har2")
ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Task:
    """A training problem: model, loss, data in chunks of outer steps, and a test metric.

    Attributes:
      name: what the tables call it.
      model: the Flax model.
      loss: ``loss(params, (x, y))`` of one batch (or one device's shard of it).
      example: an input batch ``x`` for ``model.init``.
      chunks: ``chunks(seed)`` yields ``(x, y)`` with a leading axis of outer steps, the
        batch on axis 1; the same for every mode.
      metric: ``metric(params)`` on the test set.
      metric_name: what ``metric`` measures.
      K, delta, lr: ``chain(frank_wolfe(K, delta), sgd(lr))``.
      batch: the global batch size.
      steps: outer steps per run.
    """

    name: str
    model: RNNModel
    loss: Callable[[Any, Any], jax.Array]
    example: jax.Array
    chunks: Callable[[int], Iterator[tuple[Any, Any]]]
    metric: Callable[[Any], float]
    metric_name: str
    K: int
    delta: float
    lr: float
    batch: int
    steps: int


def adding_task(*, length: int, hidden: int, batch: int, steps: int, test_size: int) -> Task:
    """The adding problem (``benchmarks.training.data.adding``): fresh batches from the seed's
    key."""
    model = RNNModel(hidden_size=hidden, output_size=1, cell="simple")
    mse = get_head("regressor").loss
    chunk = min(steps, 100)

    def loss(params: Any, batch_xy: Any) -> jax.Array:
        x, y = batch_xy
        return mse(model.apply(params, x), y)

    def chunks(seed: int) -> Iterator[tuple[Any, Any]]:
        keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), 1), steps)
        for start in range(0, steps, chunk):
            yield jax.vmap(lambda k: adding_batch(k, batch, length))(keys[start : start + chunk])

    x_test, y_test = adding_batch(jax.random.key(10**6), test_size, length)
    test_loss = jax.jit(loss)
    return Task(
        name=f"adding T={length}",
        model=model,
        loss=loss,
        example=x_test[:1],
        chunks=chunks,
        metric=lambda params: float(test_loss(params, (x_test, y_test))),
        metric_name="test MSE",
        K=5,
        delta=0.1,
        lr=1.0,
        batch=batch,
        steps=steps,
    )


def har2_task(*, hidden: int, batch: int, epochs: int, subset: int | None = None) -> Task:
    """HAR-2 (``benchmarks.training.data.load_har2``), a new shuffle every epoch; ``subset``
    keeps the first windows of each split (for a smoke test)."""
    data = load_har2()
    x_train, y_train = data.x_train[:subset], data.y_train[:subset]
    x_test, y_test = data.x_test[:subset], data.y_test[:subset]
    model = RNNModel(hidden_size=hidden, output_size=1)
    head = get_head("binary")
    per_epoch = len(x_train) // batch

    def loss(params: Any, batch_xy: Any) -> jax.Array:
        x, y = batch_xy
        return head.loss(model.apply(params, x), y)

    def chunks(seed: int) -> Iterator[tuple[Any, Any]]:
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            rows = rng.permutation(len(x_train))[: per_epoch * batch].reshape(per_epoch, batch)
            yield x_train[rows], y_train[rows]

    predict = jax.jit(lambda params, x: head.predict(model.apply(params, x)))
    return Task(
        name="HAR-2",
        model=model,
        loss=loss,
        example=jnp.asarray(x_train[:1]),
        chunks=chunks,
        metric=lambda params: float(np.mean(np.asarray(predict(params, x_test)) == y_test)),
        metric_name="test accuracy",
        K=5,
        delta=1.0,
        lr=0.05,
        batch=batch,
        steps=epochs * per_epoch,
    )


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


def communication(task: Task, mesh: Mesh, mode: str, K: int) -> dict[str, Any]:
    """The collectives one outer step of ``mode`` executes and the megabytes they return per
    device: all kinds, and the all-reduces alone."""
    tx = optimizer(K, task.delta, task.lr, mode)
    params = task.model.init(jax.random.key(0), task.example)
    batch = next(iter(task.chunks(0)))
    one_step = shard_steps(jax.tree.map(lambda a: a[:1], batch), mesh)
    compiled = (
        train_chunk(task.loss, tx, mesh, mode)
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


def train(task: Task, mesh: Mesh, mode: str, seed: int) -> dict[str, Any]:
    """One run of ``task`` in ``mode`` from ``seed``'s initial weights; its test metric."""
    tx = optimizer(task.K, task.delta, task.lr, mode)
    run = train_chunk(task.loss, tx, mesh, mode)
    params = task.model.init(jax.random.key(seed), task.example)
    params, opt_state = replicate((params, tx.init(params)), mesh)
    start = time.perf_counter()
    for batches in task.chunks(seed):
        params, opt_state = run(params, opt_state, shard_steps(batches, mesh))
    params = to_host(params)
    return {
        "task": task.name,
        "mode": mode,
        "seed": seed,
        "metric": task.metric(params),
        "seconds": time.perf_counter() - start,
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict[str, Any]], tasks: Sequence[Task]) -> list[dict[str, Any]]:
    """Per task: the metric of ``sync`` and ``local`` over the seeds (mean, std, values)."""
    rows = []
    for task in tasks:
        row: dict[str, Any] = {
            "task": task.name,
            "metric": task.metric_name,
            "K": task.K,
            "outer_steps": task.steps,
            "batch": task.batch,
        }
        for mode in ("sync", "local"):
            values = [r["metric"] for r in runs if r["task"] == task.name and r["mode"] == mode]
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


def make_tasks(names: Sequence[str], *, quick: bool, devices: int) -> dict[str, Task]:
    """The tasks called ``names``: the settings of the module docstring, or toy ones."""
    if quick:
        makers = {
            "adding": lambda: adding_task(
                length=8, hidden=8, batch=2 * devices, steps=4, test_size=16
            ),
            "har2": lambda: har2_task(hidden=8, batch=2 * devices, epochs=1, subset=64),
        }
    else:
        makers = {
            "adding": lambda: adding_task(
                length=100, hidden=128, batch=52, steps=2000, test_size=1000
            ),
            "har2": lambda: har2_task(hidden=80, batch=128, epochs=5),
        }
    return {name: makers[name]() for name in names}


def _commit() -> str:
    """The commit the numbers come from, flagged if this file or the library has changed."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "fw_optax", "benchmarks/perf/distributed.py")
    return (git("rev-parse", "--short", "HEAD") or "unknown") + (" (modified)" if changed else "")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=4, help="devices to split the batch over")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument(
        "--out",
        default=str(ROOT / "runs" / "distributed"),
        help="where summary.json/.md go (default runs/distributed, which git ignores; the "
        "committed measurement: --out results/distributed)",
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes, 1 seed: a smoke test")
    parser.add_argument("--coordinator", default=None, help="host:port of process 0")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args(argv)
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
    mesh = parallel.data_mesh(jax.devices()[: args.devices])
    seeds = [0] if args.quick else list(range(args.seeds))
    tasks = make_tasks(
        list(dict.fromkeys(["adding", *args.tasks])), quick=args.quick, devices=args.devices
    )
    commit = _commit()  # now: the files may change while the runs go on
    say = print if jax.process_index() == 0 else (lambda *_, **__: None)
    kind = jax.devices()[0].device_kind
    say(f"Machine: {describe(machine())}; a mesh of {args.devices} {kind} devices", flush=True)

    communicated = []
    for K in (1, 5):
        for mode in MODES:
            communicated.append(communication(tasks["adding"], mesh, mode, K))
            say(communicated[-1], flush=True)
    runs = []
    for name in args.tasks:
        for seed in seeds:
            for mode in ("sync", "local"):
                runs.append(train(tasks[name], mesh, mode, seed))
                say(runs[-1], flush=True)
    adding = tasks["adding"]
    summary = {
        "machine": machine(),
        "devices": args.devices,
        "device_kind": kind,
        "processes": jax.process_count(),
        "command": " ".join(["python -m benchmarks.perf.distributed", *argv]),
        "commit": commit,
        "seeds": seeds,
        "communication": {"task": adding.name, "batch": adding.batch, "rows": communicated},
        "accuracy": summarize(runs, [tasks[name] for name in args.tasks]),
        "runs": runs,
    }
    if jax.process_index() == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out / "summary.md").write_text(markdown(summary))
        say(markdown(summary))
    return summary


if __name__ == "__main__":
    main()
