"""The one training loop: compiled calls of outer steps, and the actions of each evaluation
point.

Every experiment (each task, each method) goes through :func:`train`, or through
:func:`train_seeds`, which trains several seeds of one configuration in one compiled program.
The loop is :func:`_train`: from the start (or the newest checkpoint) to the last step, it
runs the compiled calls of one evaluation interval (``steps_per_call`` outer steps each, one
``lax.scan``, so the host only sees the model at evaluation points), then the actions of
that evaluation point, each a small piece with one job:

* stop a seed whose training went non-finite (``benchmarks.training.stopping``);
* evaluate (:class:`Evaluation`) and write the curves (:class:`Curves`, JSON Lines);
* save the state when due (``benchmarks.training.checkpoints.Saver``);
* report each record (``on_record``) and show progress (:class:`Progress`);
* stop after saving when SIGTERM or SIGINT came (:class:`~benchmarks.training.stopping.Stopped`).

What a step computes is ``benchmarks.training.step``'s; where it runs (seeds in one program,
devices of a mesh) is ``benchmarks.training.placement``'s. The data position and every key
are functions of the step, so a resumed run computes exactly what an uninterrupted one
would, and a finished run asked for more steps continues where it stopped. A checkpointed
run sent SIGTERM (a scheduler's preemption, ``timeout``) or SIGINT (Ctrl-C) saves at its next
evaluation point and raises ``Stopped``, so none of the work since the last save is lost; a
second signal ends the process at once. Saves also come every ``Checkpoints.every_s``
seconds or ``every_steps`` steps, which bounds what a SIGKILL loses.

A non-finite training loss stops the run with ``Diverged`` (naming the step and the loss;
under :func:`train_seeds` that seed alone stops, the others train on) unless the optimizer
skips non-finite updates (``optax.apply_if_finite``), in which case only non-finite
parameters stop it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import fw_optax
from benchmarks.training.checkpoints import Checkpoints, Saver
from benchmarks.training.curves import append_record, read_records
from benchmarks.training.placement import Placement
from benchmarks.training.step import (
    Batch,
    ModelState,
    Objective,
    Params,
    Stream,
    TrainState,
    generated_batches,
    make_step,
)
from benchmarks.training.stopping import Diverged, Stopped, freeze, nonfinite, stop_on_signals


@dataclasses.dataclass
class TrainResult:
    """What one run produced: curves, the final numbers and what they cost.

    ``train_curve`` holds the mean training loss of each evaluation interval, ``eval_curve``
    the headline test metric after it (and at step 0), both against outer steps; ``records``
    every measured row as written to the curves file.
    """

    steps: int
    grad_evals: float
    wall_time_s: float
    compile_time_s: float
    updates: int = 0
    batches: int = 0
    train_curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    eval_curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list, repr=False)
    skipped_updates: int | None = None
    trained_on: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Stretches of outer steps, ``{"machine", "from_step", "to_step"}``, the machine
    ``Checkpoints.machine`` (``None``: not recorded, as in checkpoints written before it was)."""
    diverged: Diverged | None = None
    """Under :func:`train_seeds`, a seed whose loss stopped being finite: where and how. Its
    ``steps`` and curves then end at its last finite evaluation; the other seeds go on."""

    @property
    def final_train(self) -> float:
        return self.train_curve[-1][1]

    @property
    def final_eval(self) -> float:
        return self.eval_curve[-1][1]


def train(
    *,
    objective: Objective,
    tx: optax.GradientTransformation,
    params: Params,
    stream: Stream,
    steps: int,
    eval_every: int,
    seed: int,
    model_state: ModelState = None,
    curves: Path | None = None,
    **options: Any,
) -> tuple[Params, ModelState, TrainResult]:
    """Trains ``params`` for ``steps`` outer steps, evaluating every ``eval_every``.

    Args:
      objective: the losses, the evaluation and how a step runs (full BPTT or TBPTT).
      tx: any optax transformation (``frank_wolfe`` chains included).
      params: initial parameters.
      stream: the training data.
      steps: outer optimizer steps; a multiple of ``eval_every``.
      eval_every: steps between evaluations.
      seed: the data seed (host shuffles, generated batches, dropout).
      model_state: non-parameter collections such as ``batch_stats`` (``{}`` if none).
      curves: a JSON Lines file; one record per evaluation is appended as it is measured.
      **options: the rest of :func:`train_seeds`'s keyword arguments.

    Returns:
      ``(params, model_state, result)``.

    Raises:
      Diverged: at the first non-finite training loss.
      Stopped: SIGTERM or SIGINT during a run with ``checkpoints``, once the state is saved.
    """
    state, (result,) = _train(
        objective=objective,
        tx=tx,
        params=params,
        model_state=model_state,
        stream=stream,
        steps=steps,
        eval_every=eval_every,
        seeds=(seed,),
        curves=(curves,),
        vmapped=False,
        **options,
    )
    return state.params, state.model_state, result


def train_seeds(
    *,
    objective: Objective,
    tx: optax.GradientTransformation,
    params: Params,
    stream: Stream,
    steps: int,
    eval_every: int,
    seeds: Sequence[int],
    model_state: ModelState = None,
    curves: Sequence[Path | None] | None = None,
    **options: Any,
) -> tuple[TrainState, list[TrainResult]]:
    """Trains one configuration for several seeds in one compiled program.

    Each seed's run is what :func:`train` with that seed computes (up to float rounding:
    the batched program may sum in another order): ``params``, ``model_state`` and
    ``objective.test`` carry a leading axis with one entry per seed (each seed's own
    initialization and test set), the optimizer state, data order and keys are the seed's.

    Args:
      seeds: the seeds, one per entry of the leading axis.
      curves: one JSON Lines file per seed (or ``None``).
      **options: as :func:`train`, plus: ``batches_per_step`` (mini-batches one outer step
        eats: K for the authors' FW flavour), ``updates_per_step`` (optimizer updates per
        outer step: TBPTT makes one per K chunks), ``grad_evals_per_step`` (what one outer
        step costs, in full-sequence gradients of one mini-batch; where the optimizer holds a
        ``fw_optax.FrankWolfeState``, the count it reports is used instead),
        ``steps_per_call`` (outer steps per jitted call, a divisor of ``eval_every``; default
        ``eval_every``), ``checkpoints`` (:class:`Checkpoints`: save, resume, extend),
        ``desc`` and ``progress`` (the progress bar), ``on_record`` (called with every
        record after it is written), ``mesh`` (a 1-D data mesh,
        ``benchmarks.training.parallel.data_mesh``: every mini-batch is split over its devices and
        every gradient, the inner Frank-Wolfe ones included, is the mean over them, so a
        step equals the one-device step on the whole batch, batch norm aside: each device
        normalizes with its own shard's statistics), ``local_gradients`` (with a mesh: the
        gradients stay each device's own, for ``frank_wolfe(..., local=True)`` which
        averages Δ_K itself), ``skip_nonfinite`` (the optimizer skips non-finite updates:
        only non-finite parameters stop the run), ``then`` (later phases, ``[(step, tx,
        batches_per_step), ...]``: from ``step`` on, train with ``tx``, carrying the
        optimizer state over, e.g. Frank-Wolfe's K switched from 1 to 5; generated data
        only, at multiples of ``eval_every``).

    Returns:
      ``(state, results)``: the final :class:`TrainState` (leading seed axis) and one
      :class:`TrainResult` per seed.

    Raises:
      Stopped: as :func:`train`. A seed whose loss stops being finite raises nothing: it
        stops there (its result's ``diverged`` says where) and the others train on.
    """
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(params)}
    if sizes != {len(seeds)}:
        raise ValueError(
            f"params need a leading axis of {len(seeds)} (one entry per seed {list(seeds)}), "
            f"got leading sizes {sorted(sizes, key=str)}"
        )
    return _train(
        objective=objective,
        tx=tx,
        params=params,
        model_state=model_state,
        stream=stream,
        steps=steps,
        eval_every=eval_every,
        seeds=seeds,
        curves=tuple(curves) if curves is not None else (None,) * len(seeds),
        vmapped=True,
        **options,
    )


class Phase(NamedTuple):
    """From outer step ``start`` on, train with ``tx``, each outer step eating
    ``batches_per_step`` mini-batches (a later phase carries the optimizer state over)."""

    start: int
    tx: optax.GradientTransformation
    batches_per_step: int


def _phases(first: Phase, then, steps: int, eval_every: int, generated: bool) -> list[Phase]:
    phases = [first, *(Phase(*phase) for phase in then)]
    starts = [phase.start for phase in phases]
    if starts != sorted(set(starts)) or not all(0 < s < steps for s in starts[1:]):
        raise ValueError(f"phases must start at increasing steps in (0, {steps}), got {starts}")
    if any(s % eval_every for s in starts):
        raise ValueError(f"phases must start at multiples of eval_every ({eval_every}): {starts}")
    if len(phases) > 1 and not generated:
        raise ValueError(
            "switching the optimizer mid-run needs generated data (host batches are read "
            "ahead at a fixed number per step)"
        )
    return phases


def _batches_done(phases: Sequence[Phase], step: int) -> int:
    """Mini-batches eaten by ``step`` outer steps, phase by phase."""
    total = 0
    bounds = [phase.start for phase in phases[1:]] + [math.inf]
    for phase, end in zip(phases, bounds, strict=True):
        total += max(0, min(step, end) - phase.start) * phase.batches_per_step
    return int(total)


class Programs:
    """The compiled call of each phase, ``(state, (indices, data)) -> (state, (losses, grad
    evals))`` over ``steps_per_call`` outer steps, compiled the first time a step of that phase
    runs; ``compile_time`` sums what compiling took."""

    def __init__(self, phases, placement: Placement, objective: Objective, stream: Stream,
                 shard_batches, grad_evals_per_step: float):  # fmt: skip
        self.phases, self.placement, self.objective = phases, placement, objective
        self.stream, self.shard_batches = stream, shard_batches
        self.grad_evals_per_step = grad_evals_per_step
        self.compile_time = 0.0
        self._compiled: dict[int, Any] = {}

    def at(self, step: int, state: TrainState, inputs: Any) -> Any:
        """The compiled call of the phase that ``step`` is in."""
        phase = max(i for i, p in enumerate(self.phases) if p.start <= step)
        if phase not in self._compiled:
            t0 = time.perf_counter()
            program = self.placement.compile(self._scan_steps(self.phases[phase]))
            self._compiled[phase] = program.lower(state, inputs).compile()
            self.compile_time += time.perf_counter() - t0
        return self._compiled[phase]

    def _scan_steps(self, phase: Phase) -> Callable[..., Any]:
        generate = self.stream.generate
        to_batches = generated_batches(generate, phase.batches_per_step) if generate else None
        to_batches = self.shard_batches(to_batches)
        step = make_step(
            self.objective,
            phase.tx,
            batches_per_step=phase.batches_per_step,
            to_batches=to_batches or (lambda key, data: data),
        )
        # TBPTT's updates are not Frank-Wolfe outer steps: its cost is the configured one.
        measured = self.objective.tbptt is None

        def counted_step(state, xs):
            state, loss = step(state, xs)
            evals = _inner_steps(state.opt_state) if measured else None
            return state, (loss, jnp.float32(self.grad_evals_per_step) if evals is None else evals)

        one_step = self.placement.per_seed(counted_step)
        return lambda state, xs: jax.lax.scan(one_step, state, xs)


def _feed(stream: Stream, seeds, start: int, steps: int, steps_per_call: int,
          batches_per_step: int, placement: Placement) -> Iterator[Any]:  # fmt: skip
    """Each call's inputs from step ``start`` on, ``(indices, host data or None)``, placed.
    Host data: ``[steps_per_call, (seeds,) batches_per_step, B, ...]``, each seed's own
    shuffle; the data position is a function of the step, so the iterators are replayed up
    to ``start``."""
    host = None
    if stream.generate is None:
        host = [stream.host_batches(seed) for seed in seeds]
        for batches in host:
            for _ in itertools.islice(batches, start * batches_per_step):
                pass
    for first in range(start, steps, steps_per_call):
        data = None
        if host is not None:
            data = placement.stack(
                [_call_data(batches, steps_per_call, batches_per_step) for batches in host]
            )
        yield placement.place_inputs((jnp.arange(first, first + steps_per_call), data))


def _call_data(batches: Iterator[Batch], steps: int, per_step: int) -> tuple[np.ndarray, ...]:
    group = [next(batches) for _ in range(steps * per_step)]
    return tuple(
        np.stack(arrays).reshape(steps, per_step, *arrays[0].shape)
        for arrays in zip(*group, strict=True)
    )


class Evaluation:
    """The evaluation action: every seed's test metrics at an evaluation point, as the records
    its curves hold (step, updates, mini-batches, gradient evaluations, wall time, the mean
    training loss of the interval, ``test_<metric>``, and the epoch for host data)."""

    def __init__(self, objective: Objective, placement: Placement, phases: Sequence[Phase],
                 updates_per_step: int, batches_per_epoch: int | None):  # fmt: skip
        self._evaluate = placement.evaluate(objective)
        self.test, self.runs = objective.test, placement.runs
        self.metric = f"test_{objective.metric}"
        self.phases, self.updates_per_step = phases, updates_per_step
        self.batches_per_epoch = batches_per_epoch

    def __call__(self, state: TrainState, done: int, train_loss: Sequence[float | None],
                 evals_done: Sequence[float], wall: float) -> list[dict[str, Any]]:  # fmt: skip
        metrics = self._evaluate(state.params, state.model_state, self.test)
        metrics = {k: np.asarray(v).reshape(self.runs) for k, v in metrics.items()}
        batches = _batches_done(self.phases, done)
        rows = []
        for r in range(self.runs):
            row: dict[str, Any] = {
                "step": done,
                "updates": done * self.updates_per_step,
                "batches": batches,
                "grad_evals": evals_done[r],
                "wall_time_s": wall,
                "train_loss": train_loss[r],
                **{f"test_{k}": float(v[r]) for k, v in metrics.items()},
            }
            if self.batches_per_epoch:
                row["epoch"] = batches / self.batches_per_epoch
            rows.append(row)
        return rows


class Curves:
    """The curves action: each seed's records, kept for its result and appended to its JSON
    Lines file (if any) as they are measured."""

    def __init__(self, paths: Sequence[Path | None]):
        self.paths = list(paths)
        self.history: list[list[dict[str, Any]]] = [[] for _ in self.paths]

    def resume(self, start: int) -> None:
        """Each file's records up to the resumed step ``start``."""
        self.history = [[r for r in read_records(p) if r["step"] <= start] for p in self.paths]

    def reach(self, start: int, live: Sequence[bool]) -> bool:
        """Whether every live seed's records reach ``start``."""
        return all(
            rows and rows[-1]["step"] == start
            for rows, alive in zip(self.history, live, strict=True)
            if alive
        )

    def restart(self, start: int, rows: Sequence[dict[str, Any]], live: Sequence[bool]) -> None:
        """Live seeds' curves start over at ``start`` with ``rows``."""
        if start and any(path is not None for path in self.paths):
            warnings.warn(
                f"the curves of the run resumed at step {start} do not reach it; they restart "
                "there",
                stacklevel=4,
            )
        fresh = zip(rows, self.history, live, strict=True)
        self.history = [[row] if alive else old for row, old, alive in fresh]

    def write(self) -> None:
        """Each file rewritten with its records so far."""
        for path, rows in zip(self.paths, self.history, strict=True):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def __call__(self, rows: Sequence[dict[str, Any]], live: Sequence[bool]) -> None:
        for path, history, row, alive in zip(self.paths, self.history, rows, live, strict=True):
            if alive:
                history.append(row)
                if path is not None:
                    append_record(path, row)


class Progress:
    """The progress action: a bar of outer steps showing the live seeds' mean training loss
    and test metric."""

    def __init__(self, steps: int, start: int, desc: str, enabled: bool, metric: str):
        self.metric = metric
        self.bar = tqdm(total=steps, initial=start, desc=desc, disable=not enabled,
                        leave=False, dynamic_ncols=True)  # fmt: skip

    def __call__(self, steps: int, rows: Sequence[dict[str, Any]]) -> None:
        self.bar.update(steps)
        self.bar.set_postfix(
            loss=f"{np.mean([row['train_loss'] for row in rows]):.4f}",
            **{self.metric: f"{np.mean([row[self.metric] for row in rows]):.4f}"},
        )

    def close(self) -> None:
        self.bar.close()


def _train(
    *,
    objective: Objective,
    tx: optax.GradientTransformation,
    params: Params,
    model_state: ModelState,
    stream: Stream,
    steps: int,
    eval_every: int,
    seeds: tuple[int, ...],
    curves: tuple[Path | None, ...],
    vmapped: bool,
    batches_per_step: int = 1,
    updates_per_step: int = 1,
    grad_evals_per_step: float = 1.0,
    steps_per_call: int | None = None,
    checkpoints: Checkpoints | None = None,
    desc: str = "train",
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    skip_nonfinite: bool = False,
    local_gradients: bool = False,
    then: Sequence[tuple[int, optax.GradientTransformation, int]] = (),
) -> tuple[TrainState, list[TrainResult]]:
    """The loop behind :func:`train` (one run, ``vmapped=False``) and :func:`train_seeds`:
    set up, resume, then one compiled program per evaluation interval, each followed by the
    actions (divergence, evaluation, curves, checkpoint, callback, progress, stop)."""
    steps_per_call = eval_every if steps_per_call is None else steps_per_call
    _check_budget(steps, eval_every, steps_per_call)
    if len(curves) != len(seeds):
        raise ValueError(f"curves needs one file per seed ({len(seeds)}), got {len(curves)}")
    generated = stream.generate is not None
    phases = _phases(Phase(0, tx, batches_per_step), then, steps, eval_every, generated)
    split = mesh is not None and mesh.size > 1
    placement = Placement(len(seeds), vmapped, mesh if split else None, generated)
    objective, shard_batches = placement.split(objective, stream, local_gradients)
    model_state = {} if model_state is None else model_state
    state = placement.init_state(tx, params, model_state, seeds)
    for phase in phases[1:]:
        _check_same_state(phase.tx, None if vmapped else params, state.opt_state)
    evaluate = Evaluation(objective, placement, phases, updates_per_step, stream.batches_per_epoch)
    history, saver = Curves(curves), Saver(checkpoints)
    run = _Seeds(*_resume(saver, history, placement.place(state), steps, grad_evals_per_step))
    run.state = placement.place(run.state)
    if not history.reach(run.start, run.live):
        rows = evaluate(run.state, run.start, [None] * len(seeds), run.evals_done, run.wall)
        history.restart(run.start, rows, run.live)
    history.write()

    # Inputs of the next call are read while the device runs the current one (async dispatch).
    feed = _feed(stream, seeds, run.start, steps, steps_per_call, batches_per_step, placement)
    inputs = next(feed, None)
    programs = Programs(phases, placement, objective, stream, shard_batches, grad_evals_per_step)
    if inputs is not None:
        programs.at(run.start, run.state, inputs)
    bar = Progress(steps, run.start, desc, progress, evaluate.metric)
    check = functools.partial(nonfinite, seeds=seeds, desc=desc, skip_nonfinite=skip_nonfinite,
                              vmapped=vmapped)  # fmt: skip
    saver.begin()
    # A run stopped by an exception (a kill, a failing callback) still finishes writing its
    # last checkpoint, so a resumed run never races a half-written one; a signal saves first.
    try:
        with stop_on_signals(saver.enabled) as signals:
            for interval in range(run.start, steps, eval_every):
                if not any(run.live):
                    break
                before = run.state
                program = programs.at(interval, run.state, inputs)
                run.state, inputs, losses, evals, seconds = _interval(
                    program, run.state, inputs, feed, eval_every // steps_per_call, len(seeds)
                )
                run.wall += seconds
                run.drop_diverged(check(losses, run.state, interval), before, placement)
                if not any(run.live):
                    break
                train_loss = run.count(losses, evals, skip_nonfinite)
                done = interval + eval_every
                rows = evaluate(run.state, done, train_loss, run.evals_done, run.wall)
                history(rows, run.live)
                stopping = bool(signals) and done < steps
                saver(run.state, done, run.wall, run.diverged, now=done == steps or stopping)
                rows = [row for row, alive in zip(rows, run.live, strict=True) if alive]
                for row in rows if on_record is not None else ():
                    on_record(row)
                bar(eval_every, rows)
                if stopping:
                    raise Stopped(done, signals[0])
    finally:
        bar.close()
        saver.close()
    return run.state, _results(run, history, phases, programs, saver, evaluate.metric, steps,
                               updates_per_step, vmapped)  # fmt: skip


@dataclasses.dataclass
class _Seeds:
    """What the loop carries from one interval to the next: the state, the outer step it
    started from, the wall time so far, and per seed its divergence and gradient count."""

    state: TrainState
    start: int
    wall: float
    diverged: list[Diverged | None]
    evals_done: list[float]

    @property
    def live(self) -> list[bool]:
        return [gone is None for gone in self.diverged]

    def drop_diverged(
        self, errors: dict[int, Diverged], before: TrainState, placement: Placement
    ) -> None:
        """Marks the seeds that went non-finite in the interval (one run raises at once) and
        puts them back to their last finite state, so the others train on."""
        for r, error in errors.items():
            if not placement.vmapped:
                raise error
            if self.diverged[r] is None:
                self.diverged[r] = error
        if any(self.live) and not all(self.live):
            self.state = placement.place(freeze(self.state, before, self.live))

    def count(self, losses: np.ndarray, evals: np.ndarray, skip_nonfinite: bool) -> list[float]:
        """Adds the interval's gradient evaluations of the live seeds; returns each seed's
        mean training loss over it (skipped steps have NaN losses)."""
        mean = np.nanmean if skip_nonfinite else np.mean
        more = evals.sum(axis=0)
        self.evals_done = [
            so_far + float(extra) if alive else so_far
            for so_far, extra, alive in zip(self.evals_done, more, self.live, strict=True)
        ]
        return [float(x) for x in mean(losses, axis=0)]


def _results(
    run: _Seeds,
    history: Curves,
    phases: Sequence[Phase],
    programs: Programs,
    saver: Saver,
    metric: str,
    steps: int,
    updates_per_step: int,
    vmapped: bool,
) -> list[TrainResult]:
    """One :class:`TrainResult` per seed, read from its curve (a diverged seed ends at its
    last evaluation)."""
    results = []
    for r, (rows, run_evals, gone) in enumerate(
        zip(history.history, run.evals_done, run.diverged, strict=True)
    ):
        end = steps if gone is None else rows[-1]["step"]
        results.append(
            TrainResult(
                steps=end,
                grad_evals=run_evals,
                wall_time_s=run.wall,
                compile_time_s=programs.compile_time,
                updates=end * updates_per_step,
                batches=_batches_done(phases, end),
                train_curve=[
                    (x["step"], x["train_loss"]) for x in rows if x["train_loss"] is not None
                ],
                eval_curve=[(x["step"], x[metric]) for x in rows],
                records=rows,
                skipped_updates=_skipped(run.state.opt_state, r if vmapped else None),
                trained_on=saver.trained_on(end),
                diverged=gone,
            )
        )
    return results


def _resume(
    saver: Saver, history: Curves, state: TrainState, steps: int, grad_evals_per_step: float
) -> tuple[TrainState, int, float, list[Diverged | None], list[float]]:
    """Where the run starts: ``(state, step, wall time, diverged per seed, gradient
    evaluations per seed)``, from step 0 or the newest checkpoint, with the curves read up to
    it."""
    runs = len(history.paths)
    resumed = saver.resume(state, steps)
    if resumed is None:
        return state, 0, 0.0, [None] * runs, [0.0] * runs
    start = resumed.step
    diverged: list[Diverged | None] = [None] * runs
    if resumed.diverged is not None:
        diverged = [None if d is None else Diverged.from_dict(d) for d in resumed.diverged]
    history.resume(start)
    # A seed's count is its curve's where the curve reaches the step (or the seed stopped).
    evals_done = [
        rows[-1]["grad_evals"]
        if rows and (rows[-1]["step"] == start or gone is not None)
        else start * grad_evals_per_step
        for rows, gone in zip(history.history, diverged, strict=True)
    ]
    return resumed.state, start, resumed.wall_time_s, diverged, evals_done


def _interval(program, state: TrainState, inputs, feed: Iterator[Any], calls: int, runs: int):
    """Runs ``calls`` compiled calls: ``(state, next inputs, losses [steps, runs], gradient
    evaluations [steps, runs], seconds)``. The results are read back once, at the end, so the
    calls in between dispatch asynchronously while the next inputs are read."""
    t0 = time.perf_counter()
    losses, evals = [], []
    for _ in range(calls):
        state, (call_losses, call_evals) = program(state, inputs)
        inputs = next(feed, None)
        losses.append(call_losses)
        evals.append(call_evals)
    losses = np.asarray(jnp.concatenate(losses)).reshape(-1, runs)
    evals = np.asarray(jnp.concatenate(evals)).reshape(-1, runs)
    jax.block_until_ready(state)
    return state, inputs, losses, evals, time.perf_counter() - t0


def _check_budget(steps: int, eval_every: int, steps_per_call: int) -> None:
    if steps < 1 or eval_every < 1 or steps % eval_every:
        raise ValueError(
            f"steps must be a positive multiple of eval_every, got steps={steps}, "
            f"eval_every={eval_every}."
        )
    if steps_per_call < 1 or eval_every % steps_per_call:
        raise ValueError(f"steps_per_call ({steps_per_call}) must divide eval_every ({eval_every})")


def _check_same_state(tx, params, opt_state) -> None:
    """A later phase must carry the optimizer state over: the same structure and shapes."""
    if params is None:  # vmapped: compare the structure only
        return
    ours = jax.tree.structure(opt_state)
    theirs = jax.tree.structure(jax.eval_shape(tx.init, params))
    if ours != theirs:
        raise ValueError(
            f"a later phase's optimizer state {theirs} differs from the first's {ours}: it "
            "could not carry the state over"
        )


def _inner_steps(opt_state: Any) -> jax.Array | None:
    """The gradients the last Frank-Wolfe outer step evaluated, if ``opt_state`` has one."""
    stats = fw_optax.frank_wolfe_stats(opt_state)
    return None if stats is None else stats["inner_steps"].astype(jnp.float32)


def _skipped(opt_state: Any, run: int | None) -> int | None:
    """Updates ``optax.apply_if_finite`` skipped (run ``run`` of a vmapped state), if any."""
    total = optax.tree_utils.tree_get(opt_state, "total_notfinite")
    if total is None:
        return None
    total = np.asarray(total)
    return int(total if run is None else total[run])
