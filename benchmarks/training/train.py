"""The one training loop: jit-compiled calls of optimizer steps, curves, checkpoints.

Every experiment (each task, each method) goes through :func:`train`, or through
:func:`train_seeds`, which trains several seeds of one configuration in one compiled program
(``jax.vmap`` over their parameters, optimizer states, data and keys). One jitted call runs
``steps_per_call`` outer steps as one ``lax.scan``, so the host only sees the model at
evaluation points. Each outer step eats ``batches_per_step`` mini-batches: one, or K for the
authors' Frank-Wolfe flavour, where batch 1 gives the gradient at ω and batches 2..K are handed
to ``frank_wolfe`` as ``inner_batches``. Every optimizer is driven the same way,
``tx.update(grads, state, params, value_fn=..., inner_batches=...)``; transformations that do
not need them ignore the extra arguments (optax's rule).

The whole training state is one pytree, :class:`TrainState` (step, parameters, model state
such as batch-norm statistics, optimizer state, and the run's base key as key data), which
orbax saves and restores as it is. Data comes from a :class:`Stream`: generated from keys
inside the jitted step (the adding task: step ``i`` reads ``fold_in(key(seed), i)``), or read
on the host by the shared ``batches`` iterator, whose mini-batches for one call are stacked
and scanned over. The data position and every key are functions of the step, so a resumed
run computes exactly what an uninterrupted one would, and a finished run asked for more steps
continues where it stopped. A checkpointed run sent SIGTERM (a scheduler's preemption,
``timeout``) or SIGINT (Ctrl-C) saves at its next evaluation point and raises
:class:`Stopped`, so none of the work since the last save is lost; a second signal ends the
process at once. Saves also come every ``Checkpoints.every_s`` seconds or ``every_steps``
steps, which bounds what a SIGKILL loses.

Curves go to a JSON Lines file as they are measured. A non-finite training loss stops the run
with :class:`Diverged` (naming the step and the loss; under :func:`train_seeds` that seed alone
stops, the others train on) unless the optimizer skips non-finite updates
(``optax.apply_if_finite``), in which case only non-finite parameters stop it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

import fw_optax
from benchmarks.training import parallel
from benchmarks.training.curves import append_record, read_records
from benchmarks.training.data import batches
from benchmarks.training.tbptt import tbptt_step

Batch = Any
Params = Any
ModelState = Any
Array = jax.Array

_DROPOUT_STREAM = 2**31 - 1  # fold_in index separating dropout keys from data keys
KEEP_CHECKPOINTS = 2
"""Checkpoints kept per run: the latest, and the one before it to fall back to."""


def split_variables(variables: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Split ``model.init``'s variables into ``(params, state)``; state is e.g. ``batch_stats``."""
    state = {name: value for name, value in variables.items() if name != "params"}
    return variables["params"], state


def make_train_loss(
    model: Any, loss_fn: Callable[[Array, Array], Array]
) -> Callable[..., tuple[Array, dict[str, Any]]]:
    """A pure training loss ``f(params, state, x, y, dropout_key=None) -> (loss, new_state)``.

    ``model`` is a Flax module such as ``models.RNNModel``, run with ``train=True``; ``state``
    holds the non-parameter collections (``batch_stats``, empty without batch norm) and
    ``new_state`` their updated values.

    With ``frank_wolfe``: take the outer gradient with ``has_aux`` and keep its
    ``new_state``, the running statistics then advance once per outer update, from the
    k = 1 evaluation at the current weights. The inner steps k = 2..K call a closure that
    feeds the same ``state`` and drops the returned statistics, so ``value_fn`` is a pure
    scalar function of the weights; inside it batch norm still normalizes with the
    statistics of the batch it is given (train mode), as PyTorch does in the authors' code.
    Their running averages also moved at every inner forward (K per update); ours move
    once, so they average fewer batches but only batches seen at unperturbed weights.

    Example::

        f = make_train_loss(model, mse_loss)
        (loss, new_state), g = jax.value_and_grad(f, has_aux=True)(params, state, x, y)
        value_fn = lambda w, b: f(w, state, b[0], b[1])[0]
        updates, opt_state = tx.update(g, opt_state, params, value_fn=value_fn,
                                       inner_batches=(xs, ys))  # leading axis K - 1
        params, state = optax.apply_updates(params, updates), new_state
    """

    def loss(
        params: Any, state: dict[str, Any], x: Array, y: Array, dropout_key: Array | None = None
    ) -> tuple[Array, dict[str, Any]]:
        variables = {"params": params, **state}
        rngs = None if dropout_key is None else {"dropout": dropout_key}
        if state:
            out, new_state = model.apply(variables, x, train=True, mutable=list(state), rngs=rngs)
        else:
            out, new_state = model.apply(variables, x, train=True, rngs=rngs), state
        return loss_fn(out, y), dict(new_state)

    return loss


@flax.struct.dataclass
class TrainState:
    """Everything a run carries from one outer step to the next; orbax saves it as it is.

    Attributes:
      step: outer steps done (int32).
      params: the parameters.
      model_state: non-parameter collections such as ``batch_stats`` (``{}`` if none).
      opt_state: the optimizer's state.
      rng: key data of the run's base key, ``jax.random.key_data(key(seed))``; data and
        dropout keys are folded from it and the step, so it never changes.

    Under :func:`train_seeds` every field but ``step`` has a leading axis, one entry per seed.
    """

    step: Array
    params: Params
    model_state: ModelState
    opt_state: Any
    rng: Array

    @classmethod
    def create(cls, params: Params, model_state: ModelState, tx, seed: int) -> TrainState:
        return cls(
            step=jnp.zeros([], jnp.int32),
            params=params,
            model_state={} if model_state is None else model_state,
            opt_state=tx.init(params),
            rng=jax.random.key_data(jax.random.key(seed)),
        )


class Diverged(RuntimeError):
    """Training produced a non-finite loss (or, when updates are skipped, parameters)."""

    def __init__(self, message: str, *, step: int, loss: float, seed: int | None = None):
        super().__init__(message)
        self.step, self.loss, self.seed = step, loss, seed

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "loss": str(self.loss), "seed": self.seed, "message": str(self)}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Diverged:
        return cls(saved["message"], step=saved["step"], loss=float(saved["loss"]),
                   seed=saved["seed"])  # fmt: skip


class CheckpointError(RuntimeError):
    """No checkpoint in the folder can be read."""


class Stopped(Exception):
    """SIGTERM (a job scheduler, ``timeout``, ``kill``) or SIGINT (Ctrl-C) stopped a
    checkpointed run at its next evaluation point, after saving that step: the same command
    continues from it. ``signum`` is the signal."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at step {step}, which is saved: run the same command again "
            "to continue"
        )
        self.step = step
        self.signum = signum


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stop_on_signals(enabled: bool) -> tuple[list[int], Callable[[], None]]:
    """While enabled (until the returned function is called), SIGTERM and SIGINT (Ctrl-C)
    only append their number to the returned list, which the loop honours at its next
    evaluation point by saving and stopping; a second signal ends the process at once.
    Python runs signal handlers in the main thread only, so elsewhere both signals keep their
    usual effect."""
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        return received, lambda: None

    def handler(signum, frame):
        if received:  # the second one: the default action, now
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)

    return received, restore


@dataclasses.dataclass(frozen=True)
class TBPTT:
    """Truncated BPTT: how ``benchmarks.training.tbptt.tbptt_step`` runs the model chunk by chunk.

    Attributes:
      chunk_fn: ``chunk_fn(model_state) -> (params, carry, x_chunk) -> (carry, y)``.
      loss_fn: the head's loss ``loss_fn(y, labels)``.
      chunk_length: L; it divides the sequence length.
      initial_carry: ``initial_carry(batch_size)``, the zero carry.
      inner_steps: chunks per optimizer update (K of ``frank_wolfe``, 1 otherwise).
    """

    chunk_fn: Callable[[ModelState], Callable[..., Any]]
    loss_fn: Callable[[Array, Array], Array]
    chunk_length: int
    initial_carry: Callable[[int], Any]
    inner_steps: int = 1


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the loop trains and measures.

    Attributes:
      loss: ``loss(params, model_state, batch, key) -> (loss, new_model_state)`` in training
        mode; ``key`` feeds dropout.
      evaluate: ``evaluate(params, model_state, test) -> {"loss": ..., ...}``, jittable; the
        first entry named by ``metric`` is the one shown and plotted.
      test: the test data handed to ``evaluate`` (device arrays, not baked into the program).
      metric: the key of ``evaluate``'s result that is the headline number.
      project: applied to params after every update (e.g. IndRNN's recurrent clip).
      tbptt: train by truncated BPTT instead of full-sequence gradients.
    """

    loss: Callable[[Params, ModelState, Batch, Array], tuple[Array, ModelState]]
    evaluate: Callable[[Params, ModelState, Any], dict[str, Array]]
    test: Any
    metric: str = "loss"
    project: Callable[[Params], Params] | None = None
    tbptt: TBPTT | None = None


@dataclasses.dataclass(frozen=True)
class Stream:
    """Where mini-batches come from: ``generate(key)`` on device, or ``arrays`` on the host.

    Host arrays are read by ``benchmarks.training.data.batches`` (seeded, reshuffled every epoch,
    ``transform`` applied on every read, e.g. fresh noise).
    """

    generate: Callable[[Array], Batch] | None = None
    arrays: tuple[np.ndarray, ...] | None = None
    batch_size: int = 0
    transform: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if (self.generate is None) == (self.arrays is None):
            raise ValueError("a Stream needs exactly one of generate and arrays")
        if self.arrays is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def batches_per_epoch(self) -> int | None:
        if self.arrays is None:
            return None
        return len(self.arrays[0]) // self.batch_size

    def host_batches(self, seed: int) -> Iterator[Batch]:
        return batches(
            self.arrays, self.batch_size, seed=seed, epochs=None, transform=self.transform
        )


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


def make_step(
    objective: Objective,
    tx: optax.GradientTransformation,
    *,
    batches_per_step: int = 1,
    to_batches: Callable[[Array, Any], Batch] = lambda key, data: data,
) -> Callable[[TrainState, tuple[Array, Any]], tuple[TrainState, Array]]:
    """One outer step as a ``lax.scan`` body: ``(state, (i, data)) -> (state, loss)``.

    ``to_batches(data_key, data)`` gives the step's mini-batches stacked
    ``[batches_per_step, ...]`` (generated from ``data_key = fold_in(key(seed), i)``, or the
    host's ``data`` as it is). The loss returned is the training loss of the first batch at
    the weights before the step. Dropout keys are ``fold_in(dropout_base(seed), i)``, split
    over the step's batches.
    """
    tx = optax.with_extra_args_support(tx)
    project = objective.project or (lambda params: params)

    def step(state: TrainState, xs: tuple[Array, Any]) -> tuple[TrainState, Array]:
        index, data = xs
        base = jax.random.wrap_key_data(state.rng)
        stacked = to_batches(jax.random.fold_in(base, index), data)
        dropout_base = jax.random.fold_in(base, _DROPOUT_STREAM)
        keys = jax.random.split(jax.random.fold_in(dropout_base, index), batches_per_step)
        first = jax.tree.map(lambda a: a[0], stacked)
        params, model_state, opt_state = state.params, state.model_state, state.opt_state
        if objective.tbptt is not None:
            params, opt_state, loss = _tbptt_update(
                objective, tx, params, model_state, opt_state, first, keys[0]
            )
            new_model_state = model_state
        else:
            grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
            (loss, new_model_state), grads = grad_fn(params, model_state, first, keys[0])
            if batches_per_step > 1:
                extra = {
                    "value_fn": lambda w, b: objective.loss(w, model_state, b[0], b[1])[0],
                    "inner_batches": (jax.tree.map(lambda a: a[1:], stacked), keys[1:]),
                }
            else:
                extra = {"value_fn": lambda w: objective.loss(w, model_state, first, keys[0])[0]}
            updates, opt_state = tx.update(grads, opt_state, params, **extra)
            params = optax.apply_updates(params, updates)
        state = state.replace(
            step=state.step + 1,
            params=project(params),
            model_state=new_model_state,
            opt_state=opt_state,
        )
        return state, loss

    return step


def _tbptt_update(objective, tx, params, model_state, opt_state, batch, key):
    """``benchmarks.training.tbptt.tbptt_step`` on one batch; the loss is the full-sequence loss
    before it."""
    spec = objective.tbptt
    x, y = batch[0], batch[1]
    loss, _ = objective.loss(params, model_state, batch, key)
    params, opt_state, _ = tbptt_step(
        spec.chunk_fn(model_state),
        spec.loss_fn,
        tx,
        params,
        opt_state,
        x,
        y,
        chunk_length=spec.chunk_length,
        initial_carry=spec.initial_carry(x.shape[0]),
        inner_steps=spec.inner_steps,
    )
    return params, opt_state, loss


def _generated(generate: Callable[[Array], Batch], batches_per_step: int):
    """``(key, _) -> batches [batches_per_step, ...]``; one batch reads the step's key itself."""

    def to_batches(key, data):
        del data
        if batches_per_step == 1:
            return jax.tree.map(lambda a: a[None], generate(key))
        return jax.vmap(generate)(jax.random.split(key, batches_per_step))

    return to_batches


def make_steps_fn(
    loss_fn: Callable[[Params, Batch], jax.Array],
    tx: optax.GradientTransformation,
    make_batch: Callable[[Any], Batch],
) -> Callable[[Params, Any, Any], tuple[Params, Any, jax.Array]]:
    """A jitted function running one optimizer step per key in ``keys``.

    The plain case of :func:`train`'s calls (no model state, one generated batch per step),
    for ``benchmarks.perf.fw_suite``: ``run_steps(params, opt_state, keys) -> (params, opt_state,
    losses)``; step ``i`` reads the batch ``make_batch(keys[i])``.
    """
    objective = Objective(
        loss=lambda params, state, batch, key: (loss_fn(params, batch), state),
        evaluate=lambda params, state, test: {},
        test=None,
    )
    generate = _generated(make_batch, 1)
    # The host hands the keys in as the steps' data; the state's own key goes unused.
    step = make_step(objective, tx, to_batches=lambda unused_key, key: generate(key, None))

    @jax.jit
    def run_steps(params, opt_state, keys):
        rng = jax.random.key_data(jax.random.key(0))
        state = TrainState(jnp.zeros([], jnp.int32), params, {}, opt_state, rng)
        state, losses = jax.lax.scan(step, state, (jnp.arange(keys.shape[0]), keys))
        return state.params, state.opt_state, losses

    return run_steps


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where and how often :func:`train` saves its state with orbax.

    Attributes:
      directory: the checkpoint folder (created on the first save).
      every_s: save at an evaluation point once this many seconds passed since the last
        save (0: at every evaluation); the last step is always saved.
      every_steps: if set, save at the first evaluation point this many outer steps or more
        after the last save instead (``every_s`` is then not used). Either way a SIGKILL loses
        at most the steps since the last save, about ``every_s`` seconds or ``every_steps``
        steps (rounded up to an evaluation point).
      meta: JSON-able description of the run; resuming refuses a checkpoint whose ``meta``
        differs (another configuration wrote it). Leave the budget (total steps) out of it:
        a run asked for more steps than its checkpoint holds continues from there.
    """

    directory: Path
    every_s: float = 60.0
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    machine: dict[str, Any] | None = None
    """What trains this stretch of the run (``benchmarks.machine.machine()``; not matched on
    resume). Each checkpoint lists the stretches before it with their machines, so a run
    resumed on another machine says where each of its steps ran (``TrainResult.trained_on``)."""
    every_steps: int | None = None

    def __post_init__(self) -> None:
        if not self.every_s >= 0:
            raise ValueError(f"every_s must be >= 0 seconds, got every_s={self.every_s!r}")
        if self.every_steps is not None and (
            isinstance(self.every_steps, bool)
            or not isinstance(self.every_steps, int)
            or self.every_steps < 1
        ):
            raise ValueError(
                f"every_steps must be an int >= 1, got every_steps={self.every_steps!r}"
            )

    def due(self, steps_since: int, saved_at: float) -> bool:
        """Whether an evaluation point ``steps_since`` steps after the last save (made at
        ``time.perf_counter()`` = ``saved_at``) is due a save."""
        if self.every_steps is not None:
            return steps_since >= self.every_steps
        return time.perf_counter() - saved_at >= self.every_s


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
    """The loop behind :func:`train` (one run, ``vmapped=False``) and :func:`train_seeds`."""
    steps_per_call = eval_every if steps_per_call is None else steps_per_call
    if steps < 1 or eval_every < 1 or steps % eval_every:
        raise ValueError(
            f"steps must be a positive multiple of eval_every, got steps={steps}, "
            f"eval_every={eval_every}."
        )
    if steps_per_call < 1 or eval_every % steps_per_call:
        raise ValueError(f"steps_per_call ({steps_per_call}) must divide eval_every ({eval_every})")
    if len(curves) != len(seeds):
        raise ValueError(f"curves needs one file per seed ({len(seeds)}), got {len(curves)}")
    model_state = {} if model_state is None else model_state
    generated = stream.generate is not None
    phases = [(0, tx, batches_per_step), *then]
    _check_phases(phases, steps, eval_every, generated)
    split = mesh is not None and mesh.size > 1
    if split:
        objective, shard_batches = _data_parallel(objective, stream, mesh, local_gradients)
    measured = objective.tbptt is None
    # Under vmap every field but the step has a leading seed axis, and so has host data.
    state_axes = TrainState(step=None, params=0, model_state=0, opt_state=0, rng=0)
    data_axes = (None, None if generated else 0)

    def scan_steps_of(phase_tx, phase_batches):
        """``(state, (indices, data)) -> (state, (losses, grad evals))`` of one phase."""
        to_batches = _generated(stream.generate, phase_batches) if generated else None
        if split:
            to_batches = shard_batches(to_batches)
        step = make_step(
            objective,
            phase_tx,
            batches_per_step=phase_batches,
            to_batches=to_batches or (lambda key, data: data),
        )

        def counted_step(state, xs):
            state, loss = step(state, xs)
            evals = _inner_steps(state.opt_state) if measured else None
            return state, (loss, jnp.float32(grad_evals_per_step) if evals is None else evals)

        one_step = (
            jax.vmap(counted_step, in_axes=(state_axes, data_axes), out_axes=(state_axes, 0))
            if vmapped
            else counted_step
        )

        def scan_steps(state, xs):
            return jax.lax.scan(one_step, state, xs)

        return scan_steps

    def init_state(params, model_state, rng):
        return TrainState(jnp.zeros([], jnp.int32), params, model_state, tx.init(params), rng)

    rngs = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
    if vmapped:
        state = jax.jit(jax.vmap(init_state, out_axes=state_axes))(params, model_state, rngs)
        evaluate = jax.jit(jax.vmap(objective.evaluate))
    else:
        state = init_state(params, model_state, rngs[0])
        evaluate = jax.jit(objective.evaluate)

    # Host data of one call: [steps_per_call, (seeds,) batches_per_step, B, ...].
    batch_axis = 3 if vmapped else 2
    if split:
        data_spec = P() if generated else parallel.batch_spec(batch_axis)

        def jitted(scan_steps):
            return parallel.data_parallel(
                scan_steps, mesh, in_specs=(P(), (P(), data_spec)), out_specs=P()
            )

        replicated = jax.sharding.NamedSharding(mesh, P())

        def place(tree):
            return jax.device_put(tree, replicated)

        def place_inputs(inputs):
            indices, data = inputs
            data = place(data) if generated else parallel.shard_batch(data, mesh, batch_axis)
            return place(indices), data
    else:
        jitted = jax.jit

        def place(tree):
            return tree

        place_inputs = place

    for _, phase_tx, _ in then:
        _check_same_state(phase_tx, params if not vmapped else None, state.opt_state)
    state = place(state)
    per_epoch = stream.batches_per_epoch
    runs = len(seeds)

    def record(done: int, train_loss: list[float | None], wall: float) -> list[dict[str, Any]]:
        metrics = evaluate(state.params, state.model_state, objective.test)
        metrics = {k: np.asarray(v).reshape(runs) for k, v in metrics.items()}
        rows = []
        for r in range(runs):
            row: dict[str, Any] = {
                "step": done,
                "updates": done * updates_per_step,
                "batches": _batches_done(phases, done),
                "grad_evals": evals_done[r],
                "wall_time_s": wall,
                "train_loss": train_loss[r],
                **{f"test_{k}": float(v[r]) for k, v in metrics.items()},
            }
            if per_epoch:
                row["epoch"] = done * batches_per_step / per_epoch
            rows.append(row)
        return rows

    manager = _manager(checkpoints)
    start, wall = 0, 0.0
    earlier: list[dict[str, Any]] = []  # stretches trained before the checkpoint resumed
    here = checkpoints.machine if checkpoints is not None else None
    history: list[list[dict[str, Any]]] = [[] for _ in seeds]
    evals_done = [0.0] * runs
    # Under train_seeds a seed whose loss stops being finite is frozen at its last finite
    # evaluation (its state kept, its curves ended) while the others train on.
    diverged: list[Diverged | None] = [None] * runs
    if manager is not None and manager.all_steps():
        state, start, wall, earlier, saved_diverged = _restore(manager, checkpoints, state)
        if saved_diverged is not None:
            diverged = [None if d is None else Diverged.from_dict(d) for d in saved_diverged]
        if start > steps:
            raise ValueError(
                f"the checkpoint in {checkpoints.directory} is at step {start}, beyond the "
                f"{steps} steps asked for: ask for at least {start}, or start over"
            )
        state = place(state)
        history = [[row for row in read_records(c) if row["step"] <= start] for c in curves]
        evals_done = [
            rows[-1]["grad_evals"]
            if rows and (rows[-1]["step"] == start or gone is not None)
            else start * grad_evals_per_step
            for rows, gone in zip(history, diverged, strict=True)
        ]
    live = [gone is None for gone in diverged]
    reached = [rows and rows[-1]["step"] == start for rows in history]
    if not all(got for got, alive in zip(reached, live, strict=True) if alive):
        if start and any(path is not None for path in curves):
            warnings.warn(
                f"the curves of the run resumed at step {start} do not reach it; they restart "
                "there",
                stacklevel=2,
            )
        first_rows = record(start, [None] * runs, wall)
        history = [[row] if alive else rows
                   for row, rows, alive in zip(first_rows, history, live, strict=True)]  # fmt: skip
    for path, rows in zip(curves, history, strict=True):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def call_inputs(first: int, host: list[Iterator[Batch]] | None):
        indices = jnp.arange(first, first + steps_per_call)
        if host is None:
            return indices, None
        per_run = []
        for it in host:
            group = [next(it) for _ in range(steps_per_call * batches_per_step)]
            per_run.append(
                tuple(
                    np.stack(arrays).reshape(steps_per_call, batches_per_step, *arrays[0].shape)
                    for arrays in zip(*group, strict=True)
                )
            )
        if not vmapped:
            return indices, per_run[0]
        return indices, tuple(np.stack(parts, axis=1) for parts in zip(*per_run, strict=True))

    host = None
    if not generated:
        host = [stream.host_batches(s) for s in seeds]
        # The data position is a function of the step: replay the iterators up to it.
        for it in host:
            for _ in itertools.islice(it, start * batches_per_step):
                pass
    # Inputs of the next call are read while the device runs the current one (async dispatch).
    feed = (place_inputs(call_inputs(first, host)) for first in range(start, steps, steps_per_call))
    inputs = next(feed, None)
    compiled: dict[int, Any] = {}
    compile_time = 0.0

    def compiled_for(first: int):
        """The compiled program of the phase that step ``first`` is in (compiled once)."""
        nonlocal compile_time
        phase = max(i for i, (start, _, _) in enumerate(phases) if start <= first)
        if phase not in compiled:
            t0 = time.perf_counter()
            _, phase_tx, phase_batches = phases[phase]
            program = jitted(scan_steps_of(phase_tx, phase_batches))
            compiled[phase] = program.lower(state, inputs).compile()
            compile_time += time.perf_counter() - t0
        return compiled[phase]

    if inputs is not None:
        compiled_for(start)

    metric = f"test_{objective.metric}"
    bar = tqdm(
        total=steps, initial=start, desc=desc, disable=not progress, leave=False, dynamic_ncols=True
    )
    last_save, last_saved_step = time.perf_counter(), start
    # A run stopped by an exception (a kill, a failing callback) still finishes writing its
    # last checkpoint, so a resumed run never races a half-written one; a signal saves first.
    signals, restore_signals = _stop_on_signals(manager is not None)
    try:
        for interval in range(start, steps, eval_every):
            if not any(live):
                break
            before = state
            program = compiled_for(interval)
            t0 = time.perf_counter()
            losses, evals = [], []
            for _ in range(eval_every // steps_per_call):
                state, (call_losses, call_evals) = program(state, inputs)
                inputs = next(feed, None)
                losses.append(call_losses)
                evals.append(call_evals)
            # Read back once per evaluation, so the calls in between dispatch asynchronously.
            losses = np.asarray(jnp.concatenate(losses)).reshape(eval_every, runs)
            evals = np.asarray(jnp.concatenate(evals)).reshape(eval_every, runs)
            jax.block_until_ready(state)
            wall += time.perf_counter() - t0
            for r, error in _nonfinite(losses, state, interval, seeds, desc, skip_nonfinite,
                                       vmapped).items():  # fmt: skip
                if not vmapped:
                    raise error
                if live[r]:
                    diverged[r], live[r] = error, False
            if not any(live):
                break
            if not all(live):
                state = place(_freeze(state, before, live))
            mean = np.nanmean if skip_nonfinite else np.mean  # skipped steps may have NaN losses
            train_loss = [float(x) for x in mean(losses, axis=0)]
            evals_done = [so_far + float(more) if alive else so_far for so_far, more, alive
                          in zip(evals_done, evals.sum(axis=0), live, strict=True)]  # fmt: skip
            done = interval + eval_every
            every_row = record(done, train_loss, wall)
            rows = [row for row, alive in zip(every_row, live, strict=True) if alive]
            for path, run_rows, row, alive in zip(curves, history, every_row, live, strict=True):
                if not alive:
                    continue
                run_rows.append(row)
                if path is not None:
                    append_record(path, row)
            stopping = bool(signals) and done < steps
            if manager is not None and (
                done == steps or stopping or checkpoints.due(done - last_saved_step, last_save)
            ):
                stretches = _stretches(earlier, here, start, done)
                _save(manager, checkpoints, state, done, wall, stretches, diverged)
                last_save, last_saved_step = time.perf_counter(), done
            if on_record is not None:
                for row in rows:
                    on_record(row)
            bar.update(eval_every)
            shown = {metric: f"{np.mean([row[metric] for row in rows]):.4f}"}
            shown_loss = np.mean([x for x, alive in zip(train_loss, live, strict=True) if alive])
            bar.set_postfix(loss=f"{shown_loss:.4f}", **shown)
            if stopping:
                raise Stopped(done, signals[0])
    finally:
        restore_signals()
        bar.close()
        if manager is not None:
            manager.wait_until_finished()
            manager.close()

    results = []
    for r, (rows, run_evals, gone) in enumerate(zip(history, evals_done, diverged, strict=True)):
        end = steps if gone is None else rows[-1]["step"]
        results.append(
            TrainResult(
                steps=end,
                grad_evals=run_evals,
                wall_time_s=wall,
                compile_time_s=compile_time,
                updates=end * updates_per_step,
                batches=_batches_done(phases, end),
                train_curve=[
                    (x["step"], x["train_loss"]) for x in rows if x["train_loss"] is not None
                ],
                eval_curve=[(x["step"], x[metric]) for x in rows],
                records=rows,
                skipped_updates=_skipped(state.opt_state, r if vmapped else None),
                trained_on=_stretches(earlier, here, start, end),
                diverged=gone,
            )
        )
    return state, results


def _nonfinite(
    losses, state, interval, seeds, desc, skip_nonfinite, vmapped
) -> dict[int, Diverged]:
    """The runs whose training went non-finite in this interval, each with its
    :class:`Diverged`: at its first non-finite training loss, or, when the optimizer skips
    non-finite updates, once its parameters themselves are no longer finite."""
    if skip_nonfinite:
        step = interval + losses.shape[0]
        return {
            int(r): Diverged(
                f"{desc}: the parameters are no longer finite at outer step {step} (seed "
                f"{seeds[r]}), although non-finite updates are skipped",
                step=step,
                loss=float("nan"),
                seed=seeds[r],
            )
            for r in np.flatnonzero(~_params_finite(state.params, vmapped))
        }
    found: dict[int, Diverged] = {}
    for i, r in np.argwhere(~np.isfinite(losses)):  # row-major: each run's earliest step first
        if int(r) in found:
            continue
        step = interval + int(i) + 1
        loss = float(losses[i, r])
        found[int(r)] = Diverged(
            f"{desc}: the training loss is {loss} at outer step {step} (seed {seeds[r]}); the "
            "run stopped there. Lower the learning rate, clip the gradients, or skip such "
            "updates (--on-nonfinite skip)",
            step=step,
            loss=loss,
            seed=seeds[r],
        )
    return found


def _freeze(state: TrainState, before: TrainState, live: list[bool]) -> TrainState:
    """``state`` for the live seeds, ``before`` (their last finite state) for the others."""
    keep = np.asarray(live)

    def pick(new, old):
        return jnp.where(keep.reshape(-1, *(1,) * (np.ndim(new) - 1)), new, old)

    fields = ("params", "model_state", "opt_state", "rng")
    return state.replace(
        **{f: jax.tree.map(pick, getattr(state, f), getattr(before, f)) for f in fields}
    )


def _check_phases(phases, steps: int, eval_every: int, generated: bool) -> None:
    starts = [start for start, _, _ in phases]
    if starts != sorted(set(starts)) or not all(0 < s < steps for s in starts[1:]):
        raise ValueError(f"phases must start at increasing steps in (0, {steps}), got {starts}")
    if any(s % eval_every for s in starts):
        raise ValueError(f"phases must start at multiples of eval_every ({eval_every}): {starts}")
    if len(phases) > 1 and not generated:
        raise ValueError(
            "switching the optimizer mid-run needs generated data (host batches are read "
            "ahead at a fixed number per step)"
        )


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


def _batches_done(phases, step: int) -> int:
    """Mini-batches eaten by ``step`` outer steps, phase by phase."""
    total = 0
    bounds = [start for start, _, _ in phases[1:]] + [math.inf]
    for (start, _, per_step), end in zip(phases, bounds, strict=True):
        total += max(0, min(step, end) - start) * per_step
    return int(total)


def _params_finite(params: Params, vmapped: bool) -> np.ndarray:
    """Per run (one entry, or one per seed under vmap): are all parameters finite?"""

    def per_run(x):
        ok = jnp.isfinite(x)
        return ok.reshape(ok.shape[0], -1).all(axis=1) if vmapped else ok.all()[None]

    return np.logical_and.reduce([np.asarray(per_run(x)) for x in jax.tree.leaves(params)])


def _data_parallel(
    objective: Objective, stream: Stream, mesh, local_gradients: bool = False
) -> tuple[Any, Any]:
    """The objective and batch source of one device's shard inside ``shard_map``.

    The loss's value and auxiliary state are the means over the devices; its gradient is
    the mean too, or with ``local_gradients`` the device's own (for local Frank-Wolfe, whose
    transform averages Δ_K itself).
    """
    if objective.tbptt is not None:
        raise ValueError(
            "truncated BPTT differentiates its chunk losses inside benchmarks.training.tbptt, so "
            "its gradients would stay per-device: run it on one device, not on a mesh of "
            f"{mesh.size}"
        )
    if stream.generate is None:
        parallel.per_device_batch(stream.batch_size, mesh.size)
    axis = mesh.axis_names[0]
    own_loss = objective.loss
    if local_gradients:

        def loss(params, *args):
            value, aux = own_loss(params, *args)
            return parallel.mean_value(value, axis), parallel.mean_floats(aux, axis)
    else:
        loss = parallel.data_parallel_loss(own_loss, axis, has_aux=True)

    def shard_loss(params, model_state, batch, key):
        # Each device draws its own dropout masks for its own rows.
        return loss(params, model_state, batch, jax.random.fold_in(key, jax.lax.axis_index(axis)))

    objective = dataclasses.replace(objective, loss=shard_loss)

    def shard_batches(to_batches):
        if to_batches is None:  # host data arrives split
            return None
        # Every device generates the whole step's batch from the same key and keeps its rows.
        return lambda key, data: parallel.local_shard(to_batches(key, data), axis, batch_axis=1)

    return objective, shard_batches


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


def _manager(checkpoints: Checkpoints | None):
    if checkpoints is None:
        return None
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        checkpoints.directory.absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=KEEP_CHECKPOINTS, create=True),
    )


_UNMATCHED = ("step", "wall_time_s", "trained_on", "diverged")
"""What a checkpoint's meta records beyond ``Checkpoints.meta``: not matched on resume."""


def _stretches(
    earlier: list[dict[str, Any]], machine: dict[str, Any] | None, start: int, step: int
) -> list[dict[str, Any]]:
    """``earlier`` and the stretch from ``start`` to ``step`` on ``machine``, merged into the
    last earlier stretch when that one ran on the same machine up to ``start``."""
    machine = json.loads(json.dumps(machine))
    if earlier and earlier[-1]["machine"] == machine and earlier[-1]["to_step"] == start:
        return [*earlier[:-1], {**earlier[-1], "to_step": step}]
    return [*earlier, {"machine": machine, "from_step": start, "to_step": step}]


def _save(
    manager,
    checkpoints: Checkpoints,
    state: TrainState,
    step: int,
    wall: float,
    trained_on: list[dict[str, Any]],
    diverged: list[Diverged | None],
) -> None:
    import orbax.checkpoint as ocp

    meta = {**checkpoints.meta, "step": step, "wall_time_s": wall, "trained_on": trained_on}
    meta["diverged"] = [None if d is None else d.as_dict() for d in diverged]
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )


def _restore(
    manager, checkpoints: Checkpoints, state: TrainState
) -> tuple[TrainState, int, float, list[dict[str, Any]], list[dict[str, Any] | None] | None]:
    """The newest readable checkpoint, as ``state`` is laid out (shapes, dtypes, shardings:
    a run saved on N devices restores on M), with its step, wall time, stretches and the
    seeds that diverged (``None`` where the checkpoint predates their record; stretches: one
    on a machine not recorded where the checkpoint predates them). An unreadable one is
    skipped with a warning."""
    import orbax.checkpoint as ocp

    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)),
        state,
    )
    expected = json.loads(json.dumps(checkpoints.meta))
    steps = sorted(manager.all_steps(), reverse=True)
    for step in steps:
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore(), state=ocp.args.StandardRestore(target)
                ),
            )
        except Exception as error:  # orbax/tensorstore raise many kinds; the message names it
            warnings.warn(
                f"checkpoint step {step} in {checkpoints.directory} is unreadable "
                f"({type(error).__name__}: {str(error)[:200]}); trying the one before it",
                stacklevel=3,
            )
            continue
        meta = restored["meta"]
        saved = {k: v for k, v in meta.items() if k not in _UNMATCHED}
        if saved != expected:
            raise ValueError(
                f"the checkpoint in {checkpoints.directory} was written by another "
                f"configuration ({saved}); delete it or pass another folder"
            )
        unrecorded = [{"machine": None, "from_step": 0, "to_step": step}]
        earlier = meta.get("trained_on", unrecorded)
        return restored["state"], step, float(meta["wall_time_s"]), earlier, meta.get("diverged")
    raise CheckpointError(
        f"no checkpoint in {checkpoints.directory} is readable (steps {steps}): delete the "
        "folder, or rerun with --restart, to start the run over"
    )
