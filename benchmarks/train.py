"""The one training loop: jit-compiled chunks of optimizer steps, a progress bar, curves.

A chunk of ``eval_every`` steps is one ``lax.scan`` inside one jitted call, so the host only
sees the model at evaluation points: no per-step dispatch or device-to-host copies. Every
optimizer is driven the same way: ``tx.update(grads, state, params, value_fn=...)``, and
transformations that do not need ``value_fn`` ignore it (optax's rule for extra arguments).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import optax
from tqdm.auto import tqdm

Batch = Any
Params = Any


@dataclass
class TrainResult:
    """What one run produced: curves, the final numbers and what they cost."""

    steps: int
    grad_evals: int
    wall_time_s: float
    compile_time_s: float
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    eval_curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def final_train(self) -> float:
        return self.train_curve[-1][1]

    @property
    def final_eval(self) -> float:
        return self.eval_curve[-1][1]


def make_chunk_fn(
    loss_fn: Callable[[Params, Batch], jax.Array],
    tx: optax.GradientTransformation,
    make_batch: Callable[[Any], Batch],
) -> Callable[[Params, Any, Any], tuple[Params, Any, jax.Array]]:
    """A jitted function running one optimizer step per leading entry of ``xs``.

    ``make_batch(x)`` turns one entry of ``xs`` into a batch: a PRNG key for generated data,
    or the batch itself for data read on the host. Returns the new params, optimizer state
    and the training loss of every step (taken before its update).
    """

    def step(carry, x):
        params, opt_state = carry
        batch = make_batch(x)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(
            grads, opt_state, params, value_fn=lambda w: loss_fn(w, batch)
        )
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def run_chunk(params, opt_state, xs):
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), xs)
        return params, opt_state, losses

    return run_chunk


def train(
    *,
    params: Params,
    loss_fn: Callable[[Params, Batch], jax.Array],
    tx: optax.GradientTransformation,
    steps: int,
    eval_every: int,
    eval_fn: Callable[[Params], jax.Array],
    seed: int,
    grad_evals_per_step: int = 1,
    make_batch: Callable[[jax.Array], Batch],
    desc: str = "train",
    progress: bool = True,
) -> tuple[Params, TrainResult]:
    """Trains on generated data: step ``i`` draws its batch from ``fold_in(key(seed), i)``.

    Args:
      params: initial parameters.
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      tx: any optax transformation (``frank_wolfe`` chains included).
      steps: outer optimizer steps; a multiple of ``eval_every``.
      eval_every: steps between evaluations (one jitted chunk).
      eval_fn: ``eval_fn(params) -> scalar`` test metric.
      seed: the data seed.
      grad_evals_per_step: gradient evaluations one step costs (K for ``frank_wolfe``).
      make_batch: ``make_batch(key) -> batch``.
      desc: label of the progress bar.
      progress: show the progress bar.

    Returns:
      The final parameters and a :class:`TrainResult`. ``train_curve`` holds the mean
      training loss of each chunk; ``eval_curve`` the test metric after it (and at step 0).
    """
    if steps < 1 or eval_every < 1 or steps % eval_every:
        raise ValueError(
            f"steps must be a positive multiple of eval_every, got steps={steps}, "
            f"eval_every={eval_every}."
        )
    run_chunk = make_chunk_fn(loss_fn, tx, make_batch)
    eval_fn = jax.jit(eval_fn)
    opt_state = tx.init(params)
    base_key = jax.random.key(seed)
    result = TrainResult(steps=0, grad_evals=0, wall_time_s=0.0, compile_time_s=0.0)
    result.eval_curve.append((0, float(eval_fn(params))))

    def keys(start: int) -> jax.Array:
        return jax.vmap(lambda i: jax.random.fold_in(base_key, i))(
            jnp.arange(start, start + eval_every)
        )

    t0 = time.perf_counter()
    compiled = run_chunk.lower(params, opt_state, keys(0)).compile()
    result.compile_time_s = time.perf_counter() - t0

    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    for start in range(0, steps, eval_every):
        params, opt_state, losses = compiled(params, opt_state, keys(start))
        test = float(eval_fn(params))
        done = start + eval_every
        result.train_curve.append((done, float(jnp.mean(losses))))
        result.eval_curve.append((done, test))
        bar.update(eval_every)
        bar.set_postfix(train=f"{result.final_train:.4f}", test=f"{test:.4f}")
    bar.close()
    result.wall_time_s = time.perf_counter() - t0
    result.steps = steps
    result.grad_evals = steps * grad_evals_per_step
    return params, result
