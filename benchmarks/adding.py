"""The main job: the adding task (the paper's Fig. 2), Frank-Wolfe against SGD, clipping, Adam.

A preset of the experiment runner: ``python -m benchmarks.adding`` runs

    python -m benchmarks.run --task adding --method sgd sgd_clip adam fw --K 1 5 --flavour alg1

(cpu preset: T = 100, hidden 128, batch 50, 2000 outer steps, about 5 minutes on 2 CPU
cores), then writes the comparison's table and figure, drawn by ``benchmarks.report`` from
the runs' own files. Every method trains the same vanilla tanh RNN from the same initial
weights on the same stream of generated batches; the table lists the gradient evaluations
each one spent (FW with K inner steps spends K per step).

    python -m benchmarks.adding
    python -m benchmarks.adding --length 200 --steps 6000 --K 1 10 --set delta=0.05

Any other flag is the runner's (``--set``, ``--seeds``, ``--devices``, ``--out``, ...). Writes
the runs' files under ``--out`` as ``benchmarks.run`` does, and
``adding_T<T>/comparison_<preset>_seed<seed>.md`` / ``.png``. The default ``--out`` is
``runs/main_job`` (git ignores ``runs/``), apart from the reproduction's long runs in
``results/``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from benchmarks import report, run

METHODS = ("sgd", "sgd_clip", "adam", "fw")
OUT = "runs/main_job"


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.adding",
        description=__doc__.split("\n")[0],
        epilog="Other flags go to python -m benchmarks.run (see its --help).",
    )
    parser.add_argument("--length", "-T", type=int, default=100, help="sequence length T")
    parser.add_argument("--K", type=int, nargs="+", default=[1, 5], help="FW inner steps")
    parser.add_argument("--flavour", default="alg1", help="FW flavour (default alg1)")
    parser.add_argument("--method", nargs="+", default=list(METHODS), help="the rows")
    return parser.parse_known_args(argv)


def runner_argv(args: argparse.Namespace, rest: Sequence[str]) -> list[str]:
    """The ``benchmarks.run`` command line this preset stands for."""
    argv = ["--task", "adding", "--method", *args.method, "--length", str(args.length)]
    if "fw" in args.method:
        argv += ["--K", *map(str, args.K), "--flavour", args.flavour]
    if "--out" not in rest:
        argv += ["--out", OUT]
    return [*argv, *rest]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args, rest = parse_args(argv)
    full = runner_argv(args, rest)
    summaries = run.main(full)
    out = run.parse_args(full)[0].out
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for summary in summaries:
        path = out / f"adding_T{summary['config']['length']}" / f"{summary['run']}.json"
        by_seed.setdefault(summary["config"]["seed"], []).append(report.load_run(path))
    written = []
    for seed, runs in by_seed.items():
        c = runs[0]["config"]
        title = (
            f"Adding task, T={c['length']}, hidden {c['hidden']}, batch {c['batch_size']}, "
            f"{c['steps']} outer steps, seed {seed}, {c['preset']} preset"
        )
        stem = out / f"adding_T{c['length']}" / f"comparison_{c['preset']}_seed{seed}"
        table = report.comparison_table(runs, title)
        stem.with_suffix(".md").write_text(table)
        stem.with_suffix(".png").write_bytes(report.comparison_figure(runs, title))
        print(table)
        written.append(stem)
    print("wrote " + ", ".join(f"{stem}.md, .png" for stem in written))
    return summaries


if __name__ == "__main__":
    main()
