"""Performance benchmarks: ratios measured side by side in one run, on one machine.

    python -m benchmarks.perf                 # every suite
    python -m benchmarks.perf --suite fw      # the optimizer's own overheads only

Suite ``fw`` (the adding-task RNN: T=100, batch 50, hidden 128):

(a) step time of ``chain(frank_wolfe(K), sgd)`` / (K x step time of plain SGD), K in {1, 5, 10}:
    what the Frank-Wolfe machinery costs beyond its K gradient evaluations (target <= 1.05);
(b) compile time for K=64 / K=2: the inner loop is one scanned step whatever K is
    (target <= 1.2);
(c) XLA temporary memory for K=64 / K=2 from the compiled program's memory analysis
    (target <= 1.1).

Suite ``models``: train-step time of the recurrences (``benchmarks.perf_models``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import jax
import optax

import fw_optax
from benchmarks.data.adding import adding_batch
from benchmarks.machine import describe, machine
from benchmarks.train import make_chunk_fn
from models import RNNModel, mse_loss

TARGETS = {"step": 1.05, "compile": 1.2, "memory": 1.1}


def _adding_problem(length: int, batch: int, hidden: int):
    model = RNNModel(hidden_size=hidden, output_size=1, cell="simple")
    make_batch = functools.partial(adding_batch, batch_size=batch, length=length)
    params = model.init(jax.random.key(0), make_batch(jax.random.key(0))[0])

    def loss_fn(params, batch):
        x, y = batch
        return mse_loss(model.apply(params, x), y)

    return params, loss_fn, make_batch


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def _fw_tx(K: int) -> optax.GradientTransformation:
    return optax.chain(fw_optax.frank_wolfe(K, 1.0, 2), optax.sgd(0.01))


def fw_benchmarks(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> list[dict]:
    """Measures (a), (b) and (c) and prints one table; returns its rows."""
    params, loss_fn, make_batch = _adding_problem(args.length, args.batch, args.hidden)
    keys = jax.random.split(jax.random.key(1), args.chunk)  # one jitted call = `chunk` steps

    def compiled_chunk(tx):
        run = make_chunk_fn(loss_fn, tx, make_batch)
        t0 = time.perf_counter()
        compiled = run.lower(params, tx.init(params), keys).compile()
        return compiled, time.perf_counter() - t0

    # Every variant is timed once per round, round after round: a slow spell of a shared
    # machine then hits all of them alike instead of whichever happened to run during it.
    variants = {"sgd": optax.sgd(0.01)} | {K: _fw_tx(K) for K in (1, 5, 10)}
    runs = {}
    for name, tx in variants.items():
        compiled, _ = compiled_chunk(tx)
        state = tx.init(params)
        jax.block_until_ready(compiled(params, state, keys))  # warm-up
        runs[name] = functools.partial(compiled, params, state, keys)
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            times[name].append(_seconds(run) / args.chunk)
    step = {name: statistics.median(t) for name, t in times.items()}

    rows = []
    sgd = step["sgd"]
    for K in (1, 5, 10):
        fw = step[K]
        rows.append(
            {
                "metric": f"(a) step time FW K={K} / ({K} x SGD)",
                "ratio": fw / (K * sgd),
                "detail": f"{fw * 1e3:.2f} ms vs {K} x {sgd * 1e3:.2f} ms",
                "target": TARGETS["step"],
            }
        )

    def compile_and_memory(K: int) -> tuple[float, int]:
        times, temp = [], 0
        for _ in range(args.compile_repeats):
            compiled, seconds = compiled_chunk(_fw_tx(K))  # a fresh closure: no cache hit
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
    print_fn(
        f"frank_wolfe overheads, adding RNN T={args.length} batch {args.batch} hidden "
        f"{args.hidden}, {args.chunk} steps per jitted call, median of {args.repeats}. "
        f"Machine: {describe(machine())}"
    )
    print_fn(f"{'metric':40s} {'ratio':>7s} {'target':>7s}  ok   detail")
    for row in rows:
        ok = "yes" if row["ratio"] <= row["target"] else "NO"
        print_fn(
            f"{row['metric']:40s} {row['ratio']:7.3f} {row['target']:7.2f}  {ok:4s} {row['detail']}"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fw-optax performance benchmarks")
    parser.add_argument("--suite", choices=["fw", "models", "all"], default="all")
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=20, help="optimizer steps per jitted call")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.suite in ("fw", "all"):
        fw_benchmarks(args)
    if args.suite in ("models", "all"):
        from benchmarks.perf_models import run_model_benchmarks

        run_model_benchmarks()


if __name__ == "__main__":
    main()
