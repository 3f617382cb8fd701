"""One outer step: the training state, what is trained (:class:`Objective`), where the
mini-batches come from (:class:`Stream`) and :func:`make_step`, the ``lax.scan`` body that
the loop (``benchmarks.training.train``) compiles.

Every optimizer is driven the same way, ``tx.update(grads, state, params, value_fn=...,
inner_batches=...)``; transformations that do not need the extra arguments ignore them
(optax's rule). An outer step eats ``batches_per_step`` mini-batches: one, or K for the
authors' Frank-Wolfe flavour, where batch 1 gives the gradient at ω and batches 2..K are
handed to ``frank_wolfe`` as ``inner_batches``. Data and dropout keys are folded from the
run's base key and the step index, so a step computes the same thing whenever it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.training.data import batches
from benchmarks.training.tbptt import tbptt_step

Batch = Any
Params = Any
ModelState = Any
Array = jax.Array

_DROPOUT_STREAM = 2**31 - 1  # fold_in index separating dropout keys from data keys


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


def generated_batches(generate: Callable[[Array], Batch], batches_per_step: int):
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
    generate = generated_batches(make_batch, 1)
    # The host hands the keys in as the steps' data; the state's own key goes unused.
    step = make_step(objective, tx, to_batches=lambda unused_key, key: generate(key, None))

    @jax.jit
    def run_steps(params, opt_state, keys):
        rng = jax.random.key_data(jax.random.key(0))
        state = TrainState(jnp.zeros([], jnp.int32), params, {}, opt_state, rng)
        state, losses = jax.lax.scan(step, state, (jnp.arange(keys.shape[0]), keys))
        return state.params, state.opt_state, losses

    return run_steps
