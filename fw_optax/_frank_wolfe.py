"""The Frank-Wolfe RNN optimizer (Algorithm 1 of Yue et al., ICPR 2020) as an optax transform."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from fw_optax._lmo import Scope, canonical_p, check_scope, lp_ball_lmo


class FrankWolfeState(NamedTuple):
    """State of :func:`frank_wolfe`.

    Attributes:
      count: the number of outer steps taken so far (int32); the schedule of δ reads it.
    """

    count: chex.Array


def _check_K(K: Any) -> int:
    if isinstance(K, bool):
        raise ValueError(f"K must be an int >= 1, got K={K!r}.")
    try:
        value = operator.index(K)
    except TypeError:
        raise ValueError(
            f"K must be an int >= 1, got K={K!r}. It is static: with "
            "optax.inject_hyperparams, list 'K' in static_args."
        ) from None
    if value < 1:
        raise ValueError(f"K must be an int >= 1, got K={K!r}.")
    return value


def _check_delta(delta: Any) -> None:
    if callable(delta) or isinstance(delta, jax.core.Tracer):
        return  # a schedule, or injected by optax.inject_hyperparams: not concrete here.
    if isinstance(delta, (str, bool)):
        raise ValueError(f"delta must be a real number >= 0 or a schedule, got delta={delta!r}.")
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise ValueError(
            f"delta must be a real number >= 0 or a schedule, got delta={delta!r}."
        ) from None
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"delta must be >= 0, got delta={delta!r}.")


def _tree_lerp(old: Any, new: Any, k: jax.Array) -> Any:
    """``(1 - 1/k) old + (1/k) new``: the running average of Algorithm 1."""
    return jax.tree.map(lambda a, b: a + (b - a) / k, old, new)


def _add(params: Any, delta: Any) -> Any:
    return jax.tree.map(lambda w, d: (w + d).astype(w.dtype), params, delta)


def _leading_size(tree: Any) -> set[int]:
    return {leaf.shape[0] if jnp.ndim(leaf) else -1 for leaf in jax.tree.leaves(tree)}


def frank_wolfe(
    K: int,
    delta: optax.ScalarOrSchedule,
    p: float | str = 2,
    *,
    scope: Scope = "global",
    cumulative: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""The Frank-Wolfe RNN optimizer: K linear-minimization steps in an Lp ball around ω.

    At outer step t, with δ_t the radius, Algorithm 1 of the paper runs, from Δ_{t,0} = 0,

    .. math::

      s_{t,k} = \arg\min_{\|s\|_p \le \delta_t} \langle s, \nabla F(\omega_{t-1} + \Delta_{t,k-1})
      \rangle, \qquad \Delta_{t,k} = (1 - \tfrac1k) \Delta_{t,k-1} + \tfrac1k s_{t,k},

    for k = 1..K, and then ω_t = ω_{t-1} + η Δ_{t,K}. This transformation emits ``-Δ_{t,K}``, so

    - ``optax.chain(frank_wolfe(K, δ, p), optax.sgd(η))`` is Algorithm 1 exactly, and
    - ``optax.chain(frank_wolfe(K, δ, 2, scope="leaf"), optax.adam(η))`` is the authors' released
      optimizer (up to the factor 1/δ on Adam's input, which Adam's normalization ignores up to
      its ε).

    The incoming ``updates`` must be the gradient at ω_{t-1}: it is the first inner gradient
    (k = 1), so an outer step costs K gradient evaluations in all. The inner steps k = 2..K
    differentiate ``value_fn`` inside one ``jax.lax.scan``: the program compiles once, whatever K.

    Fresh data per inner step (what the authors' code does: inner step k eats mini-batch k): pass
    ``inner_batches``, a pytree whose leaves have a leading axis of size K - 1. Inner step k then
    evaluates ``value_fn(params, batch)`` on the slice ``k - 2`` of it. ``jnp.arange(2, K + 1)``
    hands ``value_fn`` the inner step's index instead, e.g. to pick a chunk in truncated BPTT.

    Args:
      K: the number of inner Frank-Wolfe steps, an int >= 1 (static).
      delta: the radius δ >= 0 of the Lp ball, a float or an optax schedule of the outer step
        count (δ_t).
      p: the norm of the ball, a real ``p >= 1`` or infinity (``float("inf")``, ``jnp.inf``,
        ``"inf"``) (static).
      scope: ``"global"``: one ball over the whole parameter pytree (the paper);
        ``"leaf"``: a product of balls of radius δ, one per parameter tensor (the authors' code).
      cumulative: where the gradient of inner step k is taken. ``False`` (Algorithm 1): at
        ``ω + Δ_{k-1}``. ``True`` (the authors' code, which adds Δ_k to the weights after each
        inner step): at ``ω + Δ_1 + ... + Δ_{k-1}``. The two agree for K <= 2.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its ``update`` takes ``(updates, state,
      params, *, value_fn=None, inner_batches=None, **extra_args)``: ``value_fn(params)`` (or
      ``value_fn(params, batch)`` with ``inner_batches``) returns the scalar loss and is required
      when K > 1; other keyword arguments are ignored, so the transform sits in any ``chain``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, fw_optax
      >>> loss_fn = lambda w: jnp.sum((w - 1.0) ** 2)
      >>> params = jnp.zeros(3)
      >>> tx = optax.chain(fw_optax.frank_wolfe(K=5, delta=0.1, p=2), optax.sgd(1.0))
      >>> state = tx.init(params)
      >>> grads = jax.grad(loss_fn)(params)
      >>> updates, state = tx.update(grads, state, params, value_fn=loss_fn)
      >>> params = optax.apply_updates(params, updates)
      >>> bool(loss_fn(params) < loss_fn(jnp.zeros(3)))
      True

    References:
      Yue, Li, Saligrama and Zhang, "RNN Training along Locally Optimal Trajectories via
      Frank-Wolfe Algorithm", ICPR 2020. https://arxiv.org/abs/2010.05397
    """
    K = _check_K(K)
    p = canonical_p(p)
    scope = check_scope(scope)
    _check_delta(delta)

    def lmo(grads: Any, radius: jax.Array) -> Any:
        return lp_ball_lmo(grads, radius, p, scope=scope)

    def init_fn(params: Any) -> FrankWolfeState:
        del params
        return FrankWolfeState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: Any,
        state: FrankWolfeState,
        params: Any = None,
        *,
        value_fn: Callable[..., jax.Array] | None = None,
        inner_batches: Any = None,
        **extra_args: Any,
    ) -> tuple[Any, FrankWolfeState]:
        del extra_args
        radius = delta(state.count) if callable(delta) else delta
        radius = jnp.asarray(radius, jnp.float32)
        # Δ_1 = s_1: the incoming updates are the gradient at ω itself.
        first = lmo(updates, radius)
        avg = jax.tree.map(lambda s: s.astype(_accum_dtype(s.dtype)), first)

        if K > 1:
            if value_fn is None:
                raise TypeError(
                    f"frank_wolfe with K={K} needs the keyword argument value_fn (the loss as a "
                    "function of params) in update(); only K=1 runs without it."
                )
            if params is None:
                raise ValueError(f"frank_wolfe with K={K} needs params in update().")
            if inner_batches is not None and _leading_size(inner_batches) != {K - 1}:
                raise ValueError(
                    f"inner_batches must have a leading axis of size K-1={K - 1} on every leaf, "
                    f"got leading sizes {sorted(_leading_size(inner_batches))}."
                )
            grad_fn = jax.grad(value_fn)

            def inner_step(carry, xs):
                avg, offset = carry
                k, batch = xs
                point = offset if cumulative else avg
                at = _add(params, point)
                grads = grad_fn(at) if inner_batches is None else grad_fn(at, batch)
                s = lmo(grads, radius)
                avg = _tree_lerp(avg, s, k)
                offset = jax.tree.map(jnp.add, offset, avg) if cumulative else offset
                return (avg, offset), None

            ks = jnp.arange(2, K + 1, dtype=jnp.float32)
            (avg, _), _ = jax.lax.scan(inner_step, (avg, avg), (ks, inner_batches))

        new_updates = jax.tree.map(lambda a, u: (-a).astype(u.dtype), avg, updates)
        return new_updates, FrankWolfeState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _accum_dtype(dtype: jnp.dtype) -> jnp.dtype:
    # The running average Δ is kept in at least float32 even for bf16/fp16 parameters.
    return jnp.promote_types(dtype, jnp.float32)
