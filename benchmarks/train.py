"""The one training loop: jit-compiled chunks of optimizer steps, curves, checkpoints.

Every experiment (each task, each method) goes through :func:`train`. A chunk of outer steps
is one ``lax.scan`` inside one jitted call, so the host only sees the model at evaluation
points. Each outer step eats ``batches_per_step`` mini-batches: one, or K for the authors'
Frank-Wolfe flavour, where batch 1 gives the gradient at ω and batches 2..K are handed to
``frank_wolfe`` as ``inner_batches``. Every optimizer is driven the same way,
``tx.update(grads, state, params, value_fn=..., inner_batches=...)``; transformations that
do not need them ignore the extra arguments (optax's rule).

Data comes from a :class:`Stream`: generated from PRNG keys inside the jitted step (the
adding task: step ``i`` reads ``fold_in(key(seed), i)``), or read on the host by the shared
``batches`` iterator, whose mini-batches for one chunk are stacked and scanned over.

Curves go to a JSON Lines file as they are measured. With a checkpoint folder, the state
(params, model state such as batch-norm statistics, optimizer state, step, wall time) is
saved with orbax at evaluation points; a later call with the same folder resumes from the
last one. The data position and the random keys are functions of the step, so a resumed
run computes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from benchmarks import parallel
from benchmarks.data import batches
from fw_optax import FrankWolfeState
from models import tbptt_step

Batch = Any
Params = Any
ModelState = Any
Array = jax.Array

_DROPOUT_STREAM = 2**31 - 1  # fold_in index separating dropout keys from data keys


@dataclasses.dataclass(frozen=True)
class TBPTT:
    """Truncated BPTT: how ``models.tbptt_step`` runs the model chunk by chunk.

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

    Host arrays are read by ``benchmarks.data.batches`` (seeded, reshuffled every epoch,
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
    seed: int,
    batches_per_step: int = 1,
    to_batches: Callable[[Any], Batch] = lambda data: data,
) -> Callable[[tuple[Params, ModelState, Any], tuple[Array, Any]], tuple[Any, Array]]:
    """One outer step as a ``lax.scan`` body: ``((params, state, opt), (i, data)) -> loss``.

    ``to_batches(data)`` gives the step's mini-batches stacked ``[batches_per_step, ...]``
    (from a key for generated streams; the identity for host data). The loss returned is the
    training loss of the first batch at the weights before the step. Dropout keys are
    ``fold_in(dropout_base(seed), i)``, split over the step's batches.
    """
    tx = optax.with_extra_args_support(tx)
    project = objective.project or (lambda params: params)
    dropout_base = jax.random.fold_in(jax.random.key(seed), _DROPOUT_STREAM)

    def step(carry, xs):
        params, model_state, opt_state = carry
        index, data = xs
        stacked = to_batches(data)
        keys = jax.random.split(jax.random.fold_in(dropout_base, index), batches_per_step)
        first = jax.tree.map(lambda a: a[0], stacked)
        if objective.tbptt is not None:
            params, opt_state, loss = _tbptt_update(
                objective, tx, params, model_state, opt_state, first, keys[0]
            )
            return (project(params), model_state, opt_state), loss
        grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
        (loss, new_state), grads = grad_fn(params, model_state, first, keys[0])
        if batches_per_step > 1:
            extra = {
                "value_fn": lambda w, b: objective.loss(w, model_state, b[0], b[1])[0],
                "inner_batches": (jax.tree.map(lambda a: a[1:], stacked), keys[1:]),
            }
        else:
            extra = {"value_fn": lambda w: objective.loss(w, model_state, first, keys[0])[0]}
        updates, opt_state = tx.update(grads, opt_state, params, **extra)
        params = project(optax.apply_updates(params, updates))
        return (params, new_state, opt_state), loss

    return step


def _tbptt_update(objective, tx, params, model_state, opt_state, batch, key):
    """``models.tbptt_step`` on one batch; the loss is the full-sequence loss before it."""
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
    """``key -> batches [batches_per_step, ...]``; one batch reads the step's key itself."""

    def to_batches(key):
        if batches_per_step == 1:
            return jax.tree.map(lambda a: a[None], generate(key))
        return jax.vmap(generate)(jax.random.split(key, batches_per_step))

    return to_batches


def make_chunk_fn(
    loss_fn: Callable[[Params, Batch], jax.Array],
    tx: optax.GradientTransformation,
    make_batch: Callable[[Any], Batch],
) -> Callable[[Params, Any, Any], tuple[Params, Any, jax.Array]]:
    """A jitted function running one optimizer step per key in ``keys``.

    The plain case of :func:`train`'s chunk (no model state, one generated batch per step),
    for ``benchmarks.perf``: ``run_chunk(params, opt_state, keys) -> (params, opt_state,
    losses)``.
    """
    objective = Objective(
        loss=lambda params, state, batch, key: (loss_fn(params, batch), state),
        evaluate=lambda params, state, test: {},
        test=None,
    )
    step = make_step(objective, tx, seed=0, to_batches=_generated(make_batch, 1))

    @jax.jit
    def run_chunk(params, opt_state, keys):
        xs = (jnp.arange(keys.shape[0]), keys)
        (params, _, opt_state), losses = jax.lax.scan(step, (params, {}, opt_state), xs)
        return params, opt_state, losses

    return run_chunk


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where and how often :func:`train` saves its state with orbax.

    Attributes:
      directory: the checkpoint folder (created on the first save).
      every_s: save at an evaluation point once this many seconds passed since the last
        save (0: at every evaluation); the last step is always saved.
      meta: JSON-able description of the run; resuming refuses a checkpoint whose ``meta``
        differs (another configuration wrote it).
    """

    directory: Path
    every_s: float = 60.0
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


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
    batches_per_step: int = 1,
    updates_per_step: int = 1,
    grad_evals_per_step: float = 1.0,
    steps_per_call: int | None = None,
    curves: Path | None = None,
    checkpoints: Checkpoints | None = None,
    desc: str = "train",
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
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
      batches_per_step: mini-batches one outer step eats (K for the authors' FW flavour).
      updates_per_step: optimizer updates one outer step makes (TBPTT: one per K chunks).
      grad_evals_per_step: what one outer step costs, in full-sequence gradients of one
        mini-batch (K for FW; TBPTT's chunk gradients count their share of the sequence).
        Where the optimizer holds a ``fw_optax.FrankWolfeState``, the count it reports
        (``inner_steps``: fewer than K when adaptive K stops early) is used instead.
      steps_per_call: outer steps per jitted call (a divisor of ``eval_every``; default
        ``eval_every``). Host batches for a call are stacked and scanned over.
      curves: a JSON Lines file; one record per evaluation is appended as it is measured.
      checkpoints: save and resume the run (see :class:`Checkpoints`).
      desc: label of the progress bar.
      progress: show the progress bar (live loss, test metric, ETA).
      on_record: called with every record after it is written (and saved).
      mesh: a 1-D data mesh (``benchmarks.parallel.data_mesh``) to train data-parallel on:
        every mini-batch is split over its devices and every gradient, the inner
        Frank-Wolfe ones included, is the mean over them, so a step equals the
        one-device step on the whole batch (batch norm aside: each device normalizes
        with its own shard's statistics). ``None`` or one device: no split.

    Returns:
      ``(params, model_state, result)``.
    """
    steps_per_call = eval_every if steps_per_call is None else steps_per_call
    if steps < 1 or eval_every < 1 or steps % eval_every:
        raise ValueError(
            f"steps must be a positive multiple of eval_every, got steps={steps}, "
            f"eval_every={eval_every}."
        )
    if steps_per_call < 1 or eval_every % steps_per_call:
        raise ValueError(f"steps_per_call ({steps_per_call}) must divide eval_every ({eval_every})")
    model_state = {} if model_state is None else model_state
    generated = stream.generate is not None
    to_batches = _generated(stream.generate, batches_per_step) if generated else (lambda d: d)
    split = mesh is not None and mesh.size > 1
    if split:
        objective, to_batches = _data_parallel(objective, to_batches, stream, mesh)
    step = make_step(
        objective, tx, seed=seed, batches_per_step=batches_per_step, to_batches=to_batches
    )

    measured = objective.tbptt is None

    def counted_step(carry, xs):
        carry, loss = step(carry, xs)
        evals = _inner_steps(carry[2]) if measured else None
        return carry, (loss, jnp.float32(grad_evals_per_step) if evals is None else evals)

    def scan_steps(carry, xs):
        return jax.lax.scan(counted_step, carry, xs)

    if split:
        # Host batches are stacked [steps_per_call, batches_per_step, B, ...]: split axis 2.
        data_spec = P() if generated else parallel.batch_spec(2)
        run_chunk = parallel.data_parallel(
            scan_steps, mesh, in_specs=(P(), (P(), data_spec)), out_specs=P()
        )
        replicated = jax.sharding.NamedSharding(mesh, P())

        def place(tree):
            return jax.device_put(tree, replicated)

        def place_inputs(inputs):
            indices, data = inputs
            data = place(data) if generated else parallel.shard_batch(data, mesh, 2)
            return place(indices), data
    else:
        run_chunk = jax.jit(scan_steps)

        def place(tree):
            return tree

        place_inputs = place

    evaluate = jax.jit(objective.evaluate)
    carry = place((params, model_state, tx.init(params)))
    data_key = jax.random.key(seed)
    per_epoch = stream.batches_per_epoch

    def record(done: int, train_loss: float | None, wall: float) -> dict[str, Any]:
        metrics = {k: float(v) for k, v in evaluate(carry[0], carry[1], objective.test).items()}
        row: dict[str, Any] = {
            "step": done,
            "updates": done * updates_per_step,
            "batches": done * batches_per_step,
            "grad_evals": evals_done,
            "wall_time_s": wall,
            "train_loss": train_loss,
            **{f"test_{k}": v for k, v in metrics.items()},
        }
        if per_epoch:
            row["epoch"] = done * batches_per_step / per_epoch
        return row

    manager = _manager(checkpoints)
    start, wall, rows, evals_done = 0, 0.0, [], 0.0
    if manager is not None and manager.latest_step() is not None:
        carry, start, wall = _restore(manager, checkpoints, carry)
        carry = place(carry)
        rows = [row for row in _read_records(curves) if row["step"] <= start]
        evals_done = rows[-1]["grad_evals"] if rows else start * grad_evals_per_step
    if not rows:
        rows = [record(0, None, 0.0)]
    if curves is not None:
        curves.parent.mkdir(parents=True, exist_ok=True)
        curves.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def call_inputs(first: int, host: Iterator[Batch] | None):
        indices = jnp.arange(first, first + steps_per_call)
        if host is None:
            return indices, jax.vmap(lambda i: jax.random.fold_in(data_key, i))(indices)
        group = [next(host) for _ in range(steps_per_call * batches_per_step)]
        stacked = tuple(
            np.stack(arrays).reshape(steps_per_call, batches_per_step, *arrays[0].shape)
            for arrays in zip(*group, strict=True)
        )
        return indices, stacked

    host = None
    if not generated:
        host = stream.host_batches(seed)
        # The data position is a function of the step: replay the iterator up to it.
        for _ in itertools.islice(host, start * batches_per_step):
            pass
    # Inputs of the next call are read while the device runs the current one (async dispatch).
    feed = (place_inputs(call_inputs(first, host)) for first in range(start, steps, steps_per_call))
    inputs = next(feed, None)
    t0 = time.perf_counter()
    compiled = run_chunk.lower(carry, inputs).compile() if inputs is not None else None
    compile_time = time.perf_counter() - t0

    metric = f"test_{objective.metric}"
    bar = tqdm(
        total=steps, initial=start, desc=desc, disable=not progress, leave=False, dynamic_ncols=True
    )
    last_save = time.perf_counter()
    # A run stopped by an exception (a kill, a failing callback) still finishes writing its
    # last checkpoint, so a resumed run never races a half-written one.
    try:
        for interval in range(start, steps, eval_every):
            t0 = time.perf_counter()
            losses, evals = [], []
            for _ in range(eval_every // steps_per_call):
                carry, (chunk_losses, chunk_evals) = compiled(carry, inputs)
                inputs = next(feed, None)
                losses.append(chunk_losses)
                evals.append(chunk_evals)
            # Read back once per evaluation, so the calls in between dispatch asynchronously.
            train_loss = float(jnp.mean(jnp.concatenate(losses)))
            evals_done += float(jnp.sum(jnp.concatenate(evals)))
            jax.block_until_ready(carry)
            wall += time.perf_counter() - t0
            done = interval + eval_every
            row = record(done, train_loss, wall)
            rows.append(row)
            if curves is not None:
                with curves.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            if manager is not None and (
                done == steps or time.perf_counter() - last_save >= checkpoints.every_s
            ):
                _save(manager, checkpoints, carry, done, wall)
                last_save = time.perf_counter()
            if on_record is not None:
                on_record(row)
            bar.update(eval_every)
            bar.set_postfix(loss=f"{train_loss:.4f}", **{metric: f"{row[metric]:.4f}"})
    finally:
        bar.close()
        if manager is not None:
            manager.wait_until_finished()
            manager.close()

    result = TrainResult(
        steps=steps,
        grad_evals=evals_done,
        wall_time_s=wall,
        compile_time_s=compile_time,
        updates=steps * updates_per_step,
        batches=steps * batches_per_step,
        train_curve=[(r["step"], r["train_loss"]) for r in rows if r["train_loss"] is not None],
        eval_curve=[(r["step"], r[metric]) for r in rows],
        records=rows,
    )
    return carry[0], carry[1], result


def _data_parallel(objective: Objective, to_batches, stream: Stream, mesh) -> tuple[Any, Any]:
    """The objective and batch source of one device's shard inside ``shard_map``."""
    if objective.tbptt is not None:
        raise ValueError(
            "truncated BPTT differentiates its chunk losses inside models.tbptt, so its "
            f"gradients would stay per-device: run it on one device, not on a mesh of {mesh.size}"
        )
    if stream.generate is None:
        parallel.per_device_batch(stream.batch_size, mesh.size)
    axis = mesh.axis_names[0]
    loss = parallel.data_parallel_loss(objective.loss, axis, has_aux=True)

    def shard_loss(params, model_state, batch, key):
        # Each device draws its own dropout masks for its own rows.
        return loss(params, model_state, batch, jax.random.fold_in(key, jax.lax.axis_index(axis)))

    objective = dataclasses.replace(objective, loss=shard_loss)
    if stream.generate is None:
        return objective, to_batches
    # Every device generates the whole step's batch from the same key and keeps its rows.
    return objective, lambda key: parallel.local_shard(to_batches(key), axis, batch_axis=1)


def _inner_steps(opt_state: Any) -> jax.Array | None:
    """The gradients the last Frank-Wolfe outer step evaluated, if ``opt_state`` has one."""
    states = [
        x
        for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, FrankWolfeState))
        if isinstance(x, FrankWolfeState)
    ]
    return states[0].inner_steps.astype(jnp.float32) if len(states) == 1 else None


def _read_records(curves: Path | None) -> list[dict[str, Any]]:
    if curves is None or not curves.is_file():
        return []
    return [json.loads(line) for line in curves.read_text().splitlines() if line.strip()]


def _manager(checkpoints: Checkpoints | None):
    if checkpoints is None:
        return None
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        checkpoints.directory.absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
    )


def _save(manager, checkpoints: Checkpoints, carry, step: int, wall: float) -> None:
    import orbax.checkpoint as ocp

    # Leaves by position: optimizer states (NamedTuples, empty states) round-trip exactly.
    leaves = {str(i): np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(carry))}
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(leaves),
            meta=ocp.args.JsonSave({**checkpoints.meta, "step": step, "wall_time_s": wall}),
        ),
    )


def _restore(manager, checkpoints: Checkpoints, carry):
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    saved = {k: v for k, v in meta.items() if k not in ("step", "wall_time_s")}
    if saved != json.loads(json.dumps(checkpoints.meta)):
        raise ValueError(
            f"the checkpoint in {checkpoints.directory} was written by another configuration "
            f"({saved}); delete it or pass another folder"
        )
    leaves, treedef = jax.tree.flatten(carry)
    target = {str(i): jax.ShapeDtypeStruct(np.shape(x), x.dtype) for i, x in enumerate(leaves)}
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))[
        "state"
    ]
    restored = jax.tree.unflatten(treedef, [jnp.asarray(state[str(i)]) for i in range(len(leaves))])
    return restored, step, float(meta["wall_time_s"])
