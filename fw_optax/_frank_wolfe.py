"""The Frank-Wolfe RNN optimizer (Algorithm 1 of Yue et al., ICPR 2020) as an optax transform."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, cast, get_args

import chex
import jax
import jax.numpy as jnp
import optax

from fw_optax._flat import Layout, TreeDef
from fw_optax._lmo import (
    Oracle,
    Scope,
    canonical_p,
    check_scope,
    lp_ball_flat,
)

StepRule = Literal["average", "open_loop"]
STEP_RULES: tuple[str, ...] = get_args(StepRule)


class FrankWolfeState(NamedTuple):
    """State of [`frank_wolfe`][fw_optax.frank_wolfe].

    Attributes:
      count: the number of outer steps taken so far (int32); the schedule of δ reads it.
      gap: the Frank-Wolfe gap ``<g_k, Δ_{k-1} - s_k>`` of the last gradient evaluated in the
        last outer step (float32, >= 0; 0 before the first step).
      inner_steps: the number of gradients that outer step evaluated (int32): K, or fewer when
        ``gap_tol`` stopped it early.
    """

    count: chex.Array
    gap: chex.Array
    inner_steps: chex.Array


# ----------------------------------------------------------------------------- validation
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


def _check_positive(name: str, value: Any, *, schedule_ok: bool, strict: bool) -> None:
    """Rejects a concrete ``value`` that is not a real number > 0 (>= 0 unless ``strict``)."""
    if (schedule_ok and callable(value)) or isinstance(value, jax.core.Tracer):
        return  # a schedule, or injected by optax.inject_hyperparams: not concrete here.
    bound = "> 0" if strict else ">= 0"
    kind = f"a real number {bound}" + (" or a schedule" if schedule_ok else "")
    if isinstance(value, (str, bool)):
        raise ValueError(f"{name} must be {kind}, got {name}={value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {kind}, got {name}={value!r}.") from None
    if not (number > 0.0 if strict else number >= 0.0):  # also rejects NaN
        raise ValueError(f"{name} must be {bound}, got {name}={value!r}.")


def _check_step_rule(step_rule: Any) -> StepRule:
    if step_rule not in STEP_RULES:
        raise ValueError(f"step_rule must be one of {STEP_RULES}, got step_rule={step_rule!r}.")
    return cast(StepRule, step_rule)


def _check_oracle(oracle: Any, p: Any, scope: Any) -> None:
    if oracle is None:
        return
    if not callable(oracle):
        raise ValueError(
            f"oracle must be a function oracle(grads, delta) -> s, got oracle={oracle!r}."
        )
    if canonical_p(p) != 2.0 or scope != "global":
        raise ValueError(
            f"p={p!r} and scope={scope!r} configure the built-in Lp-ball oracle and do nothing "
            "with oracle=...: bind them to your oracle instead, e.g. "
            "functools.partial(fw_optax.lp_ball_lmo, p=3, scope='leaf')."
        )


def _check_distributed(batch_axis_name: Any, local: Any, gap_tol: Any) -> None:
    if batch_axis_name is not None and not isinstance(batch_axis_name, str):
        raise ValueError(
            "batch_axis_name must be None or the name of the mesh axis the batch is split "
            f"over, got batch_axis_name={batch_axis_name!r}."
        )
    if not isinstance(local, bool):
        raise ValueError(f"local must be True or False, got local={local!r}.")
    if local and batch_axis_name is None:
        raise ValueError(
            "local=True averages each device's Δ_K over the devices and needs the mesh axis "
            "the batch is split over: pass batch_axis_name (e.g. 'data'), got "
            "batch_axis_name=None."
        )
    if local and gap_tol is not None:
        raise ValueError(
            f"local=True with gap_tol={gap_tol!r}: each device would stop its inner loop at "
            "its own k. Use gap_tol with local=False (the gap is then the same on every "
            "device) or a fixed K."
        )


def _check_axis_bound(batch_axis_name: str) -> None:
    try:
        jax.lax.axis_size(batch_axis_name)
    except NameError:
        raise ValueError(
            f"batch_axis_name={batch_axis_name!r} is not a mesh axis where update() runs: call "
            "it inside jax.shard_map (or jax.pmap) over a mesh with that axis, or use "
            "batch_axis_name=None under plain jax.jit."
        ) from None


def _leading_sizes(tree: Any) -> set[int]:
    return {leaf.shape[0] if jnp.ndim(leaf) else -1 for leaf in jax.tree.leaves(tree)}


def _missing_value_fn(K: int) -> TypeError:
    return TypeError(
        f"frank_wolfe with K={K} evaluates K-1 more gradients inside update() and needs the "
        "loss as a function of the parameters: pass it as a keyword argument, "
        "tx.update(grads, state, params, value_fn=lambda params: loss(params, batch)); "
        "through flax.nnx.Optimizer: optimizer.update(model, grads, value_fn=...), where "
        "value_fn takes the nnx.Param state (nnx.merge it with the graphdef and the rest). "
        "Only K=1 runs without it."
    )


def _step_size(step_rule: StepRule, k: jax.Array) -> jax.Array:
    """γ_k of ``Δ_k = (1 - γ_k) Δ_{k-1} + γ_k s_k``: 1/k (the paper) or 2/(k+1) (open loop)."""
    return 1.0 / k if step_rule == "average" else 2.0 / (k + 1.0)


class _Inner(NamedTuple):
    """The carry of the inner loop: Δ_{k-1}, the cumulative point (empty unless
    ``cumulative``), the last gap."""

    avg: jax.Array
    offset: jax.Array
    gap: jax.Array


def frank_wolfe(
    K: int,
    delta: optax.ScalarOrSchedule,
    p: float | str = 2,
    *,
    scope: Scope = "global",
    cumulative: bool = False,
    oracle: Oracle | None = None,
    gap_tol: float | None = None,
    step_rule: StepRule = "average",
    relative_radius: bool = False,
    batch_axis_name: str | None = None,
    local: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""The Frank-Wolfe RNN optimizer: K linear-minimization steps in a ball around ω.

    At outer step t, with ``δ_t`` the radius and ``C(δ)`` the constraint set (by default the
    Lp ball of radius δ centred at 0), Algorithm 1 of the paper runs, from ``Δ_{t,0} = 0``,

    ```text
    g_k     = ∇F(ω_{t-1} + Δ_{t,k-1})
    s_{t,k} = argmin_{s ∈ C(δ_t)} <s, g_k>
    Δ_{t,k} = (1 - γ_k) Δ_{t,k-1} + γ_k s_{t,k}
    ```

    for k = 1..K with ``γ_k = 1/k`` (``step_rule="average"``: ``Δ_{t,K}`` is the mean of the
    ``s_{t,k}``) or ``γ_k = 2/(k+1)`` (``"open_loop"``, the classic Frank-Wolfe rule), and then
    ``ω_t = ω_{t-1} + η Δ_{t,K}``. This transformation emits ``-Δ_{t,K}``, so

    - ``optax.chain(frank_wolfe(K, δ, p), optax.sgd(η))`` is Algorithm 1 exactly, and
    - ``optax.chain(frank_wolfe(K, δ, 2, scope="leaf", cumulative=True), optax.adam(η))`` is
      the authors' released optimizer (up to the factor 1/δ on Adam's input, which Adam's
      normalization ignores up to its ε).

    **The Frank-Wolfe gap.** Inner step k also computes, at no extra gradient,
    ``gap_k = <g_k, Δ_{k-1} - s_k> >= 0`` (``gap_1 = δ ||g_1||_q`` for the Lp ball): an upper
    bound on how much the linearized loss can still drop inside C. ``state.gap`` holds the gap
    of the last gradient evaluated and ``state.inner_steps`` how many gradients the step
    evaluated. With ``gap_tol``, the inner loop stops at the first k >= 2 with
    ``gap_k <= gap_tol · gap_1`` and emits ``-Δ_{k-1}``, the iterate that gap certifies: K is
    then a maximum, and the program (a ``lax.while_loop``) still compiles once.

    The incoming ``updates`` must be the gradient at ``ω_{t-1}``: it is the first inner gradient
    (k = 1), so an outer step costs K gradient evaluations in all (fewer with ``gap_tol``).
    The inner steps k = 2..K differentiate ``value_fn`` inside one ``jax.lax.scan``: the
    program compiles once, whatever K. The running average, the gap and the built-in oracle
    work on one flat buffer of all parameters, so the optimizer's own cost does not grow with
    the number of parameter tensors.

    Fresh data per inner step (what the authors' code does: inner step k eats mini-batch k): pass
    ``inner_batches``, a pytree whose leaves have a leading axis of size K - 1. Inner step k then
    evaluates ``value_fn(params, batch)`` on the slice ``k - 2`` of it. ``jnp.arange(2, K + 1)``
    hands ``value_fn`` the inner step's index instead, e.g. to pick a chunk in truncated BPTT.

    **Several devices.** Under ``jax.jit`` with the batch sharded (``NamedSharding``) and
    the parameters replicated, nothing is to be set: the loss is the global batch's and the
    compiler inserts the collectives its gradients need. Inside ``jax.shard_map`` (or
    ``jax.pmap``) each device sees its own shard: name the mesh axis the batch is split over
    in ``batch_axis_name``, pass this device's own gradient as ``updates`` and this device's
    loss on its shard as ``value_fn``, the same way with ``check_vma=True`` or ``False``:

    ```python
    def train_step(params, opt_state, shard):  # inside shard_map, batch split over "data"
        loss = lambda w: loss_fn(w, shard)  # this device's loss on its shard
        grads = jax.grad(loss)(fw_optax.per_device(params, "data"))
        updates, opt_state = tx.update(grads, opt_state, params, value_fn=loss)
        return optax.apply_updates(params, updates), opt_state  # out_specs P()
    ```

    ([`per_device`][fw_optax.per_device] makes the gradient the device's own: with
    ``check_vma=True`` a plain ``jax.grad(loss)(params)`` is the sum over the devices.) Then

    - ``local=False`` (synchronous): every gradient the transform uses, the incoming one and
      each inner one, is averaged over the axis (``lax.pmean``, K all-reduces per outer
      step), so an outer step equals single-device Frank-Wolfe on the global batch when the
      shards have equal size;
    - ``local=True``: the K-1 inner gradients are the device's own (no communication): each
      device runs Algorithm 1 on its shard and Δ_K is averaged over the axis once (one
      all-reduce per outer step).

    Either way the emitted update and the state are the same on every device; with
    ``local=True``, ``state.gap`` is the mean over the devices of their gaps.

    Args:
      K: the number of inner Frank-Wolfe steps (the maximum with ``gap_tol``), an int >= 1
        (static).
      delta: the radius δ >= 0, a float or an optax schedule of the outer step count (δ_t).
      p: the norm of the built-in Lp ball, a real ``p >= 1`` or infinity (``float("inf")``,
        ``jnp.inf``, ``"inf"``) (static).
      scope: the built-in ball's layout. ``"global"``: one ball over the whole parameter
        pytree (the paper); ``"leaf"``: a product of balls of radius δ, one per parameter
        tensor (the authors' code).
      cumulative: where the gradient of inner step k is taken. ``False`` (Algorithm 1): at
        ``ω + Δ_{k-1}``. ``True`` (the authors' code, which adds Δ_k to the weights after each
        inner step): at ``ω + Δ_1 + ... + Δ_{k-1}``. The two agree for K <= 2.
      oracle: the constraint set, as its linear minimization oracle ``oracle(grads, delta)``
        returning a pytree like ``grads`` (see [`Oracle`][fw_optax.Oracle]): e.g.
        ``functools.partial(fw_optax.k_sparse_lmo, k=100)``, ``fw_optax.nuclear_lmo``, or your
        own. ``None``: the Lp ball given by ``p`` and ``scope`` (which must keep their defaults
        when an oracle is given).
      gap_tol: ``None`` (always K inner steps) or a float > 0: stop early once
        gap_k <= gap_tol · gap_1.
      step_rule: ``"average"`` (γ_k = 1/k, the paper) or ``"open_loop"`` (γ_k = 2/(k+1)).
      relative_radius: if ``True``, the radius of each tensor ``ω_i`` is ``δ_t ||ω_i||_2``
        (see [`relative_radii`][fw_optax.relative_radii]), measured at ``ω_{t-1}``; the
        oracle then gets a pytree of per-tensor radii, so it must be a per-tensor one
        (``scope="leaf"``, ``group_l2_lmo``, ``nuclear_lmo``).
      batch_axis_name: ``None`` (one device, or ``jax.jit`` with shardings), or inside
        ``jax.shard_map``/``jax.pmap`` the mesh axis the batch is split over (static).
      local: with ``batch_axis_name``, ``False`` averages every gradient over the axis
        (synchronous), ``True`` only Δ_K (one all-reduce per outer step; not with
        ``gap_tol``).

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its ``update`` takes ``(updates, state,
      params, *, value_fn=None, inner_batches=None, **extra_args)``: ``value_fn(params)`` (or
      ``value_fn(params, batch)`` with ``inner_batches``) returns the scalar loss and is required
      when K > 1; other keyword arguments are ignored, so the transform sits in any ``chain``.
      Under ``optax.inject_hyperparams``, list ``K``, ``p`` and ``oracle`` in ``static_args``.

    Examples:
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

      The gap certifies the inner problem; ``gap_tol`` stops once it has shrunk enough:

      >>> tx = fw_optax.frank_wolfe(K=50, delta=0.5, gap_tol=0.1)
      >>> _, state = tx.update(grads, tx.init(params), params, value_fn=loss_fn)
      >>> int(state.inner_steps) < 50, float(state.gap) >= 0.0
      (True, True)

    References:
      Yue, Li, Saligrama and Zhang, "RNN Training along Locally Optimal Trajectories via
      Frank-Wolfe Algorithm", ICPR 2020. https://arxiv.org/abs/2010.05397

      Jaggi, "Revisiting Frank-Wolfe: Projection-Free Sparse Convex Optimization", ICML 2013
      (the duality gap and the open-loop step 2/(k+1)).
      https://proceedings.mlr.press/v28/jaggi13.html
    """
    K = _check_K(K)
    p = canonical_p(p)
    scope = check_scope(scope)
    _check_positive("delta", delta, schedule_ok=True, strict=False)
    if gap_tol is not None:
        _check_positive("gap_tol", gap_tol, schedule_ok=False, strict=True)
    step_rule = _check_step_rule(step_rule)
    _check_oracle(oracle, p, scope)
    if relative_radius and oracle is None and scope == "global":
        raise ValueError(
            "relative_radius=True gives every tensor its own radius, which needs a per-tensor "
            "oracle: use scope='leaf' (or oracle=group_l2_lmo / nuclear_lmo), not "
            "scope='global'."
        )
    _check_distributed(batch_axis_name, local, gap_tol)
    synchronous = batch_axis_name is not None and not local

    def mean_over_devices(g: jax.Array) -> jax.Array:
        return jax.lax.pmean(g, batch_axis_name) if synchronous else g

    def init_fn(params: Any) -> FrankWolfeState:
        del params
        return FrankWolfeState(
            count=jnp.zeros([], jnp.int32),
            gap=jnp.zeros([], jnp.float32),
            inner_steps=jnp.zeros([], jnp.int32),
        )

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
        if K > 1:
            if value_fn is None:
                raise _missing_value_fn(K)
            if params is None:
                raise ValueError(f"frank_wolfe with K={K} needs params in update().")
            if inner_batches is not None and _leading_sizes(inner_batches) != {K - 1}:
                raise ValueError(
                    f"inner_batches must have a leading axis of size K-1={K - 1} on every leaf, "
                    f"got leading sizes {sorted(_leading_sizes(inner_batches))}."
                )
        if relative_radius and params is None:
            raise ValueError("frank_wolfe(relative_radius=True) needs params in update().")
        if batch_axis_name is not None:
            _check_axis_bound(batch_axis_name)

        layout = Layout.of(updates)
        radius = delta(state.count) if callable(delta) else delta
        radius = jnp.asarray(radius, jnp.float32)
        if relative_radius:
            w = layout.ravel(params)
            radius = radius * jnp.sqrt(layout.leaf_segments.sum(w * w))
        lmo = _flat_oracle(layout, oracle, radius, p, scope)

        def grad_at(offset: jax.Array, batch: Any) -> jax.Array:
            """∇F(ω + offset) as a buffer: the one place the inner loop takes a gradient."""
            step = layout.unravel(offset, cast=False)
            point = jax.tree.map(lambda w, d: (w + d).astype(w.dtype), params, step)

            def loss(w: Any) -> jax.Array:
                assert value_fn is not None  # checked above: only K > 1 takes inner gradients
                return value_fn(w) if batch is None else value_fn(w, batch)

            if batch_axis_name is None:
                grads = jax.grad(loss)(point)
            else:
                # The gradient at point + a zero that varies over the axis is this device's
                # own whether point varies (local) or not (synchronous): with check_vma=True
                # JAX sums a replicated point's gradient over the devices.
                zero = jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), w.dtype), point)
                zero = per_device(zero, batch_axis_name)
                grads = jax.grad(lambda z: loss(jax.tree.map(jnp.add, point, z)))(zero)
            # A gradient by pytree, then one concatenation: differentiating with respect to
            # the buffer instead would scatter every leaf's gradient into it separately.
            return mean_over_devices(layout.ravel(grads))

        def inner_step(carry: _Inner, k: jax.Array, batch: Any) -> _Inner:
            g = grad_at(carry.offset if cumulative else carry.avg, batch)
            s = lmo(g)
            gap = jnp.vdot(g, carry.avg - s)
            avg = carry.avg + _step_size(step_rule, k) * (s - carry.avg)
            offset = carry.offset + avg if cumulative else carry.offset
            return _Inner(avg, offset, gap)

        # k = 1: the incoming updates are the gradient at ω itself, and Δ_1 = s_1.
        g1 = mean_over_devices(layout.ravel(updates))
        s1 = lmo(g1)
        # Without `cumulative` the point is Δ_{k-1} itself: carry no second buffer.
        first = _Inner(s1, s1 if cumulative else jnp.zeros([0], s1.dtype), -jnp.vdot(g1, s1))
        if K == 1:
            last, inner_steps = first, jnp.asarray(1, jnp.int32)
        elif gap_tol is None:
            last, inner_steps = _fixed_loop(inner_step, first, K, inner_batches)
        else:
            last, inner_steps = _adaptive_loop(inner_step, first, K, inner_batches, gap_tol)
        if local:
            # One all-reduce: XLA combines the two operands into one.
            avg, gap = jax.lax.pmean((last.avg, last.gap), batch_axis_name)
            last = last._replace(avg=avg, gap=gap)

        new_updates = jax.tree.map(
            lambda a, u: (-a).astype(u.dtype), layout.unravel(last.avg), updates
        )
        new_state = FrankWolfeState(
            count=optax.safe_increment(state.count),
            gap=last.gap.astype(jnp.float32),
            inner_steps=inner_steps,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def frank_wolfe_stats(opt_state: Any) -> dict[str, jax.Array] | None:
    """The counters of the one [`frank_wolfe`][fw_optax.frank_wolfe] state inside any
    optimizer state.

    Found by name, as ``optax.tree_utils.tree_get`` finds a hyper-parameter, wherever the
    transformation sits: in ``optax.chain``, ``inject_hyperparams``, ``MultiSteps``,
    ``masked``, ``apply_if_finite``, or vmapped over seeds (the counters then carry the
    leading axis).

    Args:
      opt_state: the state of any optax transformation.

    Returns:
      ``{"outer_steps", "gap", "inner_steps"}``
      ([`FrankWolfeState`][fw_optax.FrankWolfeState]'s ``count``, ``gap`` and
      ``inner_steps``: the gradients the last outer step evaluated), or ``None`` if no
      ``frank_wolfe`` is inside.

    Raises:
      ValueError: several ``frank_wolfe`` states are inside (e.g. one per partition of
        ``optax.multi_transform``), naming where they are; read each partition's own.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, fw_optax
      >>> tx = optax.chain(fw_optax.frank_wolfe(K=3, delta=0.1), optax.adam(1e-2))
      >>> params = jnp.ones(2)
      >>> loss = lambda w: jnp.sum(w**2)
      >>> state = tx.init(params)
      >>> _, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
      >>> stats = fw_optax.frank_wolfe_stats(state)
      >>> int(stats["outer_steps"]), int(stats["inner_steps"])
      (1, 3)
      >>> fw_optax.frank_wolfe_stats(optax.adam(1e-2).init(params)) is None
      True
    """
    fields = {
        name: [
            (path[:-1], value)
            for path, value in optax.tree_utils.tree_get_all_with_path(opt_state, field)
            if getattr(path[-1], "tuple_name", None) == FrankWolfeState.__name__
        ]
        for name, field in (
            ("outer_steps", "count"),
            ("gap", "gap"),
            ("inner_steps", "inner_steps"),
        )
    }
    found = fields["inner_steps"]
    if not found:
        return None
    if len(found) > 1:
        where = ", ".join(jax.tree_util.keystr(path) or "the root" for path, _ in found)
        raise ValueError(f"{len(found)} frank_wolfe states in opt_state, at {where}")
    return {name: values[0][1] for name, values in fields.items()}


def per_device(tree: Any, axis_name: str) -> Any:
    """``tree`` as this device's own copy inside ``jax.shard_map``: a gradient taken at it is
    this device's gradient.

    With ``check_vma=True`` (the default of ``jax.shard_map``) JAX sums the gradient of a
    replicated (unvarying) parameter over the mesh axes it meets per-device data on, so
    ``jax.grad(loss)(params, shard)`` is the sum over the devices of their gradients. Cast
    to varying over ``axis_name`` (``jax.lax.pcast(tree, axis_name, to="varying")``) the
    parameters give each device its own. With ``check_vma=False``, and under ``jax.pmap``,
    the cast does nothing: the gradient is already the device's own. The first gradient
    of [`frank_wolfe`][fw_optax.frank_wolfe] with ``batch_axis_name`` set is taken this way.

    Args:
      tree: a pytree of arrays replicated over ``axis_name`` (e.g. the parameters).
      axis_name: the mesh axis the batch is split over.

    Returns:
      ``tree``, varying over ``axis_name``.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np, fw_optax
      >>> from jax.sharding import Mesh, PartitionSpec as P
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
      >>> loss = lambda w, x: jnp.mean((x @ w) ** 2)
      >>> def own_gradient(w, x):
      ...     return jax.grad(loss)(fw_optax.per_device(w, "data"), x)
      >>> grad = jax.shard_map(
      ...     own_gradient, mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"))
      >>> grad(jnp.ones(2), jnp.ones((4, 2)))
      Array([4., 4.], dtype=float32)
    """
    return jax.lax.pcast(tree, axis_name, to="varying")


def _flat_oracle(
    layout: Layout, oracle: Oracle | None, radius: jax.Array, p: float, scope: Scope
) -> Callable[[jax.Array], jax.Array]:
    """``g -> s``: the oracle's answer for a gradient on the buffer, as a buffer.

    The built-in Lp ball runs on the buffer itself (row and segment reductions for
    ``scope="leaf"``); a user's oracle gets the gradient as a pytree and (for per-tensor
    radii) a pytree of radii, and its answer is checked against the gradient's structure and
    shapes.
    """
    if oracle is None:
        segments = layout.one_segment if scope == "global" else layout.leaf_segments
        return lambda g: lp_ball_flat(g, radius, p, segments)

    per_leaf = jnp.ndim(radius) == 1

    def custom(g: jax.Array) -> jax.Array:
        grads = layout.unravel(g)
        s = oracle(grads, layout.treedef.unflatten(list(radius)) if per_leaf else radius)
        _check_oracle_answer(s, grads, oracle)
        return layout.ravel(s)

    return custom


def _check_oracle_answer(s: Any, g: Any, oracle: Oracle) -> None:
    name = getattr(oracle, "__name__", repr(oracle))
    got: TreeDef = jax.tree.structure(s)
    expected: TreeDef = jax.tree.structure(g)
    if got != expected:
        raise ValueError(
            f"the oracle {name} must return a pytree like grads: got structure {got}, "
            f"expected {expected}."
        )
    leaves = jax.tree_util.tree_flatten_with_path(s)[0]
    for (path, a), b in zip(leaves, jax.tree.leaves(g), strict=True):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(
                f"the oracle {name} returned shape {jnp.shape(a)} at "
                f"{jax.tree_util.keystr(path) or 'the root'}, expected {jnp.shape(b)}."
            )


def _fixed_loop(
    inner_step: Callable[[_Inner, jax.Array, Any], _Inner],
    first: _Inner,
    K: int,
    inner_batches: Any,
) -> tuple[_Inner, jax.Array]:
    """Inner steps k = 2..K as one ``lax.scan``."""

    def body(carry: _Inner, xs: tuple[jax.Array, Any]) -> tuple[_Inner, None]:
        k, batch = xs
        return inner_step(carry, k, batch), None

    ks = jnp.arange(2, K + 1, dtype=first.avg.dtype)
    last, _ = jax.lax.scan(body, first, (ks, inner_batches))
    return last, jnp.asarray(K, jnp.int32)


def _adaptive_loop(
    inner_step: Callable[[_Inner, jax.Array, Any], _Inner],
    first: _Inner,
    K: int,
    inner_batches: Any,
    gap_tol: Any,
) -> tuple[_Inner, jax.Array]:
    """Inner steps k = 2..K as one ``lax.while_loop`` that stops once gap_k <= tol · gap_1.

    The stopping step's gradient is spent on its gap only: the loop keeps Δ_{k-1}, the iterate
    gap_k certifies, and reports k gradients evaluated.
    """
    threshold = jnp.asarray(gap_tol, first.gap.dtype) * first.gap

    def cond(loop: tuple[jax.Array, jax.Array, _Inner]) -> jax.Array:
        k, done, _ = loop
        return jnp.logical_and(k <= K, jnp.logical_not(done))

    def body(loop: tuple[jax.Array, jax.Array, _Inner]) -> tuple[jax.Array, jax.Array, _Inner]:
        k, _, carry = loop
        batch = (
            None
            if inner_batches is None
            else jax.tree.map(
                lambda b: jax.lax.dynamic_index_in_dim(b, k - 2, keepdims=False), inner_batches
            )
        )
        new = inner_step(carry, k.astype(carry.avg.dtype), batch)
        done = new.gap <= threshold
        kept = _Inner(
            jnp.where(done, carry.avg, new.avg), jnp.where(done, carry.offset, new.offset), new.gap
        )
        return k + 1, done, kept

    start = (jnp.asarray(2, jnp.int32), jnp.asarray(False), first)
    k_next, _, last = jax.lax.while_loop(cond, body, start)
    return last, k_next - 1
