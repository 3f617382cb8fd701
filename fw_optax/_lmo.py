"""Linear minimization oracles (LMOs) over pytrees.

An LMO answers ``argmin_{s in C} <s, g>`` for a constraint set ``C``. Frank-Wolfe needs nothing
else from ``C``: no projection, only this oracle. Here ``C`` is the Lp ball of radius δ centred at
zero, either one ball over the whole parameter pytree (``scope="global"``, Algorithm 1 of the
paper) or a product of one ball per leaf (``scope="leaf"``, the authors' released code).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp

Scope = Literal["global", "leaf"]
SCOPES: tuple[str, ...] = ("global", "leaf")


def canonical_p(p: Any) -> float:
    """Returns ``p`` as a Python float in ``[1, inf]``, or raises ``ValueError`` naming it.

    Accepts any real number ``p >= 1``, ``float("inf")``, ``jnp.inf`` or the string ``"inf"``.
    """
    if isinstance(p, str):
        if p.strip().lower() not in ("inf", "infinity"):
            raise ValueError(f"p must be a real number >= 1 or 'inf', got p={p!r}.")
        return math.inf
    if isinstance(p, bool):
        raise ValueError(f"p must be a real number >= 1 or 'inf', got p={p!r}.")
    try:
        value = float(p)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        raise ValueError(
            f"p must be a concrete real number >= 1 or 'inf', got p={p!r}. "
            "It is static: with optax.inject_hyperparams, list 'p' in static_args."
        ) from None
    if not value >= 1.0:  # also rejects NaN
        raise ValueError(f"p must be >= 1 (or 'inf'), got p={p!r}.")
    return value


def check_scope(scope: Any) -> Scope:
    """Returns ``scope`` if it names a known constraint layout, else raises ``ValueError``."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got scope={scope!r}.")
    return scope


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    # Half-precision powers and sums lose too much; do the oracle in at least float32.
    return jnp.promote_types(dtype, jnp.float32)


def _lmo_group(leaves: list[jax.Array], delta: jax.Array, p: float) -> list[jax.Array]:
    """The oracle for one Lp ball spanning ``leaves``; returns one ``s`` leaf per input leaf.

    With ``m = max |g|`` and ``q = p / (p - 1)`` the dual exponent, the minimizer is

        s = -δ sign(g) (|g| / m)^(q-1) / ||g / m||_q^(q-1),

    and ``<s, g> = -δ ||g||_q``. Dividing by ``m`` first keeps every power in ``[0, 1]``: no
    overflow for huge gradients, no underflow of the norm for tiny ones. ``g = 0`` gives ``s = 0``.
    """
    gs = [g.astype(_compute_dtype(g.dtype)) for g in leaves]
    if not gs:
        return []
    if p == math.inf:  # q = 1: every coordinate at the ball's corner.
        return [-delta * jnp.sign(g) for g in gs]

    abs_gs = [jnp.abs(g) for g in gs]
    leaf_max = jnp.stack([jnp.max(a, initial=0.0) for a in abs_gs])
    m = jnp.max(leaf_max)
    nonzero = m > 0
    safe_m = jnp.where(nonzero, m, 1.0)

    if p == 1.0:  # q = inf: a single signed vertex at the largest |g| (first one on ties).
        winner = jnp.argmax(leaf_max)
        out = []
        for i, (g, a) in enumerate(zip(gs, abs_gs, strict=True)):
            flat_index = jnp.argmax(a.ravel())
            onehot = jnp.zeros(a.size, g.dtype).at[flat_index].set(1.0).reshape(g.shape)
            chosen = jnp.logical_and(winner == i, nonzero)
            out.append(jnp.where(chosen, -delta * jnp.sign(g) * onehot, jnp.zeros_like(g)))
        return out

    q = p / (p - 1.0)
    ratios = [a / safe_m for a in abs_gs]
    if p == 2.0:  # q - 1 = 1: skip the powers, they only cost time and rounding.
        powered = ratios
        norm_q = jnp.sqrt(sum(jnp.sum(r * r) for r in ratios))
    else:
        powered = [r ** (q - 1.0) for r in ratios]
        norm_q = sum(jnp.sum(r**q) for r in ratios) ** (1.0 / q)
    # ||g/m||_q >= 1 whenever g != 0 (its largest entry is 1), so the division is safe.
    scale = jnp.where(nonzero, delta / norm_q ** (q - 1.0), 0.0)
    return [-scale * jnp.sign(g) * r for g, r in zip(gs, powered, strict=True)]


def lp_ball_lmo(
    grads: Any,
    delta: float | jax.Array,
    p: float | str = 2,
    *,
    scope: Scope = "global",
) -> Any:
    r"""Linear minimization oracle of the Lp ball: ``argmin_{||s||_p <= δ} <s, g>`` over a pytree.

    Closed form for every ``p``, with ``q = p / (p - 1)`` the dual exponent:

    - ``p = 1``: a single signed vertex, ``s = -δ sign(g_i) e_i`` at the largest ``|g_i|``;
    - ``p = 2``: ``s = -δ g / ||g||_2``;
    - ``p = inf``: ``s = -δ sign(g)``;
    - otherwise: ``s = -δ sign(g) |g|^(q-1) / ||g||_q^(q-1)``;

    and in every case ``<s, g> = -δ ||g||_q``. A zero gradient gives ``s = 0``.

    Args:
      grads: a pytree of arrays, the direction ``g`` to minimize against.
      delta: the radius δ >= 0 of the ball (a Python scalar or a scalar array; may be traced).
      p: the norm, any real ``p >= 1`` or infinity (``float("inf")``, ``jnp.inf`` or ``"inf"``).
      scope: ``"global"``: one ball over the whole pytree (the paper's Algorithm 1);
        ``"leaf"``: a product of balls of radius δ, one per leaf (the authors' code).

    Returns:
      A pytree ``s`` with the structure, shapes and dtypes of ``grads``.

    Example:
      >>> import jax.numpy as jnp
      >>> from fw_optax import lp_ball_lmo
      >>> lp_ball_lmo({"w": jnp.array([3.0, -4.0])}, delta=1.0, p=2)["w"]
      Array([-0.6,  0.8], dtype=float32)
    """
    p = canonical_p(p)
    check_scope(scope)
    leaves, treedef = jax.tree.flatten(grads)
    delta = jnp.asarray(delta)
    if scope == "global":
        s_leaves = _lmo_group(leaves, delta, p)
    else:
        s_leaves = [_lmo_group([g], delta, p)[0] for g in leaves]
    s_leaves = [s.astype(g.dtype) for s, g in zip(s_leaves, leaves, strict=True)]
    return jax.tree.unflatten(treedef, s_leaves)
