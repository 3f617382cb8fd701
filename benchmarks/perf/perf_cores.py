"""How much of the CPU one training run uses: one device against the batch split over cores.

    python -m benchmarks.perf.perf_cores                  # T=100 and T=400, every variant
    python -m benchmarks.perf.perf_cores --quick          # a smoke test at toy size
    python -m benchmarks.perf.perf_cores --impls flax fused --out results/cpu/perf_cores.txt

The adding-task RNN (``models.RNNModel``, vanilla, hidden 128, batch 50). Each optimizer runs
three ways, on the same weights and batches:

- ``1 device``: ``jax.jit`` on one CPU device (what a plain JAX program does);
- ``jit+sharding``: ``jax.jit`` with the batch split over the host's CPU devices by a
  ``NamedSharding`` (the SPMD partitioner places the collectives);
- ``shard_map``: ``benchmarks.training.parallel``: each device runs the single-device step on its
  shard, the gradient averaged once per evaluation.

For each it prints the time of one outer step, the speed-up over ``1 device``, the CPU
cores the process kept busy (process CPU time / wall time), the collectives (all-reduces,
all-gathers, ...) one outer step executes and the megabytes they move per device (read from
the compiled program, loop trips counted: ``benchmarks.training.parallel.collectives``), and the
largest relative difference of the parameters after the timed steps from ``1 device``'s.
The variants are timed round after round, so a busy spell of a shared machine slows them
alike; the load average is printed with each table.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import fw_optax
from benchmarks.machine import describe, machine
from benchmarks.perf import timing
from benchmarks.registry.tasks import adding_problem
from benchmarks.training import parallel
from models import default_impl


def _optimizers(K: int) -> dict[str, Any]:
    return {
        "sgd": optax.sgd(0.01),
        f"fw K={K} + sgd (Alg. 1)": optax.chain(fw_optax.frank_wolfe(K, 0.1), optax.sgd(1.0)),
        f"fw K={K} + adam (authors)": optax.chain(
            fw_optax.frank_wolfe(K, 1e-3, scope="leaf", cumulative=True), optax.adam(1e-3)
        ),
    }


def _steps_fn(loss: Callable[..., Any], tx: Any) -> Callable[..., Any]:
    """``(params, opt_state, batches) -> (params, opt_state, losses)``: one step per batch."""
    tx = optax.with_extra_args_support(tx)

    def step(carry, batch):
        params, opt_state = carry
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params, value_fn=lambda w: loss(w, batch))
        return (optax.apply_updates(params, updates), opt_state), value

    def run_steps(params, opt_state, batches):
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state, losses

    return run_steps


def _variants(loss, tx, mesh, params, batches) -> dict[str, tuple[Any, tuple]]:
    """The three ways to run ``steps`` outer steps: ``name -> (compiled, its arguments)``."""
    opt_state = tx.init(params)
    replicated = NamedSharding(mesh, P())
    split = NamedSharding(mesh, parallel.batch_spec(batch_axis=1))
    sharded_args = (
        jax.device_put(params, replicated),
        jax.device_put(opt_state, replicated),
        parallel.shard_batch(batches, mesh, batch_axis=1),
    )
    one = jax.jit(_steps_fn(loss, tx)).lower(params, opt_state, batches).compile()
    spmd = jax.jit(
        _steps_fn(loss, tx),
        in_shardings=(replicated, replicated, split),
        out_shardings=replicated,
    )
    shmap = parallel.data_parallel(
        _steps_fn(parallel.data_parallel_loss(loss), tx),
        mesh,
        in_specs=(P(), P(), parallel.batch_spec(batch_axis=1)),
        out_specs=P(),
    )
    return {
        "1 device": (one, (params, opt_state, batches)),
        "jit+sharding": (spmd.lower(*sharded_args).compile(), sharded_args),
        "shard_map": (shmap.lower(*sharded_args).compile(), sharded_args),
    }


def _max_relative_difference(a: Any, b: Any) -> float:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(
        float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-30))
        for x, y in ((np.asarray(x), np.asarray(y)) for x, y in leaves)
    )


def _adding_problem(args: argparse.Namespace, impl: str, length: int):
    """``(loss, params, batches)``: the adding-task RNN (``benchmarks.registry.tasks``) and
    ``args.steps`` batches."""
    problem = adding_problem(length=length, batch_size=args.batch, hidden=args.hidden, impl=impl)
    batches = jax.vmap(problem.make_batch)(jax.random.split(jax.random.key(1), args.steps))
    return problem.loss, problem.init(0), batches


def _round_robin(runs: dict[Any, Callable[[], Any]], repeats: int):
    """``(walls, cpus)``: each run timed once per round, ``repeats`` rounds."""
    times = timing.rounds(runs, repeats)
    walls = {key: [t.wall for t in ts] for key, ts in times.items()}
    cpus = {key: [t.cpu for t in ts] for key, ts in times.items()}
    return walls, cpus


def _print_table(rows: list[dict[str, Any]], print_fn: Callable[[str], None]) -> None:
    print_fn(
        f"{'optimizer':26s} {'variant':13s} {'ms/step':>8s} {'speed-up':>9s} {'cores':>6s}"
        f" {'collectives':>11s} {'MB':>7s} {'vs 1 device':>11s}"
    )
    for row in rows:
        print_fn(
            f"{row['optimizer']:26s} {row['variant']:13s} {row['ms_per_step']:8.2f} "
            f"{row['speedup']:8.2f}x {row['cores']:6.2f} {row['collectives']:11.0f} "
            f"{row['collective_mb']:7.2f} {row['max_rel_diff']:11.1e}"
        )


def measure_length(
    args: argparse.Namespace, impl: str, length: int, print_fn: Callable[[str], None]
) -> list[dict[str, Any]]:
    """One table: every optimizer x variant at sequence length ``length``; returns its rows."""
    impl = default_impl(seq_len=length) if impl == "auto" else impl
    loss, params, batches = _adding_problem(args, impl, length)
    mesh = parallel.data_mesh(jax.devices()[: args.devices])
    runs, checks, collectives = {}, {}, {}
    for opt_name, tx in _optimizers(args.K).items():
        reference = None
        for name, (compiled, inputs) in _variants(loss, tx, mesh, params, batches).items():
            run = runs[opt_name, name] = functools.partial(compiled, *inputs)
            new_params = run()[0]  # also the warm-up
            reference = new_params if reference is None else reference
            checks[opt_name, name] = _max_relative_difference(reference, new_params)
            collectives[opt_name, name] = parallel.collectives(compiled.as_text())

    load_before = timing.load_average()
    walls, cpus = _round_robin(runs, args.repeats)
    rows = []
    for opt_name, name in runs:
        step = statistics.median(walls[opt_name, name]) / args.steps
        base = statistics.median(walls[opt_name, "1 device"]) / args.steps
        count, size = collectives[opt_name, name]
        rows.append(
            {
                "T": length,
                "impl": impl,
                "optimizer": opt_name,
                "variant": name,
                "ms_per_step": step * 1e3,
                "speedup": base / step,
                "cores": sum(cpus[opt_name, name]) / sum(walls[opt_name, name]),
                "collectives": count / args.steps,
                "collective_mb": size / args.steps / 1e6,
                "max_rel_diff": checks[opt_name, name],
            }
        )
    print_fn(
        f"T={length}, recurrence impl={impl}, batch {args.batch} ({args.batch // args.devices} "
        f"per device on {args.devices} devices), hidden {args.hidden}, {args.steps} steps per "
        f"call, median of {args.repeats} rounds; {load_before} before, "
        f"{timing.load_average()} after"
    )
    _print_table(rows, print_fn)
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument(
        "--impls",
        nargs="+",
        default=["auto"],
        help="models.RNNModel recurrences to measure (auto: the backend's default)",
    )
    parser.add_argument("--K", type=int, default=5, help="Frank-Wolfe inner steps")
    parser.add_argument("--steps", type=int, default=5, help="outer steps per jitted call")
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds")
    parser.add_argument(
        "--devices", type=int, default=None, help="CPU devices (default: one per core)"
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes: a smoke test")
    parser.add_argument("--out", default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.batch, args.hidden, args.K = [8], 4, 8, 2
        args.steps, args.repeats = 2, 2
    # Before anything computes: JAX reads the device count when its backend starts
    # (importing jax, flax or optax does not start it).
    args.devices = parallel.use_cpu_devices(args.devices)
    if args.devices < 2:
        parser.error(f"needs at least 2 CPU devices to split over, got {args.devices}")
    parallel.per_device_batch(args.batch, args.devices)

    rows = []
    with timing.tee(functools.partial(print, flush=True), args.out) as print_fn:
        print_fn(
            f"One training step on all CPU cores. Machine: {describe(machine())}; this process "
            f"may run on {parallel.default_device_count()} of them"
        )
        for impl in args.impls:
            for length in args.lengths:
                rows += measure_length(args, impl, length, print_fn)
    return rows


if __name__ == "__main__":
    main()
