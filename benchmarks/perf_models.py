"""Train-step time of the recurrences: Flax cell (``nn.RNN``) vs hoisted input projection.

For each cell and sequence length, one jitted SGD step on a regression loss (the adding
task's shapes: 2 input features, batch 50, hidden 128) is timed after a warm-up call, with
``block_until_ready``, as the median of several repeats. Both implementations share the
same parameters and compute the same function (``tests/test_scan_rnn.py``).

Run: ``python -m benchmarks.perf_models`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from models import RNNModel, default_impl, default_unroll, mse_loss

CELLS: tuple[str, ...] = ("simple", "lstm", "indrnn")
SEQ_LENS: tuple[int, ...] = (100, 400)


def time_train_step(
    cell: str,
    seq_len: int,
    impl: str,
    *,
    batch_size: int = 50,
    hidden_size: int = 128,
    input_size: int = 2,
    unroll: int | None = None,
    repeats: int = 10,
) -> float:
    """Median seconds of one jitted ``value_and_grad`` + SGD step (after compiling)."""
    model = RNNModel(hidden_size, 1, cell=cell, impl=impl, unroll=unroll)
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch_size, seq_len, input_size))
    y = jax.random.normal(ky, (batch_size, 1))
    params = model.init(kp, x)["params"]
    tx = optax.sgd(1e-3)
    opt_state = tx.init(params)

    def loss_fn(params, x, y):
        return mse_loss(model.apply({"params": params}, x), y)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jax.block_until_ready(step(params, opt_state, x, y))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(params, opt_state, x, y))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_model_benchmarks(
    print_fn: Callable[[str], None] = print,
    *,
    cells: Sequence[str] = CELLS,
    seq_lens: Sequence[int] = SEQ_LENS,
    unroll: int | None = None,
    repeats: int = 10,
) -> list[dict]:
    """Time every (cell, T) pair with both implementations and print one table.

    Returns one dict per pair: ``cell``, ``seq_len``, ``flax_ms``, ``hoisted_ms``,
    ``speedup`` (flax / hoisted), ``unroll`` and ``device``.
    """
    device = jax.devices()[0].device_kind
    unroll = default_unroll() if unroll is None else unroll
    rows = []
    print_fn(
        f"train step, batch 50, hidden 128, unroll {unroll}, device {device} "
        f"(impl='auto' picks {default_impl()!r} here)"
    )
    print_fn(f"{'cell':<8}{'T':>6}{'flax ms':>11}{'hoisted ms':>13}{'speedup':>10}")
    for cell in cells:
        for seq_len in seq_lens:
            flax_s, hoisted_s = (
                time_train_step(cell, seq_len, impl, unroll=unroll, repeats=repeats)
                for impl in ("flax", "hoisted")
            )
            row = {
                "cell": cell,
                "seq_len": seq_len,
                "flax_ms": 1e3 * flax_s,
                "hoisted_ms": 1e3 * hoisted_s,
                "speedup": flax_s / hoisted_s,
                "unroll": unroll,
                "device": device,
            }
            rows.append(row)
            print_fn(
                f"{cell:<8}{seq_len:>6}{row['flax_ms']:>11.2f}{row['hoisted_ms']:>13.2f}"
                f"{row['speedup']:>9.2f}x"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unroll", type=int, default=None, help="default: default_unroll()")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    jnp.zeros(()).block_until_ready()
    run_model_benchmarks(unroll=args.unroll, repeats=args.repeats)


if __name__ == "__main__":
    main()
