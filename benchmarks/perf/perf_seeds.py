"""Seeds in one program against separate runs: training throughput per seed, side by side.

    python -m benchmarks.perf.perf_seeds                  # adding T=100 and HAR-2, 3 seeds
    python -m benchmarks.perf.perf_seeds --quick          # a smoke test at toy size
    python -m benchmarks.perf.perf_seeds --out results/cpu/perf_seeds.txt

For each case, the same configuration is trained for seeds 0..S-1 twice: as S separate runs
(``benchmarks.run.run_experiment``, what ``--seed`` does) and as one compiled program
(``benchmarks.run.run_seeds``, what ``--seeds`` does: ``jax.vmap`` over the seeds'
parameters, optimizer states, data and keys). Both use the runner's default devices (on CPU
one device per core). The two ways alternate for ``--repeats`` rounds, and the table gives
the median training wall time per seed (compilation excluded, it is listed apart), the
speed-up, and the largest relative difference of a final test metric between the two ways
(float rounding: the batched program sums in another order).

``--gradient`` measures the part that decides it instead: the vanilla-RNN gradient (adding
task, T=100, batch 50, hidden 128) of S parameter sets, S separate jitted calls against one
``jax.vmap``-ed call, on one device, for each recurrence implementation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.machine import describe, machine
from benchmarks.training import parallel

CASES = {
    "adding T=100, fw K=5 alg1, 400 steps": (
        "adding",
        "fw",
        {"K": 5, "flavour": "alg1"},
        {"steps": 400, "eval_every": 200},
    ),
    "adding T=100, sgd, 400 steps": ("adding", "sgd", {}, {"steps": 400, "eval_every": 200}),
    "HAR-2, fw K=5 authors, 1 epoch": ("har2", "fw", {"K": 5, "flavour": "authors"}, {"epochs": 1}),
    "HAR-2, sgd, 1 epoch": ("har2", "sgd", {}, {"epochs": 1}),
}
QUICK = {
    "toy adding, fw K=2 alg1": (
        "adding",
        "fw",
        {"K": 2, "flavour": "alg1"},
        {"length": 8, "steps": 4, "eval_every": 2, "hidden": 4, "batch_size": 4, "test_size": 8},
    ),
}


def _measure(configs_: list[Any], devices: int | None) -> dict[str, Any]:
    from benchmarks import run

    with tempfile.TemporaryDirectory() as tmp:
        apart = [
            run.run_experiment(c, Path(tmp) / "apart", progress=False, devices=devices)
            for c in configs_
        ]
        together = run.run_seeds(configs_, Path(tmp) / "together", progress=False, devices=devices)
    metric = f"test_{apart[0]['metric']}"
    diff = max(
        abs(a["final"][metric] - b["final"][metric]) / max(abs(a["final"][metric]), 1e-12)
        for a, b in zip(apart, together, strict=True)
    )
    return {
        "apart": sum(s["wall_time_s"] for s in apart),
        "together": together[0]["wall_time_s"],
        "apart_compile": sum(s["compile_time_s"] for s in apart),
        "together_compile": together[0]["compile_time_s"],
        "diff": diff,
        "devices": together[0]["devices"],
    }


def gradient_rows(seeds: int, repeats: int, quick: bool) -> list[dict[str, Any]]:
    """S separate gradient calls against one vmap-ed call, per recurrence implementation."""
    import jax
    import jax.numpy as jnp

    from benchmarks.registry.tasks import adding_problem

    length, batch, hidden = (8, 4, 4) if quick else (100, 50, 128)
    rows = []
    for impl in ("fused", "flax"):
        problem = adding_problem(length=length, batch_size=batch, hidden=hidden, impl=impl)
        x, y = problem.make_batch(jax.random.key(0))

        def grad(params, x, y, loss=problem.loss):
            return jax.grad(loss)(params, (x, y))

        params = [problem.init(s) for s in range(seeds)]
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
        xs, ys = jnp.stack([x] * seeds), jnp.stack([y] * seeds)
        one, batched = jax.jit(grad), jax.jit(jax.vmap(grad))
        # Both ways compute the same S gradients: the largest difference, relative to the largest.
        separate = jax.tree.map(lambda *a: jnp.stack(a), *[one(q, x, y) for q in params])
        diff = max(
            float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
            for a, b in zip(
                jax.tree.leaves(separate), jax.tree.leaves(batched(stacked, xs, ys)), strict=True
            )
        )
        apart, together = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for seed_params in params:
                jax.block_until_ready(one(seed_params, x, y))
            apart.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            jax.block_until_ready(batched(stacked, xs, ys))
            together.append(time.perf_counter() - t0)
        a, b = statistics.median(apart), statistics.median(together)
        rows.append(
            {"impl": impl, "apart_ms": 1e3 * a, "together_ms": 1e3 * b, "speedup": a / b,
             "diff": diff}
        )  # fmt: skip
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.perf.perf_seeds", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seeds", type=int, default=3, help="S, seeds per configuration")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both ways")
    parser.add_argument("--devices", type=int, help="as the runner's --devices (default all)")
    parser.add_argument("--quick", action="store_true", help="toy sizes, one round")
    parser.add_argument(
        "--gradient", action="store_true", help="the RNN gradient alone, S calls vs one vmap"
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=sorted({case[0] for case in CASES.values()}),
        default=None,
        help="only the cases of these tasks (default all)",
    )
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.repeats < 1:
        parser.error(f"--seeds must be >= 2 and --repeats >= 1, got {args.seeds}, {args.repeats}")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.gradient:
        parallel.start_cpu_devices(1)
        repeats = 1 if args.quick else max(args.repeats, 7)
        rows = gradient_rows(args.seeds, repeats, args.quick)
        lines = [
            f"Vanilla-RNN gradient of S={args.seeds} parameter sets (adding task, T=100, batch "
            f"50, hidden 128), S jitted calls vs one vmap-ed call, one device, median of "
            f"{repeats}. Machine: {describe(machine())}; load average "
            f"{os.getloadavg()[0]:.2f} at the end.",
            "",
            "| recurrence | S calls (ms) | one vmap call (ms) | speed-up of vmap | max rel. diff |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['impl']} | {r['apart_ms']:.1f} | {r['together_ms']:.1f} | {r['speedup']:.2f}x "
            f"| {r['diff']:.1e} |"
            for r in rows
        ]
        _emit(lines, args.out, argv)
        return rows
    parallel.start_cpu_devices(args.devices)
    from benchmarks.registry.configs import get_config

    cases = QUICK if args.quick else CASES
    if args.tasks is not None:
        cases = {name: case for name, case in cases.items() if case[0] in args.tasks}
    repeats = 1 if args.quick else args.repeats
    rows = []
    for name, (task, method, keys, settings) in cases.items():
        configs_ = [
            get_config(task, method, "cpu", seed=s, **keys, **settings) for s in range(args.seeds)
        ]
        rounds = [_measure(configs_, args.devices) for _ in range(repeats)]
        apart = statistics.median(r["apart"] for r in rounds) / args.seeds
        together = statistics.median(r["together"] for r in rounds) / args.seeds
        rows.append(
            {
                "case": name,
                "apart_s": apart,
                "together_s": together,
                "speedup": apart / together,
                "apart_compile_s": statistics.median(r["apart_compile"] for r in rounds),
                "together_compile_s": statistics.median(r["together_compile"] for r in rounds),
                "diff": max(r["diff"] for r in rounds),
                "devices": rounds[0]["devices"],
            }
        )
    lines = [
        f"Seeds in one program vs separate runs, S={args.seeds} seeds, median of {repeats} "
        f"alternating rounds. Machine: {describe(machine())}; load average "
        f"{os.getloadavg()[0]:.2f} at the end.",
        "",
        "| case | devices | separate: train s/seed | one program: train s/seed | speed-up | "
        "compile s, separate (all) | compile s, one program | max rel. diff of final metric |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['devices']} | {r['apart_s']:.3f} | {r['together_s']:.3f} | "
            f"{r['speedup']:.2f}x | {r['apart_compile_s']:.1f} | {r['together_compile_s']:.1f} | "
            f"{r['diff']:.1e} |"
        )
    _emit(lines, args.out, argv)
    return rows


def _emit(lines: list[str], out: Path | None, argv: Sequence[str] | None) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        shown = " ".join(sys.argv[1:] if argv is None else argv)
        out.write_text(f"$ python -m benchmarks.perf.perf_seeds {shown}\n\n{text}")


if __name__ == "__main__":
    main()
