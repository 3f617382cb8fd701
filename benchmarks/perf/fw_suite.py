"""Performance benchmarks: ratios measured side by side in one run, on one machine.

    python -m benchmarks.perf.fw_suite                 # every suite
    python -m benchmarks.perf.fw_suite --suite fw      # the optimizer's own overheads only

Suite ``fw`` (the adding task: a vanilla RNN with T=100, batch 50, hidden 128, and a GRU
with T=150, batch 32, hidden 96, whose 12 small tensors stress per-tensor costs):

(a) step time of ``chain(frank_wolfe(K), sgd)`` / (K x step time of plain SGD), K in {1, 5, 10}
    on the RNN and K=5 on the GRU: what the Frank-Wolfe machinery costs beyond its K gradient
    evaluations (target <= 1.05);
(b) compile time for K=64 / K=2: the inner loop is one scanned step whatever K is
    (target <= 1.2);
(c) XLA temporary memory for K=64 / K=2 from the compiled program's memory analysis
    (target <= 1.1);
(d) the optimizer's own cost per outer step (an FW K=5 step less 5 SGD steps, on a loss
    whose gradient costs nearly nothing) with the same parameters as 64 tensors / as 1
    tensor: it must not grow with the number of tensors (target <= 1.25).

Suite ``models``: train-step time of the recurrences (``benchmarks.perf.perf_models``).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

import fw_optax
from benchmarks.machine import describe, machine
from benchmarks.perf import timing
from benchmarks.registry.tasks import adding_problem
from benchmarks.training.step import make_steps_fn

TARGETS = {"step": 1.05, "compile": 1.2, "memory": 1.1, "tensors": 1.25}


def _adding_problem(length: int, batch: int, hidden: int, cell: str = "simple"):
    """``(params, loss, make_batch)`` of the adding task (``benchmarks.registry.tasks``)."""
    problem = adding_problem(length=length, batch_size=batch, hidden=hidden, cell=cell)
    return problem.init(0), problem.loss, problem.make_batch


def _round_robin(runs: dict, repeats: int, per_call: int) -> dict:
    """Median seconds per step of each run, timed round-robin (``benchmarks.perf.timing``)."""
    medians = timing.median_wall(timing.rounds(runs, repeats))
    return {name: seconds / per_call for name, seconds in medians.items()}


def _fw_tx(K: int) -> optax.GradientTransformation:
    return optax.chain(fw_optax.frank_wolfe(K, 1.0, 2), optax.sgd(0.01))


def _many_tensors(num_leaves: int, total: int) -> tuple[dict, Callable]:
    """``total`` parameters split into ``num_leaves`` tensors, and a loss whose gradient is
    nearly free, so that the time of a step is the optimizer's own."""
    params = {f"w{i:03d}": jnp.full([total // num_leaves], 0.5) for i in range(num_leaves)}

    def loss_fn(params, batch):
        del batch
        return sum(jnp.sum(w * w) for w in jax.tree.leaves(params))

    return params, loss_fn


def fw_benchmarks(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> list[dict]:
    """Measures (a), (b), (c) and (d) and prints one table; returns its rows."""
    keys = jax.random.split(jax.random.key(1), args.steps_per_call)  # one jitted call
    problems = {
        "RNN": _adding_problem(args.length, args.batch, args.hidden),
        "GRU": _adding_problem(args.gru_length, args.gru_batch, args.gru_hidden, cell="gru"),
    }
    step_Ks = {"RNN": (1, 5, 10), "GRU": (5,)}

    def compiled_steps(problem, tx):
        params, loss_fn, make_batch = problem
        run = make_steps_fn(loss_fn, tx, make_batch)
        t0 = time.perf_counter()
        compiled = run.lower(params, tx.init(params), keys).compile()
        return compiled, time.perf_counter() - t0

    def prepared(problem, tx):
        compiled, _ = compiled_steps(problem, tx)
        params, state = problem[0], tx.init(problem[0])
        jax.block_until_ready(compiled(params, state, keys))  # warm-up
        return functools.partial(compiled, params, state, keys)

    runs = {}
    for name, problem in problems.items():
        runs[(name, "sgd")] = prepared(problem, optax.sgd(0.01))
        for K in step_Ks[name]:
            runs[(name, K)] = prepared(problem, _fw_tx(K))
    # (d): the same number of parameters as 1 tensor and as many; the loss costs ~nothing.
    leaf_counts = (1, args.many_tensors)
    for count in leaf_counts:
        params, loss_fn = _many_tensors(count, args.many_tensors * 512)
        problem = (params, loss_fn, lambda key: None)
        runs[("tensors", count)] = prepared(problem, _fw_tx(5))
        runs[("tensors sgd", count)] = prepared(problem, optax.sgd(0.01))
    step = _round_robin(runs, args.repeats, args.steps_per_call)

    rows = []
    for name in problems:
        sgd = step[(name, "sgd")]
        for K in step_Ks[name]:
            fw = step[(name, K)]
            rows.append(
                {
                    "metric": f"(a) {name} step FW K={K} / ({K} x SGD)",
                    "ratio": fw / (K * sgd),
                    "detail": f"{fw * 1e3:.2f} ms vs {K} x {sgd * 1e3:.2f} ms",
                    "target": TARGETS["step"],
                }
            )

    def compile_and_memory(K: int) -> tuple[float, int]:
        times, temp = [], 0
        for _ in range(args.compile_repeats):
            compiled, seconds = compiled_steps(problems["RNN"], _fw_tx(K))  # fresh closure
            times.append(seconds)
            temp = compiled.memory_analysis().temp_size_in_bytes
        return statistics.median(times), temp

    (t2, m2), (t64, m64) = compile_and_memory(2), compile_and_memory(64)
    rows.append(
        {
            "metric": "(b) compile time K=64 / K=2",
            "ratio": t64 / t2,
            "detail": f"{t64:.2f} s vs {t2:.2f} s",
            "target": TARGETS["compile"],
        }
    )
    rows.append(
        {
            "metric": "(c) XLA temp memory K=64 / K=2",
            "ratio": m64 / m2,
            "detail": f"{m64 / 2**20:.2f} MiB vs {m2 / 2**20:.2f} MiB",
            "target": TARGETS["memory"],
        }
    )
    # The optimizer's own cost: an FW step less its 5 gradient evaluations (5 SGD steps),
    # which themselves cost more with more tensors.
    few, many = (step[("tensors", c)] - 5 * step[("tensors sgd", c)] for c in leaf_counts)
    rows.append(
        {
            "metric": f"(d) FW K=5 own cost, {leaf_counts[1]} tensors / 1",
            "ratio": max(many, 1e-9) / max(few, 1e-9),
            "detail": f"{many * 1e6:.0f} us vs {few * 1e6:.0f} us per step beyond 5 gradients, "
            f"{leaf_counts[1] * 512} parameters",
            "target": TARGETS["tensors"],
        }
    )
    print_fn(
        f"frank_wolfe overheads, adding task: RNN T={args.length} batch {args.batch} hidden "
        f"{args.hidden}; GRU T={args.gru_length} batch {args.gru_batch} hidden "
        f"{args.gru_hidden}; {args.steps_per_call} steps per jitted call, median of {args.repeats} "
        f"round-robin rounds; load average {os.getloadavg()[0]:.1f}. "
        f"Machine: {describe(machine())}"
    )
    print_fn(f"{'metric':44s} {'ratio':>7s} {'target':>7s}  ok   detail")
    for row in rows:
        ok = "yes" if row["ratio"] <= row["target"] else "NO"
        print_fn(
            f"{row['metric']:44s} {row['ratio']:7.3f} {row['target']:7.2f}  {ok:4s} {row['detail']}"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fw-optax performance benchmarks")
    parser.add_argument("--suite", choices=["fw", "models", "all"], default="all")
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--gru-length", type=int, default=150)
    parser.add_argument("--gru-batch", type=int, default=32)
    parser.add_argument("--gru-hidden", type=int, default=96)
    parser.add_argument("--many-tensors", type=int, default=64, help="tensors in (d)")
    parser.add_argument(
        "--steps-per-call",
        dest="steps_per_call",
        type=int,
        default=20,
        help="optimizer steps per jitted call",
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.suite in ("fw", "all"):
        fw_benchmarks(args)
    if args.suite in ("models", "all"):
        from benchmarks.perf import perf_models

        perf_models.main([])


if __name__ == "__main__":
    main()
