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
STEP_KS = {"RNN": (1, 5, 10), "GRU": (5,)}
"""(a)'s Ks per model."""


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


def _compiled_steps(problem: tuple, tx: optax.GradientTransformation, keys: jax.Array):
    """``problem``'s steps under ``tx`` compiled for ``keys`` (one step per key), and the
    seconds the compilation took."""
    params, loss_fn, make_batch = problem
    run = make_steps_fn(loss_fn, tx, make_batch)
    t0 = time.perf_counter()
    compiled = run.lower(params, tx.init(params), keys).compile()
    return compiled, time.perf_counter() - t0


def _prepared(problem: tuple, tx: optax.GradientTransformation, keys: jax.Array) -> Callable:
    """A zero-argument call of ``problem``'s compiled steps from its first weights, warmed up."""
    compiled, _ = _compiled_steps(problem, tx, keys)
    params, state = problem[0], tx.init(problem[0])
    jax.block_until_ready(compiled(params, state, keys))  # warm-up
    return functools.partial(compiled, params, state, keys)


def _step_times(args: argparse.Namespace, problems: dict[str, tuple], keys: jax.Array) -> dict:
    """Seconds per step of (a)'s SGD and FW runs and of (d)'s tensor counts, in one round-robin."""
    runs = {}
    for name, problem in problems.items():
        runs[(name, "sgd")] = _prepared(problem, optax.sgd(0.01), keys)
        for K in STEP_KS[name]:
            runs[(name, K)] = _prepared(problem, _fw_tx(K), keys)
    # (d): the same number of parameters as 1 tensor and as many; the loss costs ~nothing.
    for count in (1, args.many_tensors):
        params, loss_fn = _many_tensors(count, args.many_tensors * 512)
        problem = (params, loss_fn, lambda key: None)
        runs[("tensors", count)] = _prepared(problem, _fw_tx(5), keys)
        runs[("tensors sgd", count)] = _prepared(problem, optax.sgd(0.01), keys)
    return _round_robin(runs, args.repeats, args.steps_per_call)


def _row(metric: str, ratio: float, detail: str, target: str) -> dict:
    return {"metric": metric, "ratio": ratio, "detail": detail, "target": TARGETS[target]}


def _step_rows(step: dict) -> list[dict]:
    """(a): each FW step against K SGD steps."""
    rows = []
    for name, Ks in STEP_KS.items():
        sgd = step[(name, "sgd")]
        for K in Ks:
            fw = step[(name, K)]
            detail = f"{fw * 1e3:.2f} ms vs {K} x {sgd * 1e3:.2f} ms"
            rows.append(
                _row(f"(a) {name} step FW K={K} / ({K} x SGD)", fw / (K * sgd), detail, "step")
            )
    return rows


def _compile_and_memory(args: argparse.Namespace, problem: tuple, K: int, keys: jax.Array):
    """The median compile seconds of FW K's steps and their XLA temporary bytes."""
    times, temp = [], 0
    for _ in range(args.compile_repeats):
        compiled, seconds = _compiled_steps(problem, _fw_tx(K), keys)  # fresh closure
        times.append(seconds)
        temp = compiled.memory_analysis().temp_size_in_bytes
    return statistics.median(times), temp


def _compile_rows(args: argparse.Namespace, problem: tuple, keys: jax.Array) -> list[dict]:
    """(b) and (c): compile time and temporary memory, K=64 against K=2."""
    t2, m2 = _compile_and_memory(args, problem, 2, keys)
    t64, m64 = _compile_and_memory(args, problem, 64, keys)
    return [
        _row("(b) compile time K=64 / K=2", t64 / t2, f"{t64:.2f} s vs {t2:.2f} s", "compile"),
        _row(
            "(c) XLA temp memory K=64 / K=2",
            m64 / m2,
            f"{m64 / 2**20:.2f} MiB vs {m2 / 2**20:.2f} MiB",
            "memory",
        ),
    ]


def _tensors_row(step: dict, count: int) -> dict:
    """(d): the optimizer's own cost with ``count`` tensors against 1."""
    # The optimizer's own cost: an FW step less its 5 gradient evaluations (5 SGD steps),
    # which themselves cost more with more tensors.
    few, many = (step[("tensors", c)] - 5 * step[("tensors sgd", c)] for c in (1, count))
    return _row(
        f"(d) FW K=5 own cost, {count} tensors / 1",
        max(many, 1e-9) / max(few, 1e-9),
        f"{many * 1e6:.0f} us vs {few * 1e6:.0f} us per step beyond 5 gradients, "
        f"{count * 512} parameters",
        "tensors",
    )


def _print_table(
    args: argparse.Namespace, rows: list[dict], print_fn: Callable[[str], None]
) -> None:
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


def fw_benchmarks(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> list[dict]:
    """Measures (a), (b), (c) and (d) and prints one table; returns its rows."""
    keys = jax.random.split(jax.random.key(1), args.steps_per_call)  # one jitted call
    problems = {
        "RNN": _adding_problem(args.length, args.batch, args.hidden),
        "GRU": _adding_problem(args.gru_length, args.gru_batch, args.gru_hidden, cell="gru"),
    }
    step = _step_times(args, problems, keys)
    rows = _step_rows(step)
    rows += _compile_rows(args, problems["RNN"], keys)
    rows.append(_tensors_row(step, args.many_tensors))
    _print_table(args, rows, print_fn)
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
