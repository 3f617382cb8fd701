"""Rebuild the reproduction's figures and tables from the result files alone.

    python -m benchmarks.report                      # reads results/, writes results/report.md
    python -m benchmarks.report --results DIR --out DIR

Reads every run summary ``<task>/<run>.json`` (and its curves ``.jsonl``) that
``benchmarks.run`` wrote, and writes:

* ``report.md``: Table 1 (MNIST), Table 2 (HAR-2, Noisy-HAR-2), the adding-task table, each
  with the paper's number beside ours, the machine and budget ours came from, and for every
  run its outer steps, gradient evaluations and wall time; rows not run say "not yet run";
  then every run whose wall time includes a stall (a pause, see ``stalls``);
* ``figures/fig2_adding.png``: test MSE against outer steps and against gradient
  evaluations, T in {100, 200, 400, 750} (the paper's Fig. 2);
* ``figures/fig3_mnist.png``: training loss and test accuracy against epochs on Pixel- and
  Permuted-MNIST (the paper's Fig. 3).

Everything is built in memory first: a bad results folder leaves nothing written.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import itertools
import json
import statistics
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks.machine import describe
from benchmarks.registry import configs
from benchmarks.registry.methods import METHODS
from benchmarks.training import summaries
from benchmarks.training.curves import read_records
from benchmarks.training.data.adding import PLATEAU_MSE

ADDING_LENGTHS = (100, 200, 300, 400, 750)
LEFT_PLATEAU = 0.1
"""A run has left the adding task's plateau (MSE 0.167, predicting 1) once its test MSE,
averaged over its seeds, is below this."""
FIG3_METHODS = ("sgd", "adam", "tbptt", "fw", "tbptt_fw")
NOT_RUN = "not yet run"
DIVERGED = "diverged"
STALL_FACTOR = 10
STALL_MIN_S = 60.0
"""An interval between two evaluations is a stall when its wall time is over STALL_FACTOR
times the usual one (the median interval of its stretch, below) and over STALL_MIN_S: a run
paused by SIGSTOP, or waiting on a shared machine, whose pause its wall time counts."""
SKIPPED_FOLDERS = ("ckpt", "main_job")
"""Not read: checkpoints, and the main job's output (``benchmarks.adding``, a demo whose runs
would repeat the reproduction's seed 0 at a shorter budget)."""

# The paper's numbers, copied from the poster (ICPR 2020, arXiv:2010.05397), Tables 1 and 2.
PAPER_TABLE1: Mapping[str, Mapping[str, tuple[float, float | None]]] = {
    "pixel_mnist": {
        "Baseline": (98.88, 4.84),
        "Ours K=1": (98.73, 3.46),
        "Ours K=5": (98.82, None),
    },
    "permuted_mnist": {
        "Baseline": (93.00, 4.92),
        "Ours K=1": (92.87, 3.68),
        "Ours K=5": (92.59, None),
    },
}
"""Test accuracy (%) and time per Table 1. The third column's header and times are cut off in
the poster text ("Our"); K=5 is the authors' other MNIST setting."""

PAPER_TABLE2: Mapping[str, tuple[float, float, float]] = {
    "SGD": (87.66, 0.17, 74.38),
    "SGD+Clipping": (93.36, 0.13, 74.38),
    "TBPTT": (93.62, 0.38, 86.20),
    "LSTM+Adam": (94.40, 0.14, 92.12),
    "Ours K=1": (93.52, 0.15, 86.04),
    "Ours K=5": (94.11, 0.14, 89.36),
    "Ours K=10": (93.65, 0.37, 89.52),
    "Ours+BN": (94.37, 0.36, 89.38),
    "TBPTT+Ours": (94.01, 0.35, 89.28),
    "LSTM+Ours": (94.95, 0.19, 92.41),
    "IndRNN": (95.73, 0.46, 91.20),
    "IndRNN+Ours": (96.55, 0.13, 92.15),
}
"""Table 2: (HAR-2 accuracy %, time, Noisy-HAR-2 accuracy %); the time unit is not stated."""

TABLE2_ROWS: Mapping[str, tuple[str, int | None]] = {
    "SGD": ("sgd", None),
    "SGD+Clipping": ("sgd_clip", None),
    "TBPTT": ("tbptt", None),
    "LSTM+Adam": ("lstm_adam", None),
    "Ours K=1": ("fw", 1),
    "Ours K=5": ("fw", 5),
    "Ours K=10": ("fw", 10),
    "Ours+BN": ("fw_bn", None),
    "TBPTT+Ours": ("tbptt_fw", None),
    "LSTM+Ours": ("lstm_fw", None),
    "IndRNN": ("indrnn", None),
    "IndRNN+Ours": ("indrnn_fw", None),
}
"""Paper row -> (method, K); ``None`` means any K (the method's default)."""

TABLE1_COLUMNS: Mapping[str, tuple[str, int | None]] = {
    "Baseline": ("adam", None),
    "Ours K=1": ("fw", 1),
    "Ours K=5": ("fw", 5),
}


class ResultsError(ValueError):
    """The results folder cannot be read: missing, or a file in it is malformed."""


def load_results(folder: Path) -> list[dict[str, Any]]:
    """Every run summary under ``folder`` (at any depth, ``SKIPPED_FOLDERS`` aside), each with
    its curve records under ``"records"``; other JSON files are skipped.

    Raises :class:`ResultsError` naming the folder or file that is unreadable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"results folder {folder} does not exist or is not a folder")
    runs = []
    for path in sorted(folder.rglob("*.json")):
        if set(path.relative_to(folder).parts) & set(SKIPPED_FOLDERS):
            continue
        run = load_run(path)
        if run is not None:
            runs.append(run | {"file": path.relative_to(folder).as_posix()})
    return runs


def load_run(path: Path) -> dict[str, Any] | None:
    """One run summary with its curve records (``None`` if the file is no run summary)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"{path}: not a readable JSON file ({error})") from error
    if not summaries.is_summary(record):
        return None
    try:
        summary = summaries.RunSummary.from_json(record).to_json()
    except (TypeError, ValueError) as error:
        raise ResultsError(f"{path}: not a run summary ({error})") from error
    curves = path.with_name(summary["curves"])
    if not curves.exists() and not _diverged(summary):
        raise ResultsError(f"{curves}: curves of {path.name} missing")
    try:
        summary["records"] = read_records(curves)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"{curves}: curves of {path.name} unreadable ({error})") from error
    return summary


def _diverged(run: dict[str, Any]) -> bool:
    return run.get("status") == DIVERGED


_VARIANT_FIELDS = ("gap_tol", "step_rule", "on_nonfinite")
"""Settings that make a run a variant of its row when not at their default (older result
files predate them: they count as the default, ``configs.recorded_config``)."""


_NOT_VARIANT = (*configs.UNNAMED, "eval_every", "test_size")
"""Overrides that leave a run in the paper's tables: the budget, and how it is measured."""


def _is_variant(run: dict[str, Any], allow: tuple[str, ...] = ()) -> bool:
    """A run with adaptive K, another step rule or any other override of what it trains
    (but those in ``allow``): reported in its own table (or not at all), not in the paper's."""
    config = configs.recorded_config(run["config"])
    if any(config[name] != configs.field_default(name) for name in _VARIANT_FIELDS):
        return True
    return any(k not in (*_NOT_VARIANT, *allow) for k in run.get("overrides", {}))


def _pick(
    runs, *, task, preset, method, K=None, flavour=None, length=None, seed=None, k1_steps=None
):
    """The runs of a table row, by seed. ``k1_steps``: the K-switch protocol's runs (only
    those; without it, none of them)."""
    out = []
    for run in runs:
        c = run["config"]
        if (run["task"], c["preset"], run["method"]) != (task, preset, method):
            continue
        if c.get("k1_steps") != k1_steps or _is_variant(run, allow=("k1_steps",)):
            continue
        if K is not None and c["K"] != K:
            continue
        if flavour is not None and c["flavour"] != flavour:
            continue
        if length is not None and c["length"] != length:
            continue
        if seed is not None and c["seed"] != seed:
            continue
        out.append(run)
    return sorted(out, key=lambda r: r["config"]["seed"])


def _diverged_text(run: dict[str, Any]) -> str:
    return f"{DIVERGED} at step {run['diverged']['step']}"


class Stall(NamedTuple):
    """An interval between evaluations that took far longer than its stretch's usual one."""

    from_step: int
    to_step: int
    seconds: float
    usual_s: float


def stalls(run: dict[str, Any]) -> list[Stall]:
    """The stalls in a run's curve. Intervals are compared with the median of those in the same
    stretch: between machines (``trained_on``) and the K switch (``k1_steps``), where the pace
    changes for a reason. Stretches of fewer than three intervals have no usual pace: none."""
    records = [r for r in run["records"] if r.get("wall_time_s") is not None]
    bounds = {0, run.get("steps", 0), run["config"].get("k1_steps") or 0}
    for stretch in run.get("trained_on") or []:
        bounds |= {stretch["from_step"], stretch["to_step"]}
    intervals, step, wall = [], 0, 0.0
    for record in records:
        if record["step"] > step:
            intervals.append((step, record["step"], record["wall_time_s"] - wall))
        step, wall = record["step"], record["wall_time_s"]
    found = []
    edges = sorted(bounds)
    for low, high in itertools.pairwise(edges):
        mine = [i for i in intervals if low <= i[0] and i[1] <= high]
        if len(mine) < 3:
            continue
        usual = statistics.median(seconds for *_, seconds in mine)
        found += [Stall(*i, usual) for i in mine if i[2] > max(STALL_FACTOR * usual, STALL_MIN_S)]
    return found


def _without_stalls(run: dict[str, Any]) -> float:
    """The run's wall time with each stall counted at its stretch's usual interval."""
    return run["wall_time_s"] - sum(s.seconds - s.usual_s for s in stalls(run))


def _without_stalls_note(runs: list[dict[str, Any]], unit: str = "") -> str:
    """`` (≈N without stalls)``, N the mean over ``runs``, where any of them stalled (runs
    without a wall time, diverged ones, aside)."""
    runs = [r for r in runs if "wall_time_s" in r]
    if not any(stalls(r) for r in runs):
        return ""
    return f" (≈{statistics.mean(_without_stalls(r) for r in runs):.0f}{unit} without stalls)"


def _wall(runs: list[dict[str, Any]]) -> str:
    """The mean wall time of ``runs`` in seconds, with the note above."""
    mean = statistics.mean(r.get("wall_time_s", 0.0) for r in runs)
    return f"{mean:.0f}{_without_stalls_note(runs)}"


def _acc(run: dict[str, Any] | None) -> str:
    if run is None:
        return NOT_RUN
    if _diverged(run):
        return _diverged_text(run)
    return f"{100 * run['final']['test_accuracy']:.2f} ({100 * run['best_test']:.2f})"


def _cost(run: dict[str, Any] | None) -> str:
    if run is None or _diverged(run):
        return "–"
    per_epoch, epochs = run.get("time_per_epoch_s"), run.get("epochs")
    epoch = f", {epochs:.1f} epochs, {per_epoch:.2f} s/epoch" if per_epoch else ""
    return (
        f"batch {run['config']['batch_size']}, {run['steps']} steps, {run['grad_evals']:.0f} "
        f"grads, {run['wall_time_s']:.0f} s{epoch}{_without_stalls_note([run], ' s')}"
    )


def _machine(run: dict[str, Any]) -> str:
    """The machine, or for a run resumed on another machine each one with its steps."""
    stretches = run.get("trained_on")
    if not stretches:
        return describe(run["machine"])
    return ", then ".join(
        f"{_describe_or_unrecorded(s['machine'])} (steps {s['from_step']}-{s['to_step']})"
        for s in stretches
    )


def _wall_and_machines(runs: list[dict[str, Any]]) -> tuple[str, str]:
    """The seeds' mean wall time and their machine; where seeds ran on different machines,
    each machine's mean wall time and machine with the seeds it ran (no mean across them)."""
    by_machine: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_machine.setdefault(_machine(run), []).append(run)
    walls = {m: _wall(rs) for m, rs in by_machine.items()}
    if len(by_machine) == 1:
        ((machine, wall),) = walls.items()
        return wall, machine
    seeds = {m: _seeds_text(rs) for m, rs in by_machine.items()}
    return (
        "; ".join(f"{walls[m]} ({seeds[m]})" for m in by_machine),
        "; ".join(f"{seeds[m]}: {m}" for m in by_machine),
    )


def _seeds_text(runs: list[dict[str, Any]]) -> str:
    seeds = ",".join(str(r["config"]["seed"]) for r in runs)
    return f"seeds {seeds}" if len(runs) > 1 else f"seed {seeds}"


def _describe_or_unrecorded(info: dict[str, Any] | str | None) -> str:
    return describe(info) if info else "a machine not recorded"


def _machines(runs: list[dict[str, Any]]) -> str:
    """Every machine that trained one of ``runs``, once each."""
    seen = sorted(
        {
            _describe_or_unrecorded(s["machine"])
            for r in runs
            for s in r.get("trained_on") or [{"machine": r["machine"]}]
        }
    )
    return "; ".join(seen) if seen else NOT_RUN


def _budget(run: dict[str, Any], *, batch: bool = True) -> str:
    c = run["config"]
    batch_text = f", batch {c['batch_size']}" if batch else ""
    if run["task"] == "adding":
        return f"{c['steps']} outer steps{batch_text}, test {c['test_size']}"
    sizes = run["data"].get("sizes", {})
    return (
        f"{c['epochs']} epochs of {sizes.get('train', '?')} train examples{batch_text}, "
        f"test {sizes.get('test', '?')}"
    )


def _budgets(runs: list[dict[str, Any]]) -> str:
    """A table's budgets, each once; the batch size in them only where every run has it."""
    if not runs:
        return NOT_RUN
    batches = sorted({r["config"]["batch_size"] for r in runs})
    text = "; ".join(sorted({_budget(r, batch=len(batches) == 1) for r in runs}))
    if len(batches) == 1:
        return text
    return f"{text}; batch {' or '.join(map(str, batches))} (each run's below)"


def _fw_variants(method: str, K: int | None) -> list[tuple[str, int | None, str | None]]:
    if METHODS[method].frank_wolfe:
        return [(method, K, flavour) for flavour in configs.FLAVOURS]
    return [(method, None, None)]


def _label(method: str, K: int | None, flavour: str | None, run) -> str:
    if flavour is None:
        return method
    K = run["config"]["K"] if run is not None else (K or 1)
    return f"{method} K={K} {flavour}"


def _num(values: Sequence[float] | None, index: int) -> str:
    return "–" if values is None else f"{values[index]:.2f}"


def _final_accuracy(run: dict[str, Any]) -> float:
    return 100 * run["final"]["test_accuracy"]


def _seeds_cell(group: list[dict[str, Any]]) -> str:
    """``mean ± std (n=..)`` of the final test accuracy % over a row's seeds (diverged seeds
    named apart)."""
    if not group:
        return NOT_RUN
    finished = [_final_accuracy(r) for r in group if not _diverged(r)]
    gone = [f"seed {r['config']['seed']} {_diverged_text(r)}" for r in group if _diverged(r)]
    best = [100 * r["best_test"] for r in group if not _diverged(r)]
    text = ""
    if len(finished) == 1:
        text = f"{finished[0]:.2f} (n=1; best {best[0]:.2f})"
    elif finished:
        mean, std = statistics.mean(finished), statistics.stdev(finished)
        text = f"{mean:.2f} ± {std:.2f} (n={len(finished)}; best {statistics.mean(best):.2f})"
    return "; ".join([text] * bool(text) + gone)


def _in_spread(paper: float | None, group: list[dict[str, Any]]) -> str:
    """Is the paper's number within our seeds' range (min to max)? Needs two seeds."""
    finished = [_final_accuracy(r) for r in group if not _diverged(r)]
    if paper is None or len(finished) < 2:
        return "–"
    return "yes" if min(finished) <= paper <= max(finished) else "no"


def _row_group(runs, *, task, preset, method, K, flavour) -> list[dict[str, Any]]:
    """A table row's runs, one per seed (with K unset: the K of the lowest seed's run)."""
    group = _pick(runs, task=task, preset=preset, method=method, K=K, flavour=flavour)
    if group and K is None:
        group = [r for r in group if r["config"]["K"] == group[0]["config"]["K"]]
    return group


def table2(runs: list[dict[str, Any]], preset: str) -> list[str]:
    har = [
        r for r in runs if r["task"] in ("har2", "noisy_har2") and r["config"]["preset"] == preset
    ]
    lines = [
        f"### Table 2: HAR-2 and Noisy-HAR-2, `{preset}` preset",
        "",
        f"Machine: {_machines(har)}. Budget: {_budgets(har)}.",
        "Ours: final test accuracy %, mean ± standard deviation over the seeds that ran (n; "
        "best: the mean over seeds of each run's best evaluation, which the paper may report "
        "instead: it does not say), diverged seeds named. In spread (of the final accuracy): "
        "the paper's number lies between our lowest and highest seed (two seeds or more). "
        "Cost (of the lowest seed): batch size, outer steps, "
        "gradient evaluations (full-sequence gradients of one mini-batch), wall time of "
        "training. The paper's time column has no unit.",
        "",
        "| paper row | our run | paper HAR-2 | ours HAR-2 | in spread | paper Noisy | ours Noisy "
        "| in spread | paper time | our cost (HAR-2) | our cost (Noisy) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [(name, *TABLE2_ROWS[name]) for name in PAPER_TABLE2]
    rows.append(("(Adam, the authors' baseline script)", "adam", None))
    for name, row_method, K in rows:
        paper = PAPER_TABLE2.get(name)
        for method, K_, flavour in _fw_variants(row_method, K):
            found = {
                task: _row_group(
                    har, task=task, preset=preset, method=method, K=K_, flavour=flavour
                )
                for task in ("har2", "noisy_har2")
            }
            first = {task: next(iter(found[task]), None) for task in found}
            any_run = first["har2"] or first["noisy_har2"]
            lines.append(
                f"| {name} | {_label(method, K_, flavour, any_run)} | "
                f"{_num(paper, 0)} | {_seeds_cell(found['har2'])} | "
                f"{_in_spread(paper and paper[0], found['har2'])} | "
                f"{_num(paper, 2)} | {_seeds_cell(found['noisy_har2'])} | "
                f"{_in_spread(paper and paper[2], found['noisy_har2'])} | "
                f"{_num(paper, 1)} | {_cost(first['har2'])} | {_cost(first['noisy_har2'])} |"
            )
    return lines


def _passes(run: dict[str, Any]) -> float:
    """Passes over the training data: mini-batches eaten over full batches in the set."""
    per_pass = run["data"]["sizes"]["train"] // run["config"]["batch_size"]
    return run["batches"] / per_pass


def k_outer_steps_table(runs: list[dict[str, Any]]) -> list[str]:
    """Table 2's K question on HAR-2: FW K = 5 (authors) at K = 1's outer steps, its
    learning-rate decays at the same outer steps, against K = 1 and K = 5 at equal epochs."""
    har = [r for r in runs if r["task"] == "har2" and r["config"]["preset"] == "paper"]
    same_k5 = dict(task="har2", preset="paper", method="fw", K=5, flavour="authors")
    rows = [
        ("FW K=1 (authors), 300 epochs", _row_group(har, **{**same_k5, "K": 1})),
        ("FW K=5 (authors), 300 epochs", _row_group(har, **same_k5)),
        (
            "FW K=5 (authors), K=1's outer steps",
            sorted(
                (
                    r
                    for r in har
                    if (r["method"], r["config"]["K"], r["config"]["flavour"])
                    == ("fw", 5, "authors")
                    and set(r.get("overrides", {})) - set(_NOT_VARIANT) == {"lr_decay_epochs"}
                ),
                key=lambda r: r["config"]["seed"],
            ),
        ),
    ]
    lines = [
        "### Does a larger K win at equal outer steps? (HAR-2, `paper` preset)",
        "",
        f"Machine: {_machines([r for _, group in rows for r in group])}. The authors' "
        "flavour eats K mini-batches per outer step, so at equal epochs K = 5 makes 5 times "
        "fewer outer steps than K = 1; the third row runs K = 5 for K = 1's outer steps (and "
        "so 5 times its data) with its learning-rate decays at the same outer steps, so that "
        "only K differs. Passes: mini-batches eaten over the full batches in the training "
        "set. Accuracy: final test accuracy %, mean ± standard deviation over the seeds "
        "(best: the mean of each seed's best evaluation).",
        "",
        "| run | outer steps | gradient evaluations | passes over the data | lr × "
        f"{configs.get_config('har2', 'fw', 'paper').lr_decay_factor:g} at outer steps "
        "| final accuracy % |",
        "|---|---|---|---|---|---|",
    ]
    for name, group in rows:
        finished = [r for r in group if not _diverged(r)]
        if not finished:
            lines.append(f"| {name} | {NOT_RUN} | – | – | – | – |")
            continue
        run = finished[0]
        per_epoch = run["plan"]["updates_per_epoch"]
        decays = ", ".join(str(e * per_epoch) for e in run["config"]["lr_decay_epochs"])
        lines.append(
            f"| {name} | {run['steps']} | {run['grad_evals']:.0f} | {_passes(run):.1f} | "
            f"{decays} | {_seeds_cell(group)} |"
        )
    return lines


def table1(runs: list[dict[str, Any]], preset: str) -> list[str]:
    tasks = ("pixel_mnist", "permuted_mnist")
    mnist = [r for r in runs if r["task"] in tasks and r["config"]["preset"] == preset]
    lines = [
        f"### Table 1: Pixel- and Permuted-MNIST, `{preset}` preset",
        "",
        f"Machine: {_machines(mnist)}. Budget: {_budgets(mnist)}.",
        "Paper: accuracy % (time). Ours: final test accuracy % (best in brackets). The paper's "
        "third column is cut off in the poster text after 'Our'; K=5 is the authors' other "
        "MNIST setting. Rows below the paper's columns are Fig. 3's methods.",
        "",
        "| task | column | our run | paper | ours | our cost |",
        "|---|---|---|---|---|---|",
    ]
    columns = [(name, *TABLE1_COLUMNS[name]) for name in TABLE1_COLUMNS]
    columns += [(f"Fig. 3: {m}", m, None) for m in FIG3_METHODS if m not in ("adam", "fw")]
    for task in tasks:
        for name, column_method, K in columns:
            paper = PAPER_TABLE1[task].get(name)
            paper_text = "–"
            if paper:
                paper_text = f"{paper[0]:.2f}" + (f" ({paper[1]})" if paper[1] else "")
            for method, K_, flavour in _fw_variants(column_method, K):
                run = next(
                    iter(_pick(mnist, task=task, preset=preset, method=method, K=K_,
                               flavour=flavour, seed=0)), None)  # fmt: skip
                lines.append(
                    f"| {task} | {name} | {_label(method, K_, flavour, run)} | {paper_text} | "
                    f"{_acc(run)} | {_cost(run)} |"
                )
    return lines


ADDING_ROWS = (
    ("sgd", None, None, None),
    ("sgd_clip", None, None, None),
    ("adam", None, None, None),
    ("fw", 1, "alg1", None),
    ("fw", 1, "authors", None),
    ("fw", 5, "alg1", None),
    ("fw", 5, "authors", None),
    ("fw", 5, "authors", 10000),
)
"""The adding task's rows: method, K, flavour, and the step of the K=1 -> K switch (the
authors' protocol) where there is one."""
FIG2_ROWS = (ADDING_ROWS[0], ADDING_ROWS[1], ADDING_ROWS[2], ADDING_ROWS[5], *ADDING_ROWS[6:])
"""The rows Fig. 2 draws (FW at K=1 stays on the plateau with SGD; the tables list it)."""


def _adding_label(method, K, flavour, k1_steps, run=None) -> str:
    label = _label(method, K, flavour, run)
    return label.replace("K=", f"K=1→{K} at {k1_steps}, K=", 1) if k1_steps else label


def _mean_mse(group: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """``[(step, the finished seeds' mean test MSE)]`` at the steps every finished seed
    evaluated."""
    finished = [r for r in group if not _diverged(r)]
    if not finished:
        return []
    curves = [dict(zip(*_series(r, "step", "test_loss"), strict=True)) for r in finished]
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return [(step, statistics.mean(c[step] for c in curves)) for step in steps]


def _plateau_exit(group: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    """The first evaluated step at which the seeds' mean test MSE is below LEFT_PLATEAU, and
    the first from which it stays below at every later evaluation (None where the last
    evaluation is not below it)."""
    below = [(step, mse < LEFT_PLATEAU) for step, mse in _mean_mse(group)]
    leaves = next((step for step, off in below if off), None)
    stays = None
    for step, off in reversed(below):
        if not off:
            break
        stays = step
    return leaves, stays


def _step_text(step: int | None) -> str:
    return "–" if step is None else str(step)


def _adding_groups(runs, length, preset):
    """``[(row, label, group of seeds at one budget)]`` of the adding rows at ``length``."""
    out = []
    for method, K, flavour, k1_steps in ADDING_ROWS:
        found = _pick(runs, task="adding", preset=preset, method=method, K=K, flavour=flavour,
                      length=length, k1_steps=k1_steps)  # fmt: skip
        label = _adding_label(method, K, flavour, k1_steps, found[0] if found else None)
        if not found:
            out.append(((method, K, flavour, k1_steps), label, []))
        for same_budget in _by_steps(found).values():
            out.append(((method, K, flavour, k1_steps), label, same_budget))
    return out


def _steps_cell(run: dict[str, Any]) -> str:
    """Outer steps, and where a run started from another folder's checkpoint (the runner's
    ``--start-from``), from which step of which folder."""
    origin = run.get("started_from")
    if not origin:
        return str(run["steps"])
    return f"{run['steps']} (steps 0-{origin['checkpoint_steps'][-1]}: {origin['folder']})"


def adding_table(runs: list[dict[str, Any]]) -> list[str]:
    adding = [r for r in runs if r["task"] == "adding"]
    lines = [
        "### Adding task (Fig. 2): final test MSE",
        "",
        f"Machine: {_machines(adding)}. Predicting 1 gives MSE {PLATEAU_MSE:.3f} (the plateau). "
        "Mean ± std over seeds where several ran (seeds listed). Leaves the plateau: the "
        f"first evaluated step at which the seeds' mean test MSE is below {LEFT_PLATEAU}; "
        "stays off it: the first from which that mean is below it at every later evaluation "
        "(– where the last is not: the run left the plateau and came back). "
        "The paper gives no numbers for Fig. 2, only curves.",
        "",
        "| T | preset | run | test MSE | seeds | steps | grad evals | leaves the plateau at "
        "step | stays off it from step | wall time (s) | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    left: dict[str, list[tuple[int, int, int | None]]] = {}
    for length in ADDING_LENGTHS:
        for preset in configs.PRESETS:
            group = [r for r in adding if r["config"]["length"] == length]
            group = [r for r in group if r["config"]["preset"] == preset]
            if not group:
                if preset == "paper" or length == 750:
                    lines.append(f"| {length} | {preset} | all | {NOT_RUN} |" + " |" * 7)
                continue
            for _, label, same_budget in _adding_groups(group, length, preset):
                if not same_budget:
                    lines.append(f"| {length} | {preset} | {label} | {NOT_RUN} |" + " |" * 7)
                    continue
                mse = [r["final"]["test_loss"] for r in same_budget if not _diverged(r)]
                text = f"{mse[0]:.4f}" if mse else ""
                if len(mse) > 1:
                    text = f"{statistics.mean(mse):.4f} ± {statistics.stdev(mse):.4f}"
                gone = [_diverged_text(r) for r in same_budget if _diverged(r)]
                text = ", ".join([text] * bool(mse) + gone)
                seeds = ",".join(str(r["config"]["seed"]) for r in same_budget)
                finished = [x for x in same_budget if not _diverged(x)] or same_budget
                r = finished[0]
                wall, where = _wall_and_machines(finished)
                step, stays = _plateau_exit(same_budget)
                if step is not None:
                    left.setdefault(label, []).append((length, step, stays))
                lines.append(
                    f"| {length} | {preset} | {label} | {text} | {seeds} | {_steps_cell(r)} | "
                    f"{r.get('grad_evals', 0):.0f} | {_step_text(step)} | {_step_text(stays)} | "
                    f"{wall} | {where} |"
                )
    lines += [
        "",
        "Per method, the longest sequence at which it left the plateau (any preset, budget "
        "or seed count above), the step at which it did, and the step from which it stayed "
        "off it:",
        "",
        "| run | longest T that left the plateau | at step | stays off it from step |",
        "|---|---|---|---|",
    ]
    labels = dict.fromkeys(_adding_label(m, K, f, k1) for m, K, f, k1 in ADDING_ROWS)
    for label in labels:
        if label in left:
            length, step, stays = max(left[label], key=lambda x: (x[0], -x[1]))
            lines.append(f"| {label} | {length} | {step} | {_step_text(stays)} |")
        else:
            lines.append(f"| {label} | none of those run | – | – |")
    return lines


_NO_EFFECT = ("unroll", "eta")
"""Config fields ignored when pairing runs: ``unroll`` changes how a run computes, not what;
``eta`` is retired (older files: the FW outer rate, now ``lr`` itself)."""


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def key(c):
        return {k: v for k, v in configs.recorded_config(c).items() if k not in _NO_EFFECT}

    return key(a) == key(b)


def adaptive_k_table(runs: list[dict[str, Any]]) -> list[str]:
    """Adaptive K (``gap_tol``) against the same run with K fixed: cost and final metric."""
    runs = [r for r in runs if not _diverged(r)]
    adaptive = [r for r in runs if r["config"].get("gap_tol") is not None]
    if not adaptive:
        return []
    lines = [
        "### Adaptive K: Frank-Wolfe stopped on its gap against K fixed",
        "",
        "`gap_tol=τ` stops an outer step's inner loop at the first k ≥ 2 with gap_k ≤ τ·gap_1; K "
        "is then the maximum. Each row pairs a run with the same run (same seed, data, budget "
        "in outer steps) at K fixed, where one is in the results. Machine: "
        + _machines(adaptive)
        + ".",
        "",
        "| task | run | τ | test metric, K fixed | test metric, adaptive | grad evals, K fixed "
        "| grad evals, adaptive | saved | machine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in sorted(adaptive, key=lambda r: (r["config"]["task"], r["run"])):
        c = run["config"]
        twins = [r for r in runs if _same_run(r["config"], {**c, "gap_tol": None})]
        metric = f"test_{run['metric']}"
        fixed = twins[0] if twins else None
        fixed_metric = f"{fixed['final'][metric]:.4f}" if fixed else NOT_RUN
        fixed_evals = f"{fixed['grad_evals']:.0f}" if fixed else NOT_RUN
        saved = f"{1 - run['grad_evals'] / fixed['grad_evals']:.0%}" if fixed else "–"
        task = run["task"] if run["task"] != "adding" else f"adding T={c['length']}"
        lines.append(
            f"| {task} | {run['run']} | {c['gap_tol']:g} | {fixed_metric} | "
            f"{run['final'][metric]:.4f} | {fixed_evals} | {run['grad_evals']:.0f} | {saved} | "
            f"{_machine(run)} |"
        )
    return lines


def stalls_table(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown: every run whose curve has a stall, with its stalls and its wall time without
    them (each counted at its stretch's usual interval instead)."""
    lines = [
        "### Stalls in the wall times",
        "",
        "Wall times are measured by each run's own clock, so they count any time a run was "
        "paused (SIGSTOP) or kept waiting by a busy machine. A stall: an interval between two "
        f"evaluations over {STALL_FACTOR}x the usual one (the median interval of its stretch: "
        "one machine, one side of the K switch) and over "
        f"{STALL_MIN_S:.0f} s. Where a run stalled, the tables above add (≈N without stalls): "
        "its wall time with each stall counted at its usual interval, an estimate. A run "
        "paused by SIGTERM instead saves and stops, and its clock resumes only when it is run "
        "again: no stall.",
        "",
        "| run file | wall time (s) | stalls (steps: s) | usual interval (s) | "
        "without stalls (s) | machine |",
        "|---|---|---|---|---|---|",
    ]
    stalled = [(run, found) for run in runs if not _diverged(run) and (found := stalls(run))]
    for run, found in stalled:
        listed = ", ".join(f"{s.from_step}-{s.to_step}: {s.seconds:.0f}" for s in found)
        usual = ", ".join(f"{u:.1f}" for u in sorted({s.usual_s for s in found}))
        lines.append(
            f"| {run.get('file', run['run'])} | {run['wall_time_s']:.0f} | {listed} | {usual} | "
            f"{_without_stalls(run):.0f} | {_machine(run)} |"
        )
    if not stalled:
        lines.append("| none | | | | | |")
    return lines


def run_label(run: dict[str, Any]) -> str:
    """``method [K=.. flavour] [overrides]``: a run's name without preset and seed."""
    c = run["config"]
    label = f"{run['method']} K={c['K']} {c['flavour']}" if c.get("flavour") else run["method"]
    named = {k: v for k, v in run.get("overrides", {}).items() if k not in configs.UNNAMED}
    return label + "".join(f" {k}={v}" for k, v in sorted(named.items()))


def comparison_table(runs: list[dict[str, Any]], title: str) -> str:
    """Markdown: one row per run (final train loss and test metric, best test, cost)."""
    metric = runs[0]["metric"] if runs else "loss"
    lines = [
        f"{title}. Machine: {_machines(runs)}.",
        "",
        f"| run | final train loss | final test {metric} | best test {metric} | steps | "
        "gradient evals | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        if _diverged(run):
            lines.append(f"| {run_label(run)} | {_diverged_text(run)} | | | | | |")
            continue
        final = run["final"]
        lines.append(
            f"| {run_label(run)} | {final['train_loss']:.4f} | {final[f'test_{metric}']:.4f} | "
            f"{run['best_test']:.4f} | {run['steps']} | {run['grad_evals']:.0f} | "
            f"{run['wall_time_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def comparison_figure(runs: list[dict[str, Any]], title: str) -> bytes:
    """Test metric against outer steps and against gradient evaluations, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = runs[0]["metric"] if runs else "loss"
    adding = bool(runs) and runs[0]["task"] == "adding"  # its loss is the MSE
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for run in runs:
        for ax, x in zip(axes, ("step", "grad_evals"), strict=True):
            label = run_label(run)
            ax.plot(*_series(run, x, f"test_{metric}"), label=label, color=_colour(label), lw=1.2)
    for ax, x in zip(axes, ("outer step", "gradient evaluations"), strict=True):
        if adding:
            label = f"always predicting 1 (MSE {PLATEAU_MSE:.3f}, the plateau)"
            ax.axhline(PLATEAU_MSE, color="black", ls=":", lw=1, label=label)
            ax.set_yscale("log")
        ax.set_xlabel(x)
    axes[0].set_ylabel("test MSE" if adding else f"test {metric}")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"{title} ({_machines(runs)})", fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def _steps_asked(run: dict[str, Any]) -> int:
    """A run's budget in outer steps: the steps asked for (a diverged run stopped earlier)."""
    return run["config"].get("steps") or run["steps"]


def _by_steps(runs: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Runs of one method grouped by their budget in outer steps (e.g. an equal-compute run),
    so a seed that diverged stays in its row."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: (_steps_asked(r), r["config"]["seed"])):
        groups.setdefault(_steps_asked(run), []).append(run)
    return groups


def _series(run: dict[str, Any], x: str, y: str) -> tuple[list[float], list[float]]:
    rows = [r for r in run["records"] if r.get(y) is not None and r.get(x) is not None]
    return [r[x] for r in rows], [r[y] for r in rows]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # the legend whole
    return buffer.getvalue()


_PALETTE = {
    "sgd": "tab:gray",
    "sgd_clip": "tab:purple",  # apart from SGD's grey: the two are drawn side by side
    "adam": "tab:blue",
    "tbptt": "tab:cyan",
    "lstm_adam": "tab:olive",
    "fw K=1 alg1": "yellowgreen",
    "fw K=1 authors": "tab:green",
    "fw K=5 alg1": "tab:orange",
    "fw K=5 authors": "tab:red",
    "fw K=1→5 at 10000, K=5 authors": "tab:brown",
    "fw K=10 authors": "tab:pink",
    "fw_bn K=1 authors": "gold",
    "tbptt_fw K=1 authors": "teal",
    "tbptt_fw K=1 alg1": "magenta",
    "lstm_fw K=1 authors": "black",
    "indrnn": "navy",
    "indrnn_fw K=1 authors": "crimson",
}
"""One colour per run label, the same in every figure."""


def _colour(label: str) -> str:
    if label in _PALETTE:
        return _PALETTE[label]
    import matplotlib

    cycle = matplotlib.colormaps["tab20"].colors
    return cycle[sum(map(ord, label)) % len(cycle)]


def _mean_band(group: list[dict[str, Any]], x: str, y: str):
    """``(xs, mean, low, high)`` over the seeds' curves, at the points all of them have."""
    curves = [dict(zip(*_series(r, x, y), strict=True)) for r in group if not _diverged(r)]
    if not curves:
        return [], [], [], []
    xs = sorted(set.intersection(*(set(c) for c in curves)))
    values = [[c[v] for c in curves] for v in xs]
    return (
        xs,
        [statistics.mean(v) for v in values],
        [min(v) for v in values],
        [max(v) for v in values],
    )


def _collect_handles(ax, handles: dict[str, Any]) -> None:
    """One legend entry per run label across a figure's panels (the seed count dropped)."""
    for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
        handles.setdefault(text.rsplit(" (n=", 1)[0], handle)


def _finish(
    fig, handles: dict[str, Any], title: str, legend: str = "mean over seeds\n(band: min–max)"
) -> bytes:
    """A figure with one legend (titled ``legend``) outside the panels, on the right, as PNG
    bytes."""
    import matplotlib.pyplot as plt

    fig.legend(
        list(handles.values()),
        list(handles),
        loc="center left",
        bbox_to_anchor=(0.865, 0.5),
        fontsize=8,
        title=legend,
        title_fontsize=8,
    )
    # About 15 characters of 8-point text per inch: a long machine list wraps, not clips.
    lines = textwrap.wrap(title, int(fig.get_figwidth() * 15))
    fig.suptitle("\n".join(lines), fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.86, 1 - 0.02 * (len(lines) + 1)))
    data = _png(fig)
    plt.close(fig)
    return data


def _draw(ax, group, x, y, label) -> None:
    xs, mean, low, high = _mean_band(group, x, y)
    if not xs:
        return
    n = len([r for r in group if not _diverged(r)])
    colour = _colour(label)
    ax.plot(xs, mean, color=colour, lw=1.4, label=f"{label} (n={n})")
    if n > 1:
        ax.fill_between(xs, low, high, color=colour, alpha=0.2, lw=0)


def _size(group: list[dict[str, Any]]) -> tuple[int, int]:
    """``(seeds, steps)`` of a group of seeds at one budget: every seed that ran counts, a
    diverged one too, so one diverging seed does not hand the panel to a shorter budget."""
    return len(group), _steps_asked(group[0])


def fig2_choice(runs: list[dict[str, Any]], length: int) -> dict[tuple, tuple[str, list]]:
    """Fig. 2's runs at ``length``: per row drawn, ``(label, seeds at one budget)``, the
    budget with the most seeds, then the longest."""
    chosen: dict[tuple, tuple[str, list[dict[str, Any]]]] = {}
    at_length = [r for r in runs if r["task"] == "adding" and r["config"]["length"] == length]
    for preset in configs.PRESETS:
        group = [r for r in at_length if r["config"]["preset"] == preset]
        for row, label, same_budget in _adding_groups(group, length, preset):
            if row not in FIG2_ROWS or not same_budget:
                continue
            old = chosen.get(row)
            if old is None or _size(same_budget) > _size(old[1]):
                chosen[row] = (label, same_budget)
    return chosen


def fig2_step_limit(chosen: dict[tuple, tuple[str, list]]) -> int | None:
    """Where the outer-step axis of a Fig. 2 panel ends: at the FW runs' longest budget when
    a baseline ran longer (the baselines at FW's gradient evaluations, 5x the steps), so
    the FW curves keep the panel's width; the gradient-evaluation row below compares them at
    equal cost. ``None``: every run fits."""
    fw = [_steps_asked(group[0]) for (method, *_), (_, group) in chosen.items() if method == "fw"]
    longest = max((_steps_asked(group[0]) for _, group in chosen.values()), default=0)
    return max(fw) if fw and longest > max(fw) else None


def figure2(runs: list[dict[str, Any]]) -> bytes:
    """One panel per T: test MSE (mean over seeds, band from the lowest to the highest seed)
    against outer steps (top) and gradient evaluations (bottom); per method the run with the
    most seeds (then the longest budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    adding = [r for r in runs if r["task"] == "adding"]
    fig, axes = plt.subplots(2, len(ADDING_LENGTHS), figsize=(19, 7.5), squeeze=False, sharey=True)
    handles: dict[str, Any] = {}
    for col, length in enumerate(ADDING_LENGTHS):
        chosen = fig2_choice(adding, length)
        for row_index, x in enumerate(("step", "grad_evals")):
            ax = axes[row_index][col]
            for label, group in chosen.values():
                _draw(ax, group, x, "test_loss", label)
            ax.axhline(PLATEAU_MSE, color="black", ls="--", lw=0.8)
            ax.axhline(LEFT_PLATEAU, color="black", ls=":", lw=0.6)
            ax.set_yscale("log")
            ax.set_ylim(1e-3, 1.5)  # FW at T = 100 reaches MSE 1e-3 in 20000 steps
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
            if x == "step" and (limit := fig2_step_limit(chosen)) is not None:
                ax.set_xlim(-0.05 * limit, 1.05 * limit)  # matplotlib's own 5% margins
            ax.set_xlabel("outer step" if x == "step" else "gradient evaluations")
            if col == 0:
                ax.set_ylabel("test MSE")
            _collect_handles(ax, handles)
        steps = sorted({_steps_asked(g[0]) for _, g in chosen.values()})
        budget = f": {NOT_RUN}"
        if steps:
            budget = f", {steps[0]}" + (f"–{steps[-1]}" if len(steps) > 1 else "") + " steps"
        axes[0][col].set_title(f"T = {length}{budget}", fontsize=9)
    return _finish(
        fig,
        handles,
        f"Adding task (paper Fig. 2); dashed: the plateau, dotted: MSE {LEFT_PLATEAU}. Top "
        "row: outer steps, up to FW's budget where a baseline ran longer; bottom row: gradient "
        f"evaluations. Machines: {_machines(adding)}",
    )


TABLE2_FIGURE_ROWS = {
    "vanilla RNN": (
        ("sgd", None, None),
        ("sgd_clip", None, None),
        ("tbptt", None, None),
        ("fw", 1, "authors"),
        ("fw", 5, "authors"),
        ("fw", 10, "authors"),
        ("fw_bn", None, "authors"),
        ("tbptt_fw", None, "authors"),
    ),
    "LSTM, IndRNN": (
        ("lstm_adam", None, None),
        ("lstm_fw", None, "authors"),
        ("indrnn", None, None),
        ("indrnn_fw", None, "authors"),
    ),
}
"""Table 2's figure: one row of panels per entry, with the runs drawn in it."""


def figure_table2(runs: list[dict[str, Any]], preset: str = "paper") -> bytes:
    """Test accuracy against epochs on HAR-2 and Noisy-HAR-2, Table 2's vanilla-RNN rows
    (top) and LSTM and IndRNN rows (bottom), mean over seeds with a band from the lowest to
    the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = ("har2", "noisy_har2")
    fig, axes = plt.subplots(len(TABLE2_FIGURE_ROWS), 2, figsize=(13, 8.5), squeeze=False)
    handles: dict[str, Any] = {}
    for row, (models, rows) in enumerate(TABLE2_FIGURE_ROWS.items()):
        for col, task in enumerate(tasks):
            ax = axes[row][col]
            for method, K, flavour in rows:
                group = _row_group(runs, task=task, preset=preset, method=method, K=K,
                                   flavour=flavour)  # fmt: skip
                if group:
                    _draw(ax, group, "epoch", "test_accuracy", _label(method, K, flavour, group[0]))
            _collect_handles(ax, handles)
            title = f"{'HAR-2' if task == 'har2' else 'Noisy-HAR-2'}, {models}"
            ax.set_title(title + ("" if ax.lines else f": {NOT_RUN}"), fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("test accuracy")
    chosen = [r for r in runs if r["task"] in tasks and r["config"]["preset"] == preset]
    return _finish(
        fig,
        handles,
        f"Table 2, `{preset}` preset. Machines: {_machines(chosen)}",
    )


FIG3_CURVES = (
    ("sgd", None, None),
    ("tbptt", None, None),
    ("fw", 1, "authors"),
    ("tbptt_fw", 1, "authors"),
    ("fw", 5, "authors"),
    ("adam", None, None),
)
"""Fig. 3's curves: the paper's four methods, FW with the authors' other K (5), and the Adam
baseline of the authors' scripts."""
MNIST_TASKS = ("pixel_mnist", "permuted_mnist")
FIG3_READ_FROM = 20
"""Epochs (of the paper's 200) from which a claim of Fig. 3 is read; before, it is early."""
EPOCH_SLACK = 0.01
"""Epochs this close count as one: the authors' flavour at K = 5 makes an epoch of whole outer
steps, a few batches short of a pass (epoch 2 ends at 1.996)."""
LOSS_RISE = 0.05
"""A rise of the training loss: above the evaluation before it by more than this fraction."""


def fig3_runs(runs: list[dict[str, Any]], task: str) -> tuple[str | None, dict[str, Any]]:
    """``(preset, {label: run})``: Fig. 3's curves of ``task``, seed 0, from the ``paper``
    preset where any of them ran, else from ``cpu``."""
    for preset in ("paper", "cpu"):
        chosen = {}
        for method, K, flavour in FIG3_CURVES:
            found = _pick(
                runs, task=task, preset=preset, method=method, K=K, flavour=flavour, seed=0
            )
            if found:
                chosen[_label(method, K, flavour, found[0])] = found[0]
        if chosen:
            return preset, chosen
    return None, {}


def _epochs_reached(run: dict[str, Any]) -> float:
    return max((r.get("epoch") or 0.0 for r in run["records"]), default=0.0)


def epoch_span(runs) -> str:
    """The epochs ``runs`` reached, as ``"6 epochs"`` or ``"6-7 epochs"``, to a tenth: FW
    K=5's passes end a few batches short of a whole one (5.987 epochs)."""
    reached = sorted({round(_epochs_reached(r), 1) for r in runs})
    span = f"{reached[0]:g}" if len(reached) == 1 else f"{reached[0]:g}-{reached[-1]:g}"
    return f"{span} epoch{'s' * (reached != [1.0])}"


def figure3(runs: list[dict[str, Any]]) -> bytes:
    """Training cross-entropy and test accuracy against epochs, seed 0 of each of Fig. 3's
    curves, one column per dataset, in the colours of every other figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 7), squeeze=False)
    handles: dict[str, Any] = {}
    drawn_runs = []
    for col, task in enumerate(MNIST_TASKS):
        preset, chosen = fig3_runs(runs, task)
        for label, run in chosen.items():
            style = dict(color=_colour(label), marker="o", markersize=2.5)  # one epoch: a dot
            axes[0][col].plot(*_series(run, "epoch", "train_loss"), **style)
            axes[1][col].plot(*_series(run, "epoch", "test_accuracy"), **style, label=label)
        drawn_runs += chosen.values()
        title = "Pixel-MNIST" if task == "pixel_mnist" else "Permuted-MNIST"
        if chosen:
            title += f", `{preset}` preset, {epoch_span(chosen.values())}"
        axes[0][col].set_title(title if chosen else f"{title}: {NOT_RUN}", fontsize=9)
        axes[0][col].set_ylabel("training cross-entropy")
        axes[1][col].set_ylabel("test accuracy")
        for ax in axes[:, col]:
            ax.set_xlabel("epoch")
        _collect_handles(axes[1][col], handles)
    title = f"Pixel / Permuted MNIST (paper Fig. 3). Machine: {_machines(drawn_runs)}"
    return _finish(fig, handles, title, legend="seed 0")


def _at_epoch(run: dict[str, Any], epoch: float, key: str) -> float | None:
    """``key`` of the last record at or before ``epoch`` (``None`` if none has it)."""
    rows = [
        r
        for r in run["records"]
        if (r.get("epoch") or 0.0) <= epoch + EPOCH_SLACK and r.get(key) is not None
    ]
    return rows[-1][key] if rows else None


def _rises(run: dict[str, Any], epoch: float) -> int:
    """How often the training loss rose by more than ``LOSS_RISE`` from one evaluation to the
    next, up to ``epoch``."""
    losses = [
        r["train_loss"]
        for r in run["records"]
        if r.get("train_loss") is not None and (r.get("epoch") or 0.0) <= epoch + EPOCH_SLACK
    ]
    return sum(b > a * (1 + LOSS_RISE) for a, b in itertools.pairwise(losses))


def _updates_to(run: dict[str, Any], level: float) -> int | None:
    """Parameter updates until the training loss first reached ``level`` (``None``: never)."""
    for r in run["records"]:
        if r.get("train_loss") is not None and r["train_loss"] <= level:
            return r["updates"]
    return None


@dataclasses.dataclass(frozen=True)
class _Fig3Curves:
    """One dataset's Fig. 3 runs (label -> run), read at one epoch."""

    name: str
    runs: dict[str, dict[str, Any]]
    epoch: float

    def ce(self, label: str) -> float:
        return _at_epoch(self.runs[label], self.epoch, "train_loss")

    def acc(self, label: str) -> float:
        return 100 * _at_epoch(self.runs[label], self.epoch, "test_accuracy")


_FW1, _FW5, _BOTH = "fw K=1 authors", "fw K=5 authors", "tbptt_fw K=1 authors"


def _claim_sgd_slow(c: _Fig3Curves) -> tuple[bool, str]:
    first = c.runs["sgd"]["records"][0]["test_loss"]  # at step 0, before training
    drop, fw_drop = first - c.ce("sgd"), first - c.ce(_FW1)
    holds = c.acc("sgd") < c.acc(_FW1) and drop < fw_drop / 2
    return holds, (
        f"{c.name}: SGD's loss {first:.3f} → CE {c.ce('sgd'):.3f}, {c.acc('sgd'):.1f}% "
        f"(FW K=1: {c.ce(_FW1):.3f}, {c.acc(_FW1):.1f}%)"
    )


def _claim_tbptt_gain(c: _Fig3Curves) -> tuple[float, str]:
    gain = c.acc("tbptt") - c.acc("sgd")
    rises = _rises(c.runs["tbptt"], c.epoch)
    return gain, f"{c.name}: TBPTT − SGD {gain:+.1f} points, {rises} rises of TBPTT's loss"


def _claim_fw_stable(c: _Fig3Curves) -> tuple[bool, str]:
    others = ("sgd", "tbptt")
    rises = {label: _rises(c.runs[label], c.epoch) for label in (*others, _FW1)}
    holds = c.ce(_FW1) < min(c.ce(o) for o in others) and rises[_FW1] <= min(
        rises[o] for o in others
    )
    return holds, (
        f"{c.name}: CE FW {c.ce(_FW1):.3f}, SGD {c.ce('sgd'):.3f}, TBPTT {c.ce('tbptt'):.3f}; "
        f"rises {rises[_FW1]}, {rises['sgd']}, {rises['tbptt']}"
    )


def _claim_combined(c: _Fig3Curves, *, faster: bool) -> tuple[bool, str]:
    holds = c.acc(_BOTH) > c.acc("sgd") and (not faster or c.ce(_BOTH) < c.ce("sgd"))
    return holds, (
        f"{c.name}: TBPTT+FW {c.acc(_BOTH):.1f}% (CE {c.ce(_BOTH):.3f}) against SGD "
        f"{c.acc('sgd'):.1f}% (CE {c.ce('sgd'):.3f})"
    )


def _claim_larger_k(c: _Fig3Curves) -> tuple[bool, str]:
    level = c.ce(_FW1)
    one, five = (_updates_to(c.runs[label], level) for label in (_FW1, _FW5))
    return five is not None and five < one, (
        f"{c.name}: to FW K=1's CE at epoch {round(c.epoch, 1):g} ({level:.3f}), K=1 took "
        f"{one} updates, K=5 {five if five is not None else 'not reached'}"
    )


_FIG3_CHECKS: dict[int, tuple[tuple[str, ...], tuple[str, ...], Callable[[_Fig3Curves], Any]]] = {
    1: (("sgd", _FW1), MNIST_TASKS, _claim_sgd_slow),
    2: (("sgd", "tbptt"), MNIST_TASKS, _claim_tbptt_gain),
    3: (("sgd", "tbptt", _FW1), MNIST_TASKS, _claim_fw_stable),
    4: (("sgd", _BOTH), ("pixel_mnist",), functools.partial(_claim_combined, faster=True)),
    5: (("sgd", _BOTH), ("permuted_mnist",), functools.partial(_claim_combined, faster=False)),
    6: ((_FW1, _FW5), MNIST_TASKS, _claim_larger_k),
}
"""Per claim: the curves it needs, the datasets it speaks of, and its check on one
dataset's curves (whether it holds there, and what the curves show)."""


def _fig3_claim(number: int, chosen: dict[str, dict[str, Any]]) -> tuple[str, bool | None, str]:
    """Claim ``number`` (1-6) of the paper's Fig. 3 text, from each dataset's curves
    (``chosen``: task -> label -> run), each read at the last epoch all its curves reached:
    ``(what our curves show, holds, the epochs)``; holds is ``None`` where a curve it needs
    has not run."""
    needs, tasks, check = _FIG3_CHECKS[number]
    if any(label not in chosen.get(task, {}) for task in tasks for label in needs):
        return NOT_RUN, None, "–"
    curves = []
    for task in tasks:
        epoch = min(_epochs_reached(chosen[task][label]) for label in needs)
        name = "Pixel" if task == "pixel_mnist" else "Permuted"
        curves.append(_Fig3Curves(name, chosen[task], epoch))
    found = [check(c) for c in curves]
    holds = [h for h, _ in found]
    if number == 2:  # helps on Permuted, only slightly on Pixel
        verdict = holds[1] > 0 and holds[1] > holds[0]
    else:
        verdict = all(holds)
    epochs = " / ".join(f"{round(c.epoch, 1):g}" for c in curves)
    return "; ".join(shown for _, shown in found), verdict, epochs


FIG3_CLAIMS = (
    "SGD shows no or very slow convergence",
    "TBPTT helps on Permuted-MNIST, only slightly on Pixel-MNIST (with sporadic rises and falls "
    "of the loss)",
    "FW converges faster and more stably on both",
    "Pixel-MNIST: TBPTT + FW converges faster and reaches a higher accuracy than SGD",
    "Permuted-MNIST: TBPTT + FW eventually reaches a higher accuracy than SGD",
    "A larger K needs fewer gradient updates to converge",
)
"""The six claims of the paper's Fig. 3 text (its "baseline" there is SGD)."""


def fig3_claims_table(runs: list[dict[str, Any]]) -> list[str]:
    chosen, budgets = {}, []
    for task in MNIST_TASKS:
        preset, chosen[task] = fig3_runs(runs, task)
        if chosen[task]:
            first = next(iter(chosen[task].values()))
            budgets.append(
                f"{task}: `{preset}` preset, {first['data']['sizes']['train']} "
                f"training images, of {first['config']['epochs']} epochs asked"
            )
    lines = [
        "### Fig. 3's six claims, one by one",
        "",
        "From the curves of Fig. 3 (seed 0; "
        + ("; ".join(budgets) or NOT_RUN)
        + f"). Machine: {_machines([r for c in chosen.values() for r in c.values()])}. Each "
        "claim is read at the last epoch every curve it compares reached (Pixel / Permuted); "
        "CE: training cross-entropy, the mean over the epoch; % : test accuracy; a rise: the "
        f"training loss above the evaluation before it by more than {LOSS_RISE:.0%}. Claim 1 "
        "holds if SGD's accuracy is below FW's and its CE fell by less than half as much; "
        "2 if TBPTT's gain over SGD is positive on Permuted and larger there than on Pixel; "
        "3 if FW's CE is below SGD's and TBPTT's with no more rises; 4 if TBPTT + FW has "
        "the higher accuracy and lower CE, 5 the higher accuracy; 6 if K = 5 reaches K = 1's "
        "final CE in fewer updates. SGD's CE starts from its test loss at step 0. A claim "
        f"read before epoch {FIG3_READ_FROM} is marked early: the paper trained 200.",
        "",
        "| # | the paper's claim | what our curves show | holds | epoch |",
        "|---|---|---|---|---|",
    ]
    for number, claim in enumerate(FIG3_CLAIMS, start=1):
        shown, holds, epoch = _fig3_claim(number, chosen)
        verdict = "–" if holds is None else ("yes" if holds else "no")
        if holds is not None and min(float(e) for e in epoch.split(" / ")) < FIG3_READ_FROM:
            verdict += " (early)"
        lines.append(f"| {number} | {claim} | {shown} | {verdict} | {epoch} |")
    return lines


def build(runs: list[dict[str, Any]]) -> dict[str, bytes]:
    """The report's files, path relative to the output folder -> contents."""
    lines = [
        "# Reproduction results",
        "",
        "Generated by `python -m benchmarks.report` from the run files under `results/`; do "
        "not edit by hand. Paper numbers: Tables 1 and 2 of the poster (Yue et al., ICPR 2020, "
        "arXiv:2010.05397), copied into `benchmarks/report.py`. FW rows appear in two flavours: "
        "`alg1` (Algorithm 1 as written) and `authors` (the authors' code); see "
        "`benchmarks/registry/configs.py`.",
        "",
        "![Fig. 2](figures/fig2_adding.png)",
        "",
        "![Fig. 3](figures/fig3_mnist.png)",
        "",
        "![Table 2 curves](figures/table2_curves.png)",
        "",
    ]
    for preset in configs.PRESETS:
        lines += table1(runs, preset) + [""]
    for preset in configs.PRESETS:
        lines += table2(runs, preset) + [""]
    lines += k_outer_steps_table(runs) + [""]
    lines += fig3_claims_table(runs) + [""]
    lines += adding_table(runs) + [""]
    lines += adaptive_k_table(runs) + [""]
    lines += stalls_table(runs) + [""]
    return {
        "report.md": "\n".join(lines).encode(),
        "figures/fig2_adding.png": figure2(runs),
        "figures/table2_curves.png": figure_table2(runs),
        "figures/fig3_mnist.png": figure3(runs),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, bytes]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, help="where to write (default: --results)")
    args = parser.parse_args(argv)
    try:
        files = build(load_results(args.results))
    except ResultsError as error:
        parser.error(str(error))
    out = args.out or args.results
    for name, content in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    print(f"wrote {', '.join(str(out / name) for name in files)}")
    return files


if __name__ == "__main__":
    main()
