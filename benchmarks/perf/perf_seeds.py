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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.machine import describe, machine
from benchmarks.perf import timing
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
    size = (8, 4, 4) if quick else (100, 50, 128)
    return [_gradient_row(impl, size, seeds, repeats) for impl in ("fused", "flax")]


def _gradient_row(
    impl: str, size: tuple[int, int, int], seeds: int, repeats: int
) -> dict[str, Any]:
    """The gradient of ``seeds`` parameter sets of the adding task at ``size`` (T, batch,
    hidden) with ``impl``: S jitted calls against one vmap-ed call, timed in turn
    (``benchmarks.perf.timing``), and the largest difference of their gradients."""
    import jax
    import jax.numpy as jnp

    from benchmarks.registry.tasks import adding_problem

    length, batch, hidden = size
    problem = adding_problem(length=length, batch_size=batch, hidden=hidden, impl=impl)
    x, y = problem.make_batch(jax.random.key(0))

    def grad(params, x, y):
        return jax.grad(problem.loss)(params, (x, y))

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
    ways = {
        "apart": lambda: [jax.block_until_ready(one(q, x, y)) for q in params],
        "together": lambda: batched(stacked, xs, ys),
    }
    seconds = timing.median_wall(timing.rounds(ways, repeats))
    a, b = seconds["apart"], seconds["together"]
    return {"impl": impl, "apart_ms": 1e3 * a, "together_ms": 1e3 * b, "speedup": a / b,
            "diff": diff}  # fmt: skip


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
        _emit(_gradient_lines(rows, args.seeds, repeats), args.out, argv)
        return rows
    parallel.start_cpu_devices(args.devices)
    repeats = 1 if args.quick else args.repeats
    rows = [
        _case_row(name, case, args.seeds, repeats, args.devices)
        for name, case in _cases(args.quick, args.tasks).items()
    ]
    _emit(_case_lines(rows, args.seeds, repeats), args.out, argv)
    return rows


def _gradient_lines(rows: list[dict[str, Any]], seeds: int, repeats: int) -> list[str]:
    """``--gradient``'s table."""
    lines = [
        f"Vanilla-RNN gradient of S={seeds} parameter sets (adding task, T=100, batch "
        f"50, hidden 128), S jitted calls vs one vmap-ed call, one device, median of "
        f"{repeats}. Machine: {describe(machine())}; load average "
        f"{os.getloadavg()[0]:.2f} at the end.",
        "",
        "| recurrence | S calls (ms) | one vmap call (ms) | speed-up of vmap | max rel. diff |",
        "|---|---|---|---|---|",
    ]
    return lines + [
        f"| {r['impl']} | {r['apart_ms']:.1f} | {r['together_ms']:.1f} | {r['speedup']:.2f}x "
        f"| {r['diff']:.1e} |"
        for r in rows
    ]


def _cases(quick: bool, tasks: Sequence[str] | None) -> dict[str, tuple]:
    """The cases to run: ``--quick``'s or the full ones, of ``tasks`` only if given."""
    cases = QUICK if quick else CASES
    if tasks is None:
        return cases
    return {name: case for name, case in cases.items() if case[0] in tasks}


def _case_row(
    name: str, case: tuple, seeds: int, repeats: int, devices: int | None
) -> dict[str, Any]:
    """One case trained both ways for seeds 0..S-1, ``repeats`` alternating rounds: medians
    per seed, the compile times and the largest difference of the final metric."""
    from benchmarks.registry.configs import get_config

    task, method, keys, settings = case
    configs_ = [get_config(task, method, "cpu", seed=s, **keys, **settings) for s in range(seeds)]
    rounds = [_measure(configs_, devices) for _ in range(repeats)]
    apart = statistics.median(r["apart"] for r in rounds) / seeds
    together = statistics.median(r["together"] for r in rounds) / seeds
    return {
        "case": name,
        "apart_s": apart,
        "together_s": together,
        "speedup": apart / together,
        "apart_compile_s": statistics.median(r["apart_compile"] for r in rounds),
        "together_compile_s": statistics.median(r["together_compile"] for r in rounds),
        "diff": max(r["diff"] for r in rounds),
        "devices": rounds[0]["devices"],
    }


def _case_lines(rows: list[dict[str, Any]], seeds: int, repeats: int) -> list[str]:
    """The table of the cases."""
    lines = [
        f"Seeds in one program vs separate runs, S={seeds} seeds, median of {repeats} "
        f"alternating rounds. Machine: {describe(machine())}; load average "
        f"{os.getloadavg()[0]:.2f} at the end.",
        "",
        "| case | devices | separate: train s/seed | one program: train s/seed | speed-up | "
        "compile s, separate (all) | compile s, one program | max rel. diff of final metric |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return lines + [
        f"| {r['case']} | {r['devices']} | {r['apart_s']:.3f} | {r['together_s']:.3f} | "
        f"{r['speedup']:.2f}x | {r['apart_compile_s']:.1f} | {r['together_compile_s']:.1f} | "
        f"{r['diff']:.1e} |"
        for r in rows
    ]


def _emit(lines: list[str], out: Path | None, argv: Sequence[str] | None) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        shown = " ".join(sys.argv[1:] if argv is None else argv)
        out.write_text(f"$ python -m benchmarks.perf.perf_seeds {shown}\n\n{text}")


if __name__ == "__main__":
    main()
