"""The adding task (the paper's Fig. 2): Frank-Wolfe against SGD, clipping and Adam.

Every method trains the same vanilla tanh RNN from the same initial weights on the same
stream of generated batches, for the same number of outer steps; the table also lists the
gradient evaluations each method spent (FW with K inner steps spends K per step).

    python -m benchmarks.adding                  # defaults: T=100, about 5 minutes on 2 CPU cores
    python -m benchmarks.adding --length 200 --steps 6000 --K 10

Writes ``results/adding/T{T}_seed{seed}.json`` (curves), ``.png`` (MSE vs step) and ``.md``
(the table) under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path

import jax
import optax

import fw_optax
from benchmarks import parallel
from benchmarks.configs import get_config
from benchmarks.data.adding import PLATEAU_MSE, adding_batch
from benchmarks.machine import describe, machine
from benchmarks.train import Objective, Stream, TrainResult, train
from models import RNNModel, mse_loss


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the comparison: a label, its optimizer and its cost per outer step."""

    name: str
    make_tx: Callable[[], optax.GradientTransformation]
    grad_evals_per_step: int = 1


def methods(args: argparse.Namespace) -> list[Method]:
    """The compared optimizers, built from the command-line hyper-parameters."""

    def fw(K: int) -> Method:
        return Method(
            f"FW K={K}",
            lambda: optax.chain(fw_optax.frank_wolfe(K, args.delta, args.p), optax.sgd(args.eta)),
            K,
        )

    table = {
        "sgd": Method("SGD", lambda: optax.sgd(args.lr)),
        "sgd_clip": Method(
            "SGD+clip",
            lambda: optax.chain(optax.clip_by_global_norm(args.clip), optax.sgd(args.lr)),
        ),
        "adam": Method("Adam", lambda: optax.adam(args.adam_lr)),
    }
    chosen = [table[name] for name in args.methods if name in table]
    if "fw" in args.methods:
        chosen += [fw(K) for K in args.K]
    return chosen


def run(args: argparse.Namespace) -> dict:
    model = RNNModel(hidden_size=args.hidden, output_size=1, cell="simple")
    make_batch = functools.partial(adding_batch, batch_size=args.batch, length=args.length)
    x0, _ = make_batch(jax.random.key(0))
    params0 = model.init(jax.random.key(args.seed), x0)
    x_test, y_test = adding_batch(jax.random.key(10_000 + args.seed), args.test_size, args.length)

    def loss(params, state, batch, key):
        x, y = batch
        return mse_loss(model.apply(params, x), y), state

    def evaluate(params, state, test):
        x, y = test
        return {"loss": mse_loss(model.apply(params, x), y)}

    objective = Objective(loss, evaluate, test=(x_test, y_test))

    mesh = parallel.training_mesh(args.devices, args.batch)
    runs: dict[str, TrainResult] = {}
    for method in methods(args):
        _, _, result = train(
            objective=objective,
            tx=method.make_tx(),
            params=params0,
            stream=Stream(generate=make_batch),
            steps=args.steps,
            eval_every=args.eval_every,
            seed=args.seed,
            grad_evals_per_step=method.grad_evals_per_step,
            desc=f"{method.name} T={args.length}",
            progress=not args.no_progress,
            mesh=mesh,
        )
        runs[method.name] = result
        print(
            f"{method.name:10s} train {result.final_train:.4f}  test {result.final_eval:.4f}  "
            f"({result.wall_time_s:.1f} s)",
            flush=True,
        )
    return {
        "task": "adding",
        "config": vars(args) | {"out": str(args.out)},
        "machine": machine(),
        "devices": 1 if mesh is None else mesh.size,
        "plateau_mse": PLATEAU_MSE,
        "runs": {
            name: {k: v for k, v in dataclasses.asdict(r).items() if k != "records"}
            for name, r in runs.items()
        },
    }


def markdown_table(report: dict) -> str:
    cfg = report["config"]
    lines = [
        f"Adding task, T={cfg['length']}, hidden {cfg['hidden']}, batch {cfg['batch']}, "
        f"{cfg['steps']} outer steps, seed {cfg['seed']}. Machine: {describe(report['machine'])}. "
        f"Predicting 1 gives MSE {report['plateau_mse']:.3f}.",
        "",
        "| method | final train MSE | final test MSE | steps | gradient evals | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["runs"].items():
        lines.append(
            f"| {name} | {r['train_curve'][-1][1]:.4f} | {r['eval_curve'][-1][1]:.4f} | "
            f"{r['steps']} | {r['grad_evals']} | {r['wall_time_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, r in report["runs"].items():
        axes[0].plot(*zip(*r["train_curve"], strict=True), label=name)
        axes[1].plot(*zip(*r["eval_curve"], strict=True), label=name)
    for ax, title in zip(axes, ["train MSE (chunk mean)", "test MSE"], strict=True):
        ax.axhline(report["plateau_mse"], color="grey", ls="--", lw=1, label="predict 1")
        ax.set_xlabel("outer step")
        ax.set_title(title)
        ax.set_yscale("log")
    axes[0].set_ylabel("MSE")
    axes[1].legend()
    cfg = report["config"]
    fig.suptitle(f"Adding task, T={cfg['length']} ({describe(report['machine'])})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # Hyper-parameters come from the one table (benchmarks.configs, the runner's cpu preset);
    # the budget (steps, test size) is this job's own.
    sgd, clip = get_config("adding", "sgd", "cpu"), get_config("adding", "sgd_clip", "cpu")
    adam = get_config("adding", "adam", "cpu")
    fw = get_config("adding", "fw", "cpu", flavour="alg1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", "-T", type=int, default=sgd.length, help="sequence length T")
    parser.add_argument("--steps", type=int, default=3000, help="outer steps per method")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--K", type=int, nargs="+", default=[1, 5], help="FW inner steps")
    parser.add_argument("--delta", type=float, default=fw.delta, help="FW radius δ")
    parser.add_argument("--p", type=float, default=fw.p, help="FW norm p")
    parser.add_argument("--eta", type=float, default=fw.eta, help="FW outer SGD step η")
    parser.add_argument("--lr", type=float, default=sgd.lr, help="SGD learning rate")
    parser.add_argument(
        "--clip", type=float, default=clip.clip, help="global-norm clip for SGD+clip"
    )
    parser.add_argument("--adam-lr", type=float, default=adam.lr)
    parser.add_argument("--hidden", type=int, default=sgd.hidden)
    parser.add_argument("--batch", type=int, default=sgd.batch_size)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["sgd", "sgd_clip", "adam", "fw"],
        choices=["sgd", "sgd_clip", "adam", "fw"],
    )
    parser.add_argument(
        "--devices",
        type=int,
        help="split each batch over this many devices (default: all; on CPU one per core)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/adding"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    for name in ("length", "steps", "eval_every", "hidden", "batch", "test_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps % args.eval_every:
        parser.error(
            f"--steps ({args.steps}) must be a multiple of --eval-every ({args.eval_every})"
        )
    if min(args.K) < 1:
        parser.error(f"--K must be >= 1, got {args.K}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    parallel.start_cpu_devices(args.devices)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"T{args.length}_seed{args.seed}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    table = markdown_table(report)
    stem.with_suffix(".md").write_text(table)
    plot(report, stem.with_suffix(".png"))
    print(table)
    print(f"wrote {stem}.json, .md, .png")
    return report


if __name__ == "__main__":
    main()
