r"""Linear minimization oracles (LMOs) over pytrees.

An LMO answers ``s = argmin_{s in C(δ)} <s, g>`` for a constraint set ``C(δ)`` of radius δ.
Frank-Wolfe needs nothing else from ``C``: no projection, only this oracle. Every oracle here is
a plain function ``oracle(grads, delta, ...)`` returning a pytree like ``grads``, and any of them
(or a user's own, see [`Oracle`][fw_optax.Oracle]) plugs into ``frank_wolfe(..., oracle=...)``.

``delta`` is one radius for the whole set, or, for oracles that are a product of one set per
tensor, a pytree of per-tensor radii with the structure of ``grads`` (what
``frank_wolfe(..., relative_radius=True)`` hands them, see
[`relative_radii`][fw_optax.relative_radii]).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, Protocol, cast

import jax
import jax.numpy as jnp

from fw_optax._flat import BLOCK, Layout, Segments, compute_dtype

Scope = Literal["global", "leaf"]
KeyPath = tuple[Any, ...]  # a leaf's path, as jax.tree_util.tree_flatten_with_path gives it
SCOPES: tuple[str, ...] = ("global", "leaf")


class Oracle(Protocol):
    r"""A linear minimization oracle, the constraint set of [`frank_wolfe`][fw_optax.frank_wolfe].

    ``oracle(grads, delta)`` returns ``s = argmin_{s in C(δ)} <s, grads>``, a pytree with the
    structure and shapes of ``grads``. ``delta`` is a scalar radius (possibly traced: it may
    come from a schedule), or, with ``frank_wolfe(..., relative_radius=True)``, a pytree of
    per-tensor scalar radii with the structure of ``grads``. Options of an oracle (``p``, ``k``,
    ...) are bound beforehand, e.g. ``functools.partial(k_sparse_lmo, k=10)``.
    """

    def __call__(self, grads: Any, delta: Any, /) -> Any: ...


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
    return cast(Scope, scope)


# ----------------------------------------------------------------------------- radii
def scalar_radius(delta: Any, who: str) -> jax.Array:
    """``delta`` as a 0-d array, or ``ValueError`` if it is a pytree or array of radii."""
    if len(jax.tree.leaves(delta)) != 1 or jnp.ndim(jax.tree.leaves(delta)[0]) != 0:
        raise ValueError(
            f"{who} is one set over the whole pytree and takes one scalar radius delta, got "
            f"{jax.tree.map(jnp.shape, delta)!r}. Per-tensor radii (relative_radius=True) need "
            "a per-tensor oracle: lp_ball_lmo(scope='leaf'), group_l2_lmo or nuclear_lmo."
        )
    return jnp.asarray(jax.tree.leaves(delta)[0])


def leaf_radii(delta: Any, layout: Layout) -> jax.Array:
    """Per-leaf radii, shape ``[L]``: a scalar ``delta`` repeated, or a pytree of scalars."""
    if len(jax.tree.leaves(delta)) == 1 and jnp.ndim(jax.tree.leaves(delta)[0]) == 0:
        return jnp.full([len(layout.shapes)], jnp.asarray(jax.tree.leaves(delta)[0]))
    if jax.tree.structure(delta) != layout.treedef or any(
        jnp.ndim(r) != 0 for r in jax.tree.leaves(delta)
    ):
        raise ValueError(
            "delta must be a scalar or a pytree of scalar radii with the structure of grads, "
            f"got {jax.tree.map(jnp.shape, delta)!r} for grads {layout.treedef}."
        )
    return jnp.stack([jnp.asarray(r) for r in jax.tree.leaves(delta)])


def relative_radii(params: Any, delta: Any) -> Any:
    r"""Per-tensor radii relative to the weights: ``δ_i = δ ||ω_i||_2`` for each leaf ``ω_i``.

    The rescaling of StochasticFrankWolfe (Pokutta, Spiegel and Zimmer, 2020): a step of radius
    δ moves every tensor by the same fraction of its size. A tensor of zeros gets radius 0 (it
    does not move), so keep zero-initialized biases out of it (``optax.multi_transform``) or
    use absolute radii for them.

    Examples:
      >>> import jax.numpy as jnp
      >>> from fw_optax import relative_radii
      >>> relative_radii({"w": jnp.array([3.0, 4.0]), "b": jnp.zeros(2)}, 0.1)
      {'b': Array(0., dtype=float32), 'w': Array(0.5, dtype=float32)}
    """
    layout = Layout.of(params)
    flat = layout.ravel(params)
    norms = jnp.sqrt(layout.leaf_segments.sum(flat * flat))
    radii = leaf_radii(delta, layout) * norms
    return layout.treedef.unflatten(list(radii.astype(jnp.float32)))


# ----------------------------------------------------------------------------- Lp balls
def lp_ball_flat(g: jax.Array, delta: jax.Array, p: float, segments: Segments) -> jax.Array:
    """The Lp-ball oracle on a ``Layout`` buffer, one ball (of radius ``delta[i]``) per segment.

    ``delta`` is a scalar or has one radius per segment. With ``m`` the largest ``|g|`` of a
    segment and ``q = p / (p - 1)`` the dual exponent, the minimizer on that segment is

        s = -δ sign(g) (|g| / m)^(q-1) / ||g / m||_q^(q-1),

    and ``<s, g> = -δ ||g||_q``. Dividing by ``m`` first keeps every power in ``[0, 1]``: no
    overflow for huge gradients, no underflow of the norm for tiny ones. ``g = 0`` gives ``s = 0``.
    """
    delta = jnp.broadcast_to(jnp.asarray(delta, g.dtype), [segments.count])
    if p == math.inf:  # q = 1: every coordinate at the ball's corner.
        return -segments.expand(delta) * jnp.sign(g)

    a = jnp.abs(g)
    m = segments.max(a)
    nonzero = m > 0
    if p == 1.0:  # q = inf: one signed vertex per ball, at its largest |g| (first on ties).
        first = segments.first(a == segments.expand(m))
        at_vertex = jnp.arange(g.size).reshape(g.shape) == segments.expand(first)
        scale = jnp.where(nonzero, delta, 0.0)
        return jnp.where(at_vertex, -segments.expand(scale) * jnp.sign(g), 0.0)

    q = p / (p - 1.0)
    r = a / segments.expand(jnp.where(nonzero, m, 1.0))
    if p == 2.0:  # q - 1 = 1: skip the powers, they only cost time and rounding.
        powered, norm_pow = r, jnp.sqrt(segments.sum(r * r))
    else:
        powered = r ** (q - 1.0)
        norm_pow = segments.sum(r**q) ** ((q - 1.0) / q)
    # ||g/m||_q >= 1 whenever g != 0 (its largest entry is 1), so the division is safe.
    scale = jnp.where(nonzero, delta / jnp.where(nonzero, norm_pow, 1.0), 0.0)
    return -segments.expand(scale) * jnp.sign(g) * powered


def lp_ball_lmo(
    grads: Any,
    delta: Any,
    p: float | str = 2,
    *,
    scope: Scope = "global",
) -> Any:
    r"""Linear minimization oracle of the Lp ball: ``argmin_{||s||_p <= δ} <s, g>`` over a pytree.

    Closed form for every ``p``, with ``q = p / (p - 1)`` the dual exponent:

    - ``p = 1``: a single signed vertex, ``s = -δ sign(g_i) e_i`` at the largest ``|g_i|``
      (the first in flattened leaf order on ties);
    - ``p = 2``: ``s = -δ g / ||g||_2``;
    - ``p = inf``: ``s = -δ sign(g)``;
    - otherwise: ``s = -δ sign(g) |g|^(q-1) / ||g||_q^(q-1)``;

    and in every case ``<s, g> = -δ ||g||_q``. A zero gradient gives ``s = 0``. The whole pytree
    is handled as one flat buffer: the cost does not grow with the number of leaves.

    Args:
      grads: a pytree of floating arrays, the direction ``g`` to minimize against.
      delta: the radius δ >= 0 (a scalar, may be traced); with ``scope="leaf"`` also a pytree
        of per-leaf scalar radii with the structure of ``grads``.
      p: the norm, any real ``p >= 1`` or infinity (``float("inf")``, ``jnp.inf`` or ``"inf"``).
      scope: ``"global"``: one ball over the whole pytree (the paper's Algorithm 1);
        ``"leaf"``: a product of balls, one per leaf (the authors' code).

    Returns:
      A pytree ``s`` with the structure, shapes and dtypes of ``grads``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from fw_optax import lp_ball_lmo
      >>> lp_ball_lmo({"w": jnp.array([3.0, -4.0])}, delta=1.0, p=2)["w"]
      Array([-0.6,  0.8], dtype=float32)
    """
    p = canonical_p(p)
    check_scope(scope)
    layout = Layout.of(grads)
    if scope == "global":
        radius, segments = scalar_radius(delta, "lp_ball_lmo(scope='global')"), layout.one_segment
    else:
        radius, segments = leaf_radii(delta, layout), layout.leaf_segments
    if layout.size == 0:
        return grads
    return layout.unravel(lp_ball_flat(layout.ravel(grads), radius, p, segments))


# ----------------------------------------------------------------------------- other sets
def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got k={k!r}.")
    return k


def k_sparse_lmo(grads: Any, delta: Any, k: int) -> Any:
    r"""Oracle of the K-sparse polytope ``conv{x : ||x||_0 <= k, ||x||_inf <= δ}`` over a pytree.

    The polytope is the intersection of the L1 ball of radius kδ and the L∞ ball of radius δ
    (k = 1: the L1 ball, k = n: the L∞ ball). Its minimizer puts ``-δ sign(g_i)`` on the k
    entries of largest ``|g_i|`` of the whole pytree (the first in flattened leaf order on
    ties) and 0 elsewhere, so ``<s, g> = -δ`` (sum of the k largest ``|g_i|``).

    Args:
      grads: a pytree of floating arrays.
      delta: the scalar radius δ >= 0.
      k: the number of nonzero entries, ``1 <= k <= n`` (n: the number of entries of
        ``grads``), a Python int.

    Returns:
      A pytree ``s`` with the structure, shapes and dtypes of ``grads``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from fw_optax import k_sparse_lmo
      >>> k_sparse_lmo({"a": jnp.array([0.5, -3.0]), "b": jnp.array([2.0, 0.1])}, 1.0, k=2)
      {'a': Array([0., 1.], dtype=float32), 'b': Array([-1.,  0.], dtype=float32)}
    """
    k = _check_k(k)
    layout = Layout.of(grads)
    if k > layout.size:
        raise ValueError(f"k must be at most the number of entries n={layout.size}, got k={k}.")
    radius = scalar_radius(delta, "k_sparse_lmo")
    g = layout.ravel(grads).reshape(-1)  # zero padding never wins: it gets sign(0) = 0
    _, top = jax.lax.top_k(jnp.abs(g), k)  # lax.top_k puts the lower index first on ties
    s = jnp.zeros_like(g).at[top].set(-radius.astype(g.dtype) * jnp.sign(g[top]))
    return layout.unravel(s.reshape(-1, BLOCK))


def _l2_leaf(g: jax.Array, radius: jax.Array, axes: tuple[int, ...] | None) -> jax.Array:
    """``-δ g / ||g||_2``, the norm over ``axes`` (None: all); 0 where that norm is 0."""
    m = jnp.max(jnp.abs(g), axis=axes, keepdims=True)  # divide by m first: no over/underflow
    r = g / jnp.where(m > 0, m, 1.0)
    norm = jnp.sqrt(jnp.sum(r * r, axis=axes, keepdims=True))
    return jnp.where(m > 0, -radius * r / jnp.where(m > 0, norm, 1.0), 0.0)


def _per_leaf(
    grads: Any, delta: Any, leaf_oracle: Callable[[KeyPath, jax.Array, jax.Array], jax.Array]
) -> Any:
    """Applies ``leaf_oracle(path, g, radius)`` to every leaf, in the leaf's compute dtype."""
    layout = Layout.of(grads)
    radii = leaf_radii(delta, layout)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(grads)
    out = []
    for (path, g), radius in zip(leaves_with_path, radii, strict=True):
        dtype = compute_dtype([jnp.result_type(g)])
        s = leaf_oracle(path, jnp.asarray(g, dtype), radius.astype(dtype))
        out.append(s.astype(jnp.result_type(g)))
    return jax.tree.unflatten(treedef, out)


def group_l2_lmo(grads: Any, delta: Any, *, axis: int = -1) -> Any:
    r"""Oracle of a product of L2 balls, one per output unit: ``s_j = -δ g_j / ||g_j||_2``.

    For every leaf, the group ``j`` is the slice at index ``j`` along ``axis``, and
    ``g_j`` the gradient of the weights feeding output unit ``j``. The default ``axis=-1`` is
    the output axis of Flax kernels (``[in, out]``); ``axis=0`` gives rows (the PyTorch
    ``[out, in]`` layout). A 1-D leaf (a bias) has one entry per unit, so each entry is its
    own ball: ``s = -δ sign(g)``; a 0-d leaf likewise. Every group of a leaf has that leaf's
    radius. A group with zero gradient gets ``s_j = 0``.

    Args:
      grads: a pytree of floating arrays.
      delta: the radius δ >= 0, a scalar or a pytree of per-leaf scalars.
      axis: the axis that indexes the groups of every leaf with ``ndim >= 2``.

    Returns:
      A pytree ``s`` with the structure, shapes and dtypes of ``grads``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from fw_optax import group_l2_lmo
      >>> group_l2_lmo(jnp.array([[3.0, 0.0], [4.0, -2.0]]), 1.0)
      Array([[-0.6, -0. ],
             [-0.8,  1. ]], dtype=float32)
    """

    def one(path: KeyPath, g: jax.Array, radius: jax.Array) -> jax.Array:
        if g.ndim < 2:
            return -radius * jnp.sign(g)
        ax = axis % g.ndim if -g.ndim <= axis < g.ndim else None
        if ax is None:
            raise ValueError(
                f"group_l2_lmo(axis={axis}) does not fit the leaf "
                f"{jax.tree_util.keystr(path) or 'at the root'} of shape {g.shape}."
            )
        return _l2_leaf(g, radius, tuple(i for i in range(g.ndim) if i != ax))

    return _per_leaf(grads, delta, one)


def nuclear_lmo(grads: Any, delta: Any) -> Any:
    r"""Oracle of the nuclear-norm ball of radius δ, one ball per matrix leaf: ``-δ u_1 v_1^T``.

    The nuclear norm ``||X||_* = Σ σ_i`` is dual to the spectral norm, so over
    ``{||S||_* <= δ}`` the minimizer of ``<S, G>`` is ``-δ u_1 v_1^T`` with ``(u_1, v_1)`` the top
    singular pair of ``G``, and ``<S, G> = -δ σ_1(G)``: a rank-one step. The pair comes from an
    exact SVD (``jnp.linalg.svd``), not power iterations. A zero matrix gets ``S = 0``.

    Leaves that are not matrices: a 0-d or 1-d leaf (a bias) gets the L2 ball of radius δ
    (for a vector the nuclear and L2 norms agree); a leaf with 3 or more axes raises
    ``ValueError`` (reshape it to the matrix you mean, or give it another oracle through
    ``optax.multi_transform``).

    Args:
      grads: a pytree of floating arrays with at most 2 axes each.
      delta: the radius δ >= 0, a scalar or a pytree of per-leaf scalars.

    Returns:
      A pytree ``s`` with the structure, shapes and dtypes of ``grads``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from fw_optax import nuclear_lmo
      >>> nuclear_lmo(jnp.array([[2.0, 0.0], [0.0, 1.0]]), 3.0)
      Array([[-3., -0.],
             [-0., -0.]], dtype=float32)
    """

    def one(path: KeyPath, g: jax.Array, radius: jax.Array) -> jax.Array:
        if g.ndim > 2:
            raise ValueError(
                "nuclear_lmo handles matrices (and falls back to the L2 ball for vectors), "
                f"got shape {g.shape} at {jax.tree_util.keystr(path) or 'the root'}."
            )
        if g.ndim < 2 or min(g.shape) == 0:
            return _l2_leaf(g, radius, None)
        scale = jnp.max(jnp.abs(g))
        u, sigma, vt = jnp.linalg.svd(g / jnp.where(scale > 0, scale, 1.0), full_matrices=False)
        return jnp.where(sigma[0] > 0, -radius * jnp.outer(u[:, 0], vt[0]), 0.0)

    return _per_leaf(grads, delta, one)
