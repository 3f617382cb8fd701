"""How fast the recurrences run: FLOP rate against the matmul peak, per-cell gradient times,
the compiled loops' memory traffic, and a deep-IndRNN HAR-2 training epoch.

Every section times its variants round-robin (one call of each in turn, repeated), so a
busy machine slows them alike; times are medians. Implementations (``RNNModel.impl``):
``flax`` (``nn.RNN`` over the Flax cell, as landed), ``hoisted`` (input projection of all
steps as one matmul, autodiff through the scan) and ``fused`` (the same projection, and the
custom backward of ``models.fused``: a loop that carries only the state cotangent, weight
gradients as one matmul after it). All three compute the same function with the same
parameters (``tests/models/test_fused.py``, ``tests/models/test_models.py``).

1. Peak: a jitted float32 1024^3 matmul, GFLOP/s, timed in the same rounds as section 2.
2. The vanilla-RNN gradient (``models.RNNModel``, hidden 128, batch 50, 2 inputs, T = 100
   and 400). FLOPs counted as REFERENCE.md does: 3 x 2·B·H² per step for the recurrent
   products (forward h W_h, backward dz W_hᵀ, and the weight gradient hᵀ dz).
3. Every cell's gradient (vanilla, LSTM, GRU, IndRNN) with each implementation.
4. Anatomy of the compiled gradient: how many [T, ...] stacked arrays each scan writes
   per step, read from the optimized HLO, next to microseconds per step at several T.
5. Deep IndRNN of Table 2 on a HAR-2 training epoch: the registry's ``indrnn`` row (6 x 128,
   batch norm, dropout 0.1, Adam with weight decay, recurrent weights clipped) trained by
   the loop's step on HAR-2's loader fed generated data of the real shapes (7415 windows of
   128 x 9, batch 64), steps interleaved: as it landed (``LandedDeepIndRNN``: ``nn.RNN``,
   ``nn.BatchNorm``, ``nn.Dropout``, one device) against ``RNNModel`` as the runner trains
   it now, on one device and data-parallel on all of them (one per core).
6. Where that training step's time goes, landed and now, on one device: the same step
   without dropout, and without dropout and batch norm (the configuration's ``dropout=0``
   and ``layer_batch_norm=False``).
7. The fused vanilla-RNN gradient with scan unroll 1, 2, 4 and 8.

Run: ``python -m benchmarks.perf.perf_models --out results/cpu/perf_models.txt`` (about 5
minutes on 2 quiet CPU cores); ``--quick`` runs every section at toy size (the smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from benchmarks.machine import describe, machine
from benchmarks.perf import timing
from benchmarks.registry.config import Config
from benchmarks.registry.configs import get_config
from benchmarks.registry.methods import build_optimizer
from benchmarks.registry.tasks import (
    TaskData,
    adding_problem,
    build_model,
    init_variables,
    load_task_data,
    make_objective,
)
from benchmarks.run import make_plan
from benchmarks.training import parallel
from benchmarks.training.data import Dataset
from benchmarks.training.placement import Placement
from benchmarks.training.step import make_step
from models import default_impl, default_unroll, indrnn_recurrent_bound
from models.cells import IndRNNCell

IMPLS: tuple[str, ...] = ("flax", "hoisted", "fused")
# The persistent kernels: timed where Pallas compiles them (a GPU); elsewhere they run through
# Pallas' interpreter, which ``--quick`` exercises but nothing times.
PALLAS = "pallas"
CELLS: tuple[str, ...] = ("simple", "lstm", "gru", "indrnn")
SECTIONS: tuple[str, ...] = (
    "precision",
    "launch",
    "flop_rate",
    "cells",
    "anatomy",
    "indrnn_epoch",
    "indrnn_breakdown",
    "unroll",
)


def round_robin(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each zero-argument function, called in turn ``repeats`` times.

    Each function is called once first (compilation, warm-up) and not timed.
    """
    return timing.median_wall(timing.rounds(fns, repeats, warm_up=True))


def matmul_peak(size: int = 1024) -> tuple[Callable[[], jax.Array], float]:
    """A jitted float32 ``size^3`` matmul and its FLOP count ``2 size^3``."""
    a = jax.random.normal(jax.random.key(0), (size, size))
    matmul = jax.jit(lambda m: m @ m)
    return lambda: matmul(a), 2.0 * size**3


def rnn_gradient(
    cell: str,
    impl: str,
    seq_len: int,
    *,
    batch: int = 50,
    hidden: int = 128,
    unroll: int | None = None,
) -> functools.partial:
    """The compiled gradient of the adding task's loss (``benchmarks.registry.tasks``: one
    ``RNNModel`` layer, MSE) w.r.t. its parameters, on one batch, bound to them: call it to
    run, read its ``.func.as_text()`` for the optimized HLO."""
    problem = adding_problem(
        length=seq_len, batch_size=batch, hidden=hidden, cell=cell, impl=impl, unroll=unroll
    )
    if cell == "indrnn":  # the recurrence alone, as for every cell: no batch norm
        bare = problem.model.clone(layer_batch_norm=False, recurrent_bound=None)
        problem = dataclasses.replace(problem, model=bare)
    batch_xy = problem.make_batch(jax.random.key(0))
    params = problem.init(0)
    grad = jax.jit(jax.grad(lambda p: problem.loss(p, batch_xy)))
    return functools.partial(grad.lower(params).compile(), params)


def recurrent_flops(seq_len: int, batch: int, hidden: int) -> float:
    """3 x 2·B·H² per step: forward ``h W_h``, backward ``dz W_hᵀ``, weight gradient."""
    return 3.0 * 2.0 * batch * hidden**2 * seq_len


def flop_rate_table(args: argparse.Namespace, print_fn: Callable[[str], None]) -> list[dict]:
    """Sections 1-2: the peak and the vanilla-RNN gradient of every impl, in one round-robin."""
    peak_fn, peak_flops = matmul_peak(args.peak_size)
    fns: dict[str, Callable[[], Any]] = {"peak": peak_fn}
    for seq_len in args.lengths:
        for impl in args.impls:
            fns[f"{impl}/{seq_len}"] = rnn_gradient(
                "simple", impl, seq_len, batch=args.batch, hidden=args.hidden
            )
    times = round_robin(fns, args.repeats)
    peak = peak_flops / times["peak"]
    print_fn(
        f"\n[1] float32 matmul peak ({args.peak_size}^3, jit): {peak / 1e9:.1f} GFLOP/s "
        f"({1e3 * times['peak']:.2f} ms)"
    )
    print_fn(
        f"[2] vanilla-RNN gradient (RNNModel, hidden {args.hidden}, batch {args.batch}, 2 "
        "inputs); FLOPs = 3 x 2*B*H^2 per step (h W_h, dz W_h^T, h^T dz), as REFERENCE.md"
    )
    print_fn(f"{'T':>5} {'impl':<8}{'GFLOP':>8}{'ms':>9}{'GFLOP/s':>9}{'of peak':>9}")
    rows = []
    for seq_len in args.lengths:
        flops = recurrent_flops(seq_len, args.batch, args.hidden)
        for impl in args.impls:
            seconds = times[f"{impl}/{seq_len}"]
            row = {
                "seq_len": seq_len,
                "impl": impl,
                "flops": flops,
                "ms": 1e3 * seconds,
                "gflops_per_s": flops / seconds / 1e9,
                "fraction_of_peak": flops / seconds / peak,
                "peak_gflops_per_s": peak / 1e9,
            }
            rows.append(row)
            print_fn(
                f"{seq_len:>5} {impl:<8}{flops / 1e9:>8.3f}{row['ms']:>9.2f}"
                f"{row['gflops_per_s']:>9.1f}{100 * row['fraction_of_peak']:>8.1f}%"
            )
    return rows


def _compiled(
    fns: dict[Any, Callable[[], Any]], print_fn: Callable[[str], None]
) -> dict[Any, Callable[[], Any]]:
    """The entries of ``{key: () -> compiled gradient}`` that compile; each that does not
    is reported in one line and left out, so one kernel the compiler rejects costs one cell
    of a table, not the section."""
    compiled = {}
    for key, make in fns.items():
        try:
            compiled[key] = make()
        except Exception as error:  # a lowering or compiler error, reported and skipped
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print_fn(f"  {key}: did not compile ({type(error).__name__}: {first[:200]})")
    return compiled


def cell_table(args: argparse.Namespace, print_fn: Callable[[str], None]) -> list[dict]:
    """Section 3: each cell's gradient time with each impl that runs it, and flax / fused."""
    fns = _compiled(
        {
            f"{cell}/{seq_len}/{impl}": functools.partial(
                rnn_gradient, cell, impl, seq_len, batch=args.batch, hidden=args.hidden
            )
            for cell in args.cells
            for seq_len in args.lengths
            for impl in args.impls
        },
        print_fn,
    )
    times = round_robin(fns, args.repeats)
    print_fn(f"\n[3] gradient of each cell, ms (batch {args.batch}, hidden {args.hidden})")
    print_fn(
        f"{'cell':<8}{'T':>5}"
        + "".join(f"{i:>10}" for i in args.impls)
        + f"{'flax/fused':>12}{'fastest':>9}"
    )
    rows = []
    for cell in args.cells:
        for seq_len in args.lengths:
            ms = {
                impl: 1e3 * times[f"{cell}/{seq_len}/{impl}"]
                for impl in args.impls
                if f"{cell}/{seq_len}/{impl}" in times
            }
            fastest = min(ms, key=ms.__getitem__)
            rows.append(
                {"cell": cell, "seq_len": seq_len, "fastest": fastest}
                | {f"{i}_ms": t for i, t in ms.items()}
            )
            print_fn(
                f"{cell:<8}{seq_len:>5}"
                + "".join(f"{ms[i]:>10.2f}" if i in ms else f"{'-':>10}" for i in args.impls)
                + f"{ms['flax'] / ms['fused']:>11.2f}x{fastest:>9}"
            )
    return rows


def measured_table(rows: dict[str, Any], source: str) -> str:
    """``models.rnn.MEASURED``'s entry for this backend, from sections 3 and 7, as Python."""
    ms: dict[str, dict[int, dict[str, float]]] = {}
    for row in rows["cells"]:
        times = {k[:-3]: round(v, 3) for k, v in row.items() if k.endswith("_ms")}
        ms.setdefault(row["cell"], {})[row["seq_len"]] = times
    unroll = min(
        {u for r in rows["unroll"] for u in r["ms_by_unroll"]},
        key=lambda u: sum(r["ms_by_unroll"][u] for r in rows["unroll"]),
    )
    cells = "".join(
        f"            {cell!r}: {{\n"
        + "".join(f"                {t}: {times!r},\n" for t, times in by_length.items())
        + "            },\n"
        for cell, by_length in ms.items()
    )
    return (
        f"\n[table] models.rnn.MEASURED[{jax.default_backend()!r}]:\n"
        f"    Recurrence(\n        {{\n{cells}        }},\n        {unroll},\n"
        f"        {source!r},\n    )"
    )


def launch_table(args: argparse.Namespace, print_fn: Callable[[str], None]) -> list[dict]:
    """Section 0b: the Pallas vanilla-RNN and IndRNN gradients under each launch setting
    (batch rows and warps per program), microseconds per time step."""
    from models import pallas

    def make(cell, seq_len, block_rows, num_warps):
        with pallas.launch(block_rows=block_rows, num_warps=num_warps):
            return rnn_gradient(cell, PALLAS, seq_len, batch=args.batch, hidden=args.hidden)

    keys = [
        (cell, seq_len, block_rows, num_warps)
        for block_rows in args.launch_rows
        for num_warps in args.launch_warps
        for cell in args.launch_cells
        for seq_len in args.lengths
    ]
    times = round_robin(
        _compiled({k: functools.partial(make, *k) for k in keys}, print_fn), args.repeats
    )
    print_fn(
        f"\n[0b] Pallas gradient, us per time step, by launch (batch {args.batch}, hidden "
        f"{args.hidden}); the kernels' settings now: {pallas.LAUNCH}"
    )
    columns = [(cell, t) for cell in args.launch_cells for t in args.lengths]
    print_fn(f"{'rows':>5}{'warps':>6}" + "".join(f"{f'{c} T={t}':>16}" for c, t in columns))
    rows = []
    for block_rows in args.launch_rows:
        for num_warps in args.launch_warps:
            us = {
                (c, t): 1e6 * times.get((c, t, block_rows, num_warps), math.nan) / t
                for c, t in columns
            }
            rows.append({"block_rows": block_rows, "num_warps": num_warps, "us_per_step": us})
            print_fn(f"{block_rows:>5}{num_warps:>6}" + "".join(f"{us[k]:>16.2f}" for k in columns))
    return rows


def precision_table(args: argparse.Namespace, print_fn: Callable[[str], None]) -> list[dict]:
    """Section 0: what a float32 product gives under each ``jax.default_matmul_precision``,
    XLA's matmul and the Pallas forward kernel, against float64 on the host."""
    from models import pallas

    key_a, key_b, key_p = jax.random.split(jax.random.key(5), 3)
    a = jax.random.normal(key_a, (args.batch, args.hidden))
    w = jax.random.normal(key_b, (args.hidden, args.hidden)) / args.hidden**0.5
    p = jax.random.normal(key_p, (args.lengths[0], args.batch, args.hidden))
    h0 = jnp.zeros((args.batch, args.hidden))
    a64, w64, p64 = (np.asarray(v, np.float64) for v in (a, w, p))
    hs64, h = [], np.zeros((args.batch, args.hidden))
    for p_t in p64:
        h = np.tanh(p_t + h @ w64)
        hs64.append(h)
    hs64 = np.stack(hs64)

    def relative(x, ref):
        return float(np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref))

    print_fn(
        f"\n[0] float32 precision: relative error against float64 of a [{args.batch}, "
        f"{args.hidden}] x [{args.hidden}, {args.hidden}] matmul (XLA) and of the Pallas "
        f"vanilla-RNN forward (T={args.lengths[0]})"
    )
    rows = []
    for setting in (None, "tensorfloat32", "float32"):
        with jax.default_matmul_precision(setting):
            xla = relative(jax.jit(jnp.matmul)(a, w), a64 @ w64)
            kernel = relative(
                jax.jit(pallas.elman_recurrence, static_argnums=0)("tanh", w, p, h0), hs64
            )
        name = setting or "default"
        rows.append({"setting": name, "xla_matmul": xla, "pallas_forward": kernel})
        print_fn(f"  {name:<14} XLA matmul {xla:.1e}   Pallas forward {kernel:.1e}")
    return rows


def stacked_writes_per_step(hlo_text: str, seq_len: int) -> list[int]:
    """Per ``while`` loop of an optimized HLO module: how many ``[seq_len, ...]`` arrays its
    body updates in place each iteration (the scan's stacked outputs and residuals)."""
    bodies: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            current = bodies.setdefault(header.group(1), [])
        elif current is not None and line.startswith("  "):
            current.append(line)
    stacked = re.compile(rf"= \w+\[{seq_len},[\d,]*\]\S* (dynamic-update-slice|fusion)\(")
    counts = []
    for line in hlo_text.splitlines():
        loop = re.search(r" while\(.*body=%([\w.\-]+)", line)
        if loop:
            body = bodies.get(loop.group(1), [])
            counts.append(sum(bool(stacked.search(op)) for op in body))
    return counts


def anatomy_table(args: argparse.Namespace, print_fn: Callable[[str], None]) -> list[dict]:
    """Section 4: microseconds per step against T, and the stacked arrays each loop writes."""
    fns = {
        f"{impl}/{seq_len}": rnn_gradient(
            "simple", impl, seq_len, batch=args.batch, hidden=args.hidden
        )
        for seq_len in args.anatomy_lengths
        for impl in args.impls
    }
    times = round_robin(fns, args.repeats)
    print_fn(
        "\n[4] anatomy of the vanilla-RNN gradient: us per time step, and the [T, B, H] arrays "
        "each scan writes per step (forward loop, backward loop; from the compiled HLO)"
    )
    print_fn(
        f"{'impl':<8}"
        + "".join(f"{f'T={t}':>9}" for t in args.anatomy_lengths)
        + "   stacked writes/step"
    )
    rows = []
    # A length no other axis has, so the HLO's [T, ...] shapes are the stacked arrays.
    seq_len = next(t for t in args.anatomy_lengths if t not in (args.batch, args.hidden))
    for impl in args.impls:
        hlo = fns[f"{impl}/{seq_len}"].func.as_text()
        writes = stacked_writes_per_step(hlo, seq_len)
        us = {t: 1e6 * times[f"{impl}/{t}"] / t for t in args.anatomy_lengths}
        rows.append({"impl": impl, "us_per_step": us, "stacked_writes_per_loop": writes})
        print_fn(
            f"{impl:<8}" + "".join(f"{us[t]:>9.1f}" for t in args.anatomy_lengths) + f"   {writes}"
        )
    return rows


def unroll_table(args: argparse.Namespace, print_fn: Callable[[str], None]) -> list[dict]:
    """Section 7: the fused vanilla-RNN gradient with several scan unroll factors."""
    fns = {
        (seq_len, unroll): rnn_gradient(
            "simple", "fused", seq_len, batch=args.batch, hidden=args.hidden, unroll=unroll
        )
        for seq_len in args.lengths
        for unroll in args.unrolls
    }
    times = round_robin(fns, args.repeats)
    print_fn("\n[7] fused vanilla-RNN gradient, ms, by scan unroll (forward and backward loops)")
    print_fn(f"{'T':>5}" + "".join(f"{f'unroll {u}':>11}" for u in args.unrolls))
    rows = []
    for seq_len in args.lengths:
        ms = {u: 1e3 * times[(seq_len, u)] for u in args.unrolls}
        rows.append({"seq_len": seq_len, "ms_by_unroll": ms})
        print_fn(f"{seq_len:>5}" + "".join(f"{ms[u]:>11.2f}" for u in args.unrolls))
    return rows


@functools.cache
def _har2_like(num: int, seq_len: int, features: int = 9) -> Dataset:
    """Generated data of HAR-2's shapes (standardized windows, binary labels) as a dataset
    the registry's HAR-2 loader takes in place of the real one; its test set is the first
    windows (nothing here evaluates)."""
    kx, ky = jax.random.split(jax.random.key(42))
    x = np.asarray(jax.random.normal(kx, (num, seq_len, features)))
    y = np.asarray(jax.random.bernoulli(ky, 0.5, (num,)), np.int32)
    card = {"name": "har2-shapes", "source": "generated (benchmarks/perf/perf_models.py)"}
    return Dataset("har2-shapes", x, y, x[:2], y[:2], 2, card)


class LandedDeepIndRNN(nn.Module):
    """The deep IndRNN as it landed, the plain Flax way: ``nn.RNN`` over ``IndRNNCell``,
    ``nn.BatchNorm`` and ``nn.Dropout`` after each layer, a dense head on ``h_T``.

    The same parameters and, at evaluation, the same function as
    ``RNNModel(cell="indrnn", layer_batch_norm=True, impl="flax")``
    (``tests/benchmarks/perf/test_perf.py``); in training its dropout masks come from
    ``nn.Dropout`` (``jax.random.bernoulli``).
    Kept here as the baseline sections 5 and 6 measure against.
    """

    hidden_size: int
    depth: int
    recurrent_bound: float
    dropout_rate: float = 0.1
    layer_batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        xs = jnp.swapaxes(x, 0, 1)
        for layer in range(self.depth):
            cell = IndRNNCell(self.hidden_size, recurrent_bound=self.recurrent_bound, parent=None)
            xs = nn.RNN(cell, time_major=True, name=f"rnn_{layer}")(xs)
            if self.layer_batch_norm:
                xs = nn.BatchNorm(
                    use_running_average=not train, momentum=0.9, epsilon=1e-5, name=f"bn_{layer}"
                )(xs)
            if self.dropout_rate > 0:
                xs = nn.Dropout(self.dropout_rate, deterministic=not train)(xs)
        return nn.Dense(1, name="head")(xs[-1])


def har2_run(args: argparse.Namespace, **overrides: Any) -> tuple[Config, TaskData]:
    """The registry's deep IndRNN on HAR-2 (Table 2's ``indrnn`` row, ``paper`` preset) at
    the sections' sizes, ``overrides`` replacing any field, and its data: HAR-2's loader on
    generated windows of the real shapes."""
    sizes = {"depth": args.har_depth, "hidden": args.har_hidden, "batch_size": args.har_batch}
    config = get_config("har2", "indrnn", "paper", **sizes, **overrides)
    return config, load_task_data(config, _har2_like(args.har_windows, args.har_length))


def _indrnn_model(config: Config, data: TaskData, variant: str) -> nn.Module:
    bound = indrnn_recurrent_bound(config.indrnn_gamma, data.sequence_length)
    if variant == "landed":
        return LandedDeepIndRNN(
            config.hidden, config.depth, bound, config.dropout, config.layer_batch_norm
        )
    impl = "auto" if variant == "now" else variant
    return build_model(config, data).clone(impl=impl)


def deep_indrnn_model(args: argparse.Namespace, variant: str, **overrides: Any) -> nn.Module:
    """The deep IndRNN of :func:`har2_run`'s configuration: ``"landed"``:
    ``LandedDeepIndRNN``; ``"now"``: the registry's model (an ``RNNModel`` with
    ``impl="auto"``), what the runner trains; any other name is an ``RNNModel`` impl run in
    that model (``"pallas"``). ``overrides`` are configuration fields (``dropout``,
    ``layer_batch_norm``)."""
    return _indrnn_model(*har2_run(args, **overrides), variant)


def indrnn_train_step(
    args: argparse.Namespace, variant: str, mesh: Mesh | None = None, **overrides: Any
) -> tuple[Callable[[Any, int], Any], Any]:
    """The jitted training step ``state, i -> state`` on batch ``i`` of :func:`har2_run`'s
    configuration, with the model of ``variant`` (:func:`deep_indrnn_model`), and its first
    state: the registry's objective (the head's loss, dropout, the recurrent clip) and
    optimizer (Adam with weight decay) in the loop's step (``benchmarks.training.step``).
    With ``mesh``, data-parallel as the loop places it (``benchmarks.training.placement``:
    each device its shard of the batch and its own dropout masks, gradients averaged)."""
    config, data = har2_run(args, **overrides)
    model = _indrnn_model(config, data, variant)
    placement = Placement(runs=1, vmapped=False, mesh=mesh, generated=False)
    objective, _ = placement.split(
        make_objective(config, model, data), data.stream, local_gradients=False
    )
    tx = build_optimizer(config, make_plan(config, data).updates_per_epoch)
    update = make_step(objective, tx)
    run = placement.compile(lambda state, inputs: jax.lax.scan(update, state, inputs))
    x_all, y_all = placement.place(tuple(jnp.asarray(a) for a in data.stream.arrays))
    size = config.batch_size

    @jax.jit
    def step(state, i):
        x = jax.lax.dynamic_slice_in_dim(x_all, i * size, size)
        y = jax.lax.dynamic_slice_in_dim(y_all, i * size, size)
        return run(state, (i[None], (x[None, None], y[None, None])))[0]

    params, model_state = init_variables(config, model, data)
    return step, placement.place(placement.init_state(tx, params, model_state, (config.seed,)))


def _epoch_variants(args: argparse.Namespace) -> dict[str, tuple[str, Mesh | None]]:
    """Section 5's rows: name -> (model variant, mesh or one device)."""
    variants = {"landed": ("landed", None), "now, 1 device": ("now", None)}
    if PALLAS in args.impls:
        variants["pallas, 1 device"] = (PALLAS, None)
    devices = jax.local_devices()
    if len(devices) > 1 and args.har_batch % len(devices) == 0:
        variants[f"now, {len(devices)} devices"] = ("now", parallel.data_mesh(devices))
    return variants


def _epoch_call(step: Callable[[Any, int], Any], state: Any) -> Callable[[], Any]:
    """``step`` as a zero-argument call that trains on the epoch's next batch each time,
    after one untimed step on batch 0 (compilation, warm-up)."""
    state = jax.block_until_ready(step(state, 0))
    batches = itertools.count()

    def call():
        nonlocal state
        state = step(state, next(batches))
        return state

    return call


def indrnn_epoch(args: argparse.Namespace, print_fn: Callable[[str], None]) -> dict:
    """Section 5: one HAR-2 epoch of the deep IndRNN, the variants' steps interleaved: as it
    landed (one device), as the runner trains it now on one device and on all of them."""
    steps = args.har_windows // args.har_batch
    calls = {
        name: _epoch_call(*indrnn_train_step(args, variant, mesh))
        for name, (variant, mesh) in _epoch_variants(args).items()
    }
    times = timing.rounds(calls, steps)
    seconds = {name: sum(t.wall for t in ts) for name, ts in times.items()}
    speedups = {name: seconds["landed"] / s for name, s in seconds.items() if name != "landed"}
    print_fn(
        f"\n[5] deep IndRNN ({args.har_depth} x {args.har_hidden}, batch norm, dropout 0.1), "
        f"HAR-2 epoch: {steps} steps of batch {args.har_batch}, {args.har_length} x 9 "
        "(generated data of the real shapes), Adam + clipping, steps interleaved. landed: "
        "nn.RNN(IndRNNCell) + nn.BatchNorm + nn.Dropout; now: RNNModel(impl='auto') with "
        "models.batch_norm and models.dropout, as the runner trains it"
    )
    print_fn("epoch seconds: " + ", ".join(f"{n} {s:.2f}" for n, s in seconds.items()))
    print_fn("landed / now: " + ", ".join(f"{n} {r:.2f}x" for n, r in speedups.items()))
    return {"steps": steps, "seconds": seconds, "speedup": speedups}


def indrnn_step_breakdown(args: argparse.Namespace, print_fn: Callable[[str], None]) -> dict:
    """Section 6: where a deep-IndRNN step's time goes, on one device: the step with and
    without dropout and batch norm, as landed and now, ``args.har_breakdown_steps`` steps
    round-robin."""
    settings = {
        "full": {},
        "no dropout": {"dropout": 0.0},
        "no dropout, no BN": {"dropout": 0.0, "layer_batch_norm": False},
    }
    variants = ("landed", "now")
    fns = {}
    for variant in variants:
        for name, overrides in settings.items():
            step, state = indrnn_train_step(args, variant, **overrides)
            fns[f"{variant}/{name}"] = functools.partial(step, state, 0)
    times = round_robin(fns, args.har_breakdown_steps)
    print_fn(
        f"\n[6] deep-IndRNN training step on one device, ms (median of {args.har_breakdown_steps})"
    )
    print_fn(f"{'':<20}{'landed':>9}{'now':>9}")
    rows = {}
    for name in settings:
        ms = {variant: 1e3 * times[f"{variant}/{name}"] for variant in variants}
        rows[name] = ms
        print_fn(f"{name:<20}{ms['landed']:>9.1f}{ms['now']:>9.1f}")
    return rows


def run(args: argparse.Namespace, print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """The chosen sections in order (all by default); returns their rows."""
    print_fn(f"Machine: {describe(machine())}")
    print_fn("Load average at start (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print_fn(
        "impl='auto' picks, on this backend at T="
        + "/".join(map(str, args.lengths))
        + ": "
        + ", ".join(
            f"{cell} " + "/".join(default_impl(cell, seq_len=t) for t in args.lengths)
            for cell in CELLS
        )
        + f"; unroll {default_unroll()}. Matmul precision: {args.precision or 'default'}. "
        f"Timings: medians of {args.repeats} round-robin repeats"
    )
    sections = {
        "precision": precision_table,
        "launch": launch_table,
        "flop_rate": flop_rate_table,
        "cells": cell_table,
        "anatomy": anatomy_table,
        "indrnn_epoch": indrnn_epoch,
        "indrnn_breakdown": indrnn_step_breakdown,
        "unroll": unroll_table,
    }
    rows = {}
    with jax.default_matmul_precision(args.precision):
        for name in args.sections:
            rows[name] = sections[name](args, print_fn)
    if args.table:
        print_fn(measured_table(rows, args.out or "(not written to a file)"))
    print_fn("Load average at end (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return rows


QUICK_SIZES: dict[str, Any] = {
    "peak_size": 64,
    "lengths": (4,),
    "cells": ("lstm", "indrnn"),
    "unrolls": (3,),
    "anatomy_lengths": (4,),
    "batch": 3,
    "hidden": 8,
    "har_windows": 12,
    "har_length": 5,
    "har_batch": 4,
    "har_depth": 1,
    "har_hidden": 8,
    "har_breakdown_steps": 1,
    "repeats": 1,
    "launch_rows": (16,),
    "launch_warps": (4,),
}
"""``--quick``'s toy sizes: every section runs, nothing is measured."""


def full_sizes(gpu: bool) -> dict[str, Any]:
    """The sections' sizes: HAR-2's real shapes, and longer unrolls and sequences on a GPU."""
    return {
        "peak_size": 1024,
        "lengths": (100, 400),
        "cells": CELLS,
        "unrolls": (1, 2, 4, 8, 16, 32) if gpu else (1, 2, 4, 8),
        "anatomy_lengths": (100, 400, 784) if gpu else (50, 100, 200, 400, 800),
        "batch": 50,
        "hidden": 128,
        "har_windows": 7415,
        "har_length": 128,
        "har_batch": 64,
        "har_depth": 6,
        "har_hidden": 128,
        "har_breakdown_steps": 10,
        "launch_rows": (16, 32),
        "launch_warps": (1, 2, 4, 8),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    gpu = jax.default_backend() == "gpu"
    lengths, warps, launch_cells = args.lengths, args.launch_warps, args.launch_cells
    for name, value in (QUICK_SIZES if args.quick else full_sizes(gpu)).items():
        setattr(args, name, value)
    if lengths is not None:
        if min(lengths) < 1:
            parser.error(f"--lengths must be >= 1, got {lengths}")
        args.lengths = tuple(lengths)
    if warps is not None:
        args.launch_warps = tuple(warps)
    args.launch_cells = tuple(launch_cells or ("simple", "indrnn"))
    args.impls = IMPLS + ((PALLAS,) if gpu or args.quick else ())
    if args.sections is None:
        args.sections = ("cells", "unroll") if args.table else SECTIONS[2:]
    return args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _section_arguments(parser.add_argument_group("what to run"))
    _size_arguments(parser.add_argument_group("sizes and timing"))
    return parser


def _section_arguments(group: argparse._ArgumentGroup) -> None:
    """The sections, the MEASURED table, the matmul precision and the output file."""
    group.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=None,
        help="run only these sections (default: all but precision and launch, which say "
        "something only on a GPU; --table: cells and unroll)",
    )
    group.add_argument(
        "--table",
        action="store_true",
        help="print models.rnn.MEASURED's entry for this backend from sections 3 and 7",
    )
    group.add_argument(
        "--precision",
        choices=["tensorfloat32", "float32"],
        default=None,
        help="jax.default_matmul_precision for every section (default: JAX's default)",
    )
    group.add_argument("--out", help="also write the printed report to this file")


def _size_arguments(group: argparse._ArgumentGroup) -> None:
    """Toy sizes, timing rounds, and the lengths, warps and cells that replace the defaults."""
    group.add_argument("--quick", action="store_true", help="toy sizes: the smoke test")
    group.add_argument("--repeats", type=int, default=15)
    group.add_argument(
        "--lengths", type=int, nargs="+", default=None, help="T of sections 2, 3 and 7"
    )
    group.add_argument(
        "--launch-warps", type=int, nargs="+", default=None, help="section 0b's warps"
    )
    group.add_argument(
        "--launch-cells", nargs="+", choices=CELLS, default=None, help="section 0b's cells"
    )


def main(argv: Sequence[str] | None = None) -> None:
    # One device per core, for section 5's last row: before parse_args asks JAX its backend,
    # which starts it.
    parallel.start_cpu_devices(None)
    args = parse_args(argv)
    with timing.tee(functools.partial(print, flush=True), args.out) as print_fn:
        run(args, print_fn)


if __name__ == "__main__":
    main()
