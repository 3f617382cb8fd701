"""frank_wolfe computes Algorithm 1 exactly, compiles once, composes, rejects bad input."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fw_optax

from tests.fw_optax.numpy_reference import (
    frank_wolfe_delta,
    frank_wolfe_run,
    quadratic_grad,
    rnn_loss_and_grad,
)

P_VALUES = [1.0, 2.0, 3.0, math.inf]
SCOPES = ["global", "leaf"]
SCHEDULE = optax.exponential_decay(0.3, transition_steps=1, decay_rate=0.5)


def _delta_at(delta, t):
    return float(delta(t)) if callable(delta) else delta


def _to_np(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


# ----------------------------------------------------------------------------- problems
def _quadratic(seed=0):
    rng = np.random.default_rng(seed)
    n = 7
    M = rng.standard_normal((n, n))
    A, b = M @ M.T / n, rng.standard_normal(n)
    params = {
        "u": jnp.asarray(rng.standard_normal(3), jnp.float32),
        "v": jnp.asarray(rng.standard_normal((2, 2)), jnp.float32),
    }
    A32, b32 = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)

    def loss_fn(w):
        flat = jnp.concatenate([w["u"], w["v"].ravel()])
        return 0.5 * flat @ A32 @ flat + b32 @ flat + jnp.sum(flat**4) / 4

    def np_grad(w, k):
        return quadratic_grad(w, A, b)

    return params, loss_fn, np_grad


def _rnn_params(rng, F=2, H=5):
    shapes = {"Wx": (F, H), "Wh": (H, H), "b": (H,), "Wo": (H, 1), "bo": (1,)}
    return {k: jnp.asarray(0.5 * rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def _rnn_loss(w, x, y):
    def step(h, xt):
        h = jnp.tanh(xt @ w["Wx"] + h @ w["Wh"] + w["b"])
        return h, None

    h, _ = jax.lax.scan(step, jnp.zeros((x.shape[0], w["Wh"].shape[0])), jnp.swapaxes(x, 0, 1))
    return jnp.mean((h @ w["Wo"] + w["bo"] - y) ** 2)


def _rnn_order(w):  # the NumPy reference's parameter order
    return [w[k] for k in ("Wx", "Wh", "b", "Wo", "bo")]


def _rnn(seed=0, B=3, T=6, F=2):
    rng = np.random.default_rng(seed)
    params = _rnn_params(rng, F)
    x, y = rng.standard_normal((B, T, F)), rng.standard_normal((B, 1))

    def np_grad(w, k):
        return rnn_loss_and_grad(w, x, y)[1]

    loss_fn = functools.partial(
        _rnn_loss, x=jnp.asarray(x, jnp.float32), y=jnp.asarray(y, jnp.float32)
    )
    return params, loss_fn, np_grad


def _reference_step(params_np, np_grad, K, delta, p, scope, cumulative, t):
    return frank_wolfe_delta(
        params_np, np_grad(params_np, 1), np_grad, K, _delta_at(delta, t), p, scope, cumulative
    )


def _check_against_reference(params, loss_fn, np_grad, to_np, K, delta, p, scope, cumulative):
    eta, steps = 0.5, 3
    tx = optax.chain(
        fw_optax.frank_wolfe(K, delta, p, scope=scope, cumulative=cumulative), optax.sgd(eta)
    )

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value_fn=loss_fn)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    w_np = to_np(params)
    for t in range(steps):
        params, state = step(params, state)
        d = _reference_step(w_np, np_grad, K, delta, p, scope, cumulative, t)
        w_np = [w + eta * di for w, di in zip(w_np, d, strict=True)]
        for got, want in zip(to_np(params), w_np, strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


# ----------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("K", [1, 2, 5])
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("delta", [0.2, SCHEDULE], ids=["float", "schedule"])
def test_matches_numpy_reference_on_quadratic(K, p, scope, delta):
    params, loss_fn, np_grad = _quadratic()
    for cumulative in [False, True] if K == 5 else [False]:
        _check_against_reference(params, loss_fn, np_grad, _to_np, K, delta, p, scope, cumulative)


@pytest.mark.parametrize("K", [1, 2, 5])
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("scope", SCOPES)
def test_matches_numpy_reference_on_rnn(K, p, scope):
    params, loss_fn, np_grad = _rnn()
    to_np = lambda w: [np.asarray(a, np.float64) for a in _rnn_order(w)]  # noqa: E731
    delta = SCHEDULE if scope == "global" else 0.2
    _check_against_reference(params, loss_fn, np_grad, to_np, K, delta, p, scope, K == 5)


def test_rnn_reference_gradient_matches_autodiff():
    # Guards the reference itself: its hand-written BPTT agrees with jax.grad.
    params, loss_fn, np_grad = _rnn(seed=3)
    got = [np.asarray(g) for g in _rnn_order(jax.grad(loss_fn)(params))]
    want = np_grad([np.asarray(a, np.float64) for a in _rnn_order(params)], 1)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_cumulative_differs_from_algorithm_1_for_K_3():
    params, loss_fn, _ = _quadratic()
    grads = jax.grad(loss_fn)(params)
    outs = []
    for cumulative in (False, True):
        tx = fw_optax.frank_wolfe(3, 0.5, 2, cumulative=cumulative)
        outs.append(tx.update(grads, tx.init(params), params, value_fn=loss_fn)[0])
    assert not np.allclose(outs[0]["u"], outs[1]["u"], atol=1e-4)


def test_inner_batches_feed_one_batch_per_inner_step():
    rng = np.random.default_rng(1)
    K, B, T, F = 4, 3, 5, 2
    params = _rnn_params(rng, F)
    xs, ys = rng.standard_normal((K, B, T, F)), rng.standard_normal((K, B, 1))

    def np_grad(w, k):  # inner step k eats mini-batch k (1-based)
        return rnn_loss_and_grad(w, xs[k - 1], ys[k - 1])[1]

    def value_fn(w, batch):
        return _rnn_loss(w, *batch)

    batches = (jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32))
    tx = fw_optax.frank_wolfe(K, 0.3, 2, scope="leaf", cumulative=True)
    grads = jax.grad(value_fn)(params, jax.tree.map(lambda a: a[0], batches))
    inner = jax.tree.map(lambda a: a[1:], batches)
    update = jax.jit(functools.partial(tx.update, value_fn=value_fn))
    out, _ = update(grads, tx.init(params), params, inner_batches=inner)
    w_np = [np.asarray(a, np.float64) for a in _rnn_order(params)]
    want = frank_wolfe_delta(w_np, np_grad(w_np, 1), np_grad, K, 0.3, 2.0, "leaf", True)
    for got, w in zip(_rnn_order(out), want, strict=True):
        np.testing.assert_allclose(got, -w, rtol=2e-5, atol=2e-6)


def test_inner_batches_can_carry_the_step_index():
    seen = []
    K = 4

    def value_fn(w, k):
        seen.append(k.shape)
        return k * w[0] + w[1]  # gradient (k, 1): inner step k sees its own index

    w = jnp.ones(2)
    tx = fw_optax.frank_wolfe(K, 1.0, 2)
    out, _ = tx.update(w, tx.init(w), w, value_fn=value_fn, inner_batches=jnp.arange(2.0, K + 1))
    assert seen == [()]  # traced once, inside the scan
    directions = [np.array([k, 1.0]) / np.hypot(k, 1.0) for k in range(1, K + 1)]
    np.testing.assert_allclose(out, np.mean(directions, axis=0), rtol=1e-6)


# ----------------------------------------------------------------------------- gap and step rules
def _one_step(params, loss_fn, tx):
    grads = jax.grad(loss_fn)(params)
    update = jax.jit(functools.partial(tx.update, value_fn=loss_fn))
    return update(grads, tx.init(params), params)


@pytest.mark.parametrize(
    "problem, p", [("quadratic", p) for p in P_VALUES] + [("rnn", 3.0)], ids=str
)
@pytest.mark.parametrize(
    "K, step_rule, gap_tol, cumulative",
    [
        (6, "average", None, False),
        (6, "open_loop", None, True),
        (12, "average", 0.5, False),
        (12, "open_loop", 0.3, True),
    ],
)
def test_gap_steps_and_rules_match_numpy_reference(problem, p, K, step_rule, gap_tol, cumulative):
    if problem == "quadratic":
        params, loss_fn, np_grad = _quadratic()
        to_np = _to_np
    else:
        params, loss_fn, np_grad = _rnn(seed=4)
        to_np = lambda w: [np.asarray(a, np.float64) for a in _rnn_order(w)]  # noqa: E731
    tx = fw_optax.frank_wolfe(
        K, 0.4, p, cumulative=cumulative, step_rule=step_rule, gap_tol=gap_tol
    )
    out, state = _one_step(params, loss_fn, tx)
    w = to_np(params)
    want, gap, steps = frank_wolfe_run(
        w, np_grad(w, 1), np_grad, K, 0.4, p, "global", cumulative, step_rule, gap_tol
    )
    for got, d in zip(to_np(out), want, strict=True):
        np.testing.assert_allclose(got, -d, rtol=5e-5, atol=5e-6)
    np.testing.assert_allclose(float(state.gap), gap, rtol=1e-4, atol=1e-6)
    assert int(state.inner_steps) == steps
    assert state.gap.dtype == jnp.float32 and state.inner_steps.dtype == jnp.int32


def test_adaptive_K_stops_early_and_saves_gradients():
    # The reference run above may use all K steps; this problem must stop well before K.
    params, loss_fn, np_grad = _quadratic(seed=1)
    tx = fw_optax.frank_wolfe(40, 0.05, 2, gap_tol=0.2)
    _, state = _one_step(params, loss_fn, tx)
    w = _to_np(params)
    _, _, steps = frank_wolfe_run(w, np_grad(w, 1), np_grad, 40, 0.05, 2.0, "global", gap_tol=0.2)
    assert 2 <= int(state.inner_steps) == steps < 40


def test_first_gap_is_delta_times_dual_norm():
    g = {"a": jnp.array([3.0, -4.0]), "b": jnp.array([[1.0, 2.0]])}
    flat = np.array([3.0, -4.0, 1.0, 2.0])
    for p, q_norm in [(2, np.linalg.norm(flat)), (1, 4.0), ("inf", 10.0)]:
        tx = fw_optax.frank_wolfe(1, 0.5, p)
        _, state = tx.update(g, tx.init(g))
        np.testing.assert_allclose(float(state.gap), 0.5 * q_norm, rtol=1e-6)
        assert int(state.inner_steps) == 1


def test_gap_is_nonnegative_along_training():
    params, loss_fn, _ = _rnn(seed=5)
    tx = optax.chain(fw_optax.frank_wolfe(4, 0.3, 3, step_rule="open_loop"), optax.sgd(0.5))

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss_fn)(params), state, params, value_fn=loss_fn)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(5):
        params, state = step(params, state)
        assert float(state[0].gap) >= -1e-6
        assert int(state[0].inner_steps) == 4


def test_adaptive_K_compiles_once_whatever_the_stopping_step():
    params, loss_fn, _ = _quadratic()
    delta = optax.linear_schedule(1.0, 0.05, 6)
    tx = optax.chain(fw_optax.frank_wolfe(30, delta, 2, gap_tol=0.05), optax.sgd(0.5))

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss_fn)(params), state, params, value_fn=loss_fn)
        return optax.apply_updates(params, updates), state

    state, seen = tx.init(params), set()
    for _ in range(6):
        params, state = step(params, state)
        seen.add(int(state[0].inner_steps))
    assert len(seen) > 1  # the loop stopped at different k ...
    assert step._cache_size() == 1  # ... in one compiled program
    text = str(jax.make_jaxpr(step)(params, state))
    assert "while[" in text and "scan[" not in text.split("while[", 1)[1].split("cond_jaxpr")[0]


def test_adaptive_K_reads_inner_batches_by_step():
    K = 6

    def value_fn(w, k):
        return k * w[0] + w[1]  # gradient (k, 1): inner step k sees its own index

    w = jnp.ones(2)
    tx = fw_optax.frank_wolfe(K, 1.0, 2, gap_tol=1e-9)  # never met: runs all K steps
    out, state = tx.update(
        jnp.array([1.0, 1.0]),
        tx.init(w),
        w,
        value_fn=value_fn,
        inner_batches=jnp.arange(2.0, K + 1),
    )
    directions = [np.array([k, 1.0]) / np.hypot(k, 1.0) for k in range(1, K + 1)]
    np.testing.assert_allclose(out, np.mean(directions, axis=0), rtol=1e-6)
    assert int(state.inner_steps) == K


# ----------------------------------------------------------------------------- oracles
@pytest.mark.parametrize("p", [1.0, 3.0, math.inf])
@pytest.mark.parametrize("scope", SCOPES)
def test_oracle_argument_equals_builtin_ball(p, scope):
    params, loss_fn, _ = _quadratic(seed=6)
    builtin = fw_optax.frank_wolfe(4, 0.2, p, scope=scope)
    oracle = functools.partial(fw_optax.lp_ball_lmo, p=p, scope=scope)
    custom = fw_optax.frank_wolfe(4, 0.2, oracle=oracle)
    (a, sa), (b, sb) = _one_step(params, loss_fn, builtin), _one_step(params, loss_fn, custom)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sa.gap, sb.gap, rtol=1e-5, atol=1e-7)


def test_user_oracle_plugs_in_without_library_changes():
    def box_lmo(grads, delta):  # the L-inf ball written by a user
        return jax.tree.map(lambda g: -delta * jnp.sign(g), grads)

    params, loss_fn, _ = _quadratic()
    a, _ = _one_step(params, loss_fn, fw_optax.frank_wolfe(3, 0.1, oracle=box_lmo))
    b, _ = _one_step(params, loss_fn, fw_optax.frank_wolfe(3, 0.1, "inf"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)


def test_relative_radius_scales_each_tensor_by_its_norm():
    params = {"u": jnp.array([3.0, 4.0]), "v": jnp.array([[0.0, 2.0], [0.0, 0.0]])}
    grads = {"u": jnp.array([1.0, 0.0]), "v": jnp.array([[0.0, 0.0], [0.0, -3.0]])}
    tx = fw_optax.frank_wolfe(1, 0.1, 2, scope="leaf", relative_radius=True)
    out, state = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(out["u"], [0.5, 0.0], rtol=1e-6)  # δ ||u|| = 0.5
    np.testing.assert_allclose(out["v"], [[0.0, 0.0], [0.0, -0.2]], rtol=1e-6)  # δ ||v|| = 0.2
    np.testing.assert_allclose(float(state.gap), 0.5 * 1.0 + 0.2 * 3.0, rtol=1e-6)
    via_oracle = fw_optax.frank_wolfe(1, 0.1, oracle=fw_optax.group_l2_lmo, relative_radius=True)
    out2, _ = via_oracle.update(grads, via_oracle.init(params), params)
    np.testing.assert_allclose(out2["u"], [0.5, 0.0], rtol=1e-6)  # each entry its own ball
    np.testing.assert_allclose(out2["v"], [[0.0, 0.0], [0.0, -0.2]], rtol=1e-6)


def test_mixed_dtypes_match_per_leaf_computation():
    params = {"h": jnp.array([0.5, -1.0, 2.0], jnp.bfloat16), "f": jnp.array([1.0, 3.0])}

    def loss_fn(w):
        return jnp.sum(w["h"].astype(jnp.float32) ** 2) + jnp.sum(jnp.sin(w["f"]))

    out, _ = _one_step(params, loss_fn, fw_optax.frank_wolfe(3, 0.2, 2))
    assert out["h"].dtype == jnp.bfloat16 and out["f"].dtype == jnp.float32
    w = [np.asarray(params["f"], np.float64), np.asarray(params["h"], np.float64)]

    def np_grad(w, k):
        return [np.cos(w[0]), 2 * np.asarray(jnp.asarray(w[1], jnp.bfloat16), np.float64)]

    want = frank_wolfe_delta(w, np_grad(w, 1), np_grad, 3, 0.2, 2.0, "global")
    np.testing.assert_allclose(out["f"], -want[0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["h"], np.float64), -want[1], rtol=1e-2)


# ----------------------------------------------------------------------------- compilation
def test_compiles_once_across_steps():
    params, loss_fn, _ = _quadratic()
    tx = optax.chain(fw_optax.frank_wolfe(5, SCHEDULE, 3), optax.adam(1e-2))
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value_fn=loss_fn)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(3):
        params, state = step(params, state)
    assert len(traces) == 1
    assert step._cache_size() == 1


@pytest.mark.parametrize("K", [2, 9])
def test_inner_loop_is_one_scan_not_unrolled(K):
    params, loss_fn, _ = _quadratic()
    tx = fw_optax.frank_wolfe(K, 0.1, 2)
    grads = jax.grad(loss_fn)(params)
    jaxpr = jax.make_jaxpr(functools.partial(tx.update, value_fn=loss_fn))(
        grads, tx.init(params), params
    )
    text = str(jaxpr)
    assert text.count("scan[") == 1
    assert f"length={K - 1}" in text


# ----------------------------------------------------------------------------- composition
def test_chain_with_clip_schedule_and_adam_matches_manual_composition():
    params, loss_fn, _ = _quadratic()
    fw = fw_optax.frank_wolfe(3, 0.2, 2)
    lr = optax.linear_schedule(0.1, 0.01, 10)
    tx = optax.chain(optax.clip_by_global_norm(0.5), fw, optax.sgd(lr), optax.adam(1e-2))
    manual = [optax.clip_by_global_norm(0.5), fw, optax.sgd(lr), optax.adam(1e-2)]
    state, mstates = tx.init(params), [m.init(params) for m in manual]
    p1 = p2 = params
    for _ in range(3):
        g = jax.grad(loss_fn)(p1)
        u, state = tx.update(g, state, p1, value_fn=loss_fn, unrelated=123)
        p1 = optax.apply_updates(p1, u)
        u = jax.grad(loss_fn)(p2)
        for i, m in enumerate(manual):
            u, mstates[i] = (
                m.update(u, mstates[i], p2, value_fn=loss_fn)
                if m is fw
                else m.update(u, mstates[i], p2)
            )
        p2 = optax.apply_updates(p2, u)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_vmap_over_independent_problems():
    rng = np.random.default_rng(2)
    targets = jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)
    tx = optax.chain(fw_optax.frank_wolfe(4, 0.3, 3), optax.sgd(1.0))

    def one(w, target):
        loss_fn = lambda v: jnp.sum((v - target) ** 2) + jnp.sum(v**4)  # noqa: E731
        u, _ = tx.update(jax.grad(loss_fn)(w), tx.init(w), w, value_fn=loss_fn)
        return u

    w0 = jnp.zeros((4, 3))
    batched = jax.vmap(one)(w0, targets)
    looped = jnp.stack([one(w0[i], targets[i]) for i in range(4)])
    np.testing.assert_allclose(batched, looped, rtol=1e-6, atol=1e-7)
    assert not np.allclose(batched[0], batched[1])


def test_inject_hyperparams_with_delta_injected():
    params, loss_fn, _ = _quadratic()
    grads = jax.grad(loss_fn)(params)
    plain = fw_optax.frank_wolfe(3, 0.2, 3)
    injected = optax.inject_hyperparams(fw_optax.frank_wolfe, static_args=("K", "p"))(
        K=3, delta=0.2, p=3
    )
    state = injected.init(params)
    want, _ = plain.update(grads, plain.init(params), params, value_fn=loss_fn)
    got, _ = jax.jit(functools.partial(injected.update, value_fn=loss_fn))(grads, state, params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    state.hyperparams["delta"] = jnp.asarray(0.4)
    got, _ = injected.update(grads, state, params, value_fn=loss_fn)
    plain = fw_optax.frank_wolfe(3, 0.4, 3)
    want, _ = plain.update(grads, plain.init(params), params, value_fn=loss_fn)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_params_keep_dtype(dtype):
    params = {"w": jnp.ones((4,), dtype), "b": jnp.zeros((2,), dtype)}
    loss_fn = lambda w: jnp.sum(w["w"].astype(jnp.float32) ** 2) + jnp.sum(w["b"] - 1.0)  # noqa: E731
    tx = optax.chain(fw_optax.frank_wolfe(3, 0.1, 2), optax.sgd(0.1))
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, value_fn=loss_fn))
    for _ in range(2):
        updates, state = step(jax.grad(loss_fn)(params), state, params)
        params = optax.apply_updates(params, updates)
        assert {u.dtype for u in jax.tree.leaves(updates)} == {jnp.dtype(dtype)}
        assert {u.dtype for u in jax.tree.leaves(params)} == {jnp.dtype(dtype)}
        assert state[0].count.dtype == jnp.int32


@pytest.mark.parametrize("K", [1, 3])
def test_zero_gradients_give_zero_updates(K):
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(3)}
    tx = fw_optax.frank_wolfe(K, 0.5, 2)
    zero = jax.tree.map(jnp.zeros_like, params)
    out, state = tx.update(zero, tx.init(params), params, value_fn=lambda w: jnp.float32(1.0))
    for leaf in jax.tree.leaves(out):
        np.testing.assert_array_equal(leaf, 0.0)
    assert int(state.count) == 1


def test_k1_needs_no_value_fn_and_is_normalized_gradient():
    g = {"a": jnp.array([3.0, 4.0])}
    tx = fw_optax.frank_wolfe(1, 2.0, 2)
    out, _ = tx.update(g, tx.init(g))
    np.testing.assert_allclose(out["a"], [1.2, 1.6], rtol=1e-6)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"K": 0}, "K must be an int >= 1, got K=0"),
        ({"K": -2}, "K=-2"),
        ({"K": 2.5}, "K=2.5"),
        ({"K": "3"}, "K='3'"),
        ({"K": True}, "K=True"),
        ({"p": 0.5}, "p must be >= 1"),
        ({"p": "two"}, "p='two'"),
        ({"delta": -0.1}, "delta must be >= 0, got delta=-0.1"),
        ({"delta": float("nan")}, "delta=nan"),
        ({"delta": "big"}, "delta"),
        ({"scope": "layer"}, "scope.*'layer'"),
        ({"gap_tol": 0.0}, "gap_tol must be > 0, got gap_tol=0.0"),
        ({"gap_tol": -1}, "gap_tol=-1"),
        ({"gap_tol": float("nan")}, "gap_tol=nan"),
        ({"gap_tol": "small"}, "gap_tol='small'"),
        ({"step_rule": "harmonic"}, "step_rule.*'harmonic'"),
        ({"oracle": "l2"}, "oracle must be a function.*'l2'"),
        ({"oracle": fw_optax.nuclear_lmo, "p": 3}, "p=3.0 and scope='global' configure"),
        ({"relative_radius": True}, "relative_radius=True .* scope='leaf'"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {"K": 2, "delta": 0.1, "p": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        fw_optax.frank_wolfe(**args)


def test_missing_value_fn_is_a_type_error_saying_what_to_pass():
    w = jnp.ones(3)
    tx = fw_optax.frank_wolfe(2, 0.1)
    with pytest.raises(TypeError, match="value_fn") as info:
        tx.update(w, tx.init(w), w)
    assert "value_fn=lambda params" in str(info.value)
    assert "optimizer.update(model, grads, value_fn=" in str(info.value)


@pytest.mark.parametrize(
    "oracle, match",
    [
        (lambda g, d: [g], "must return a pytree like grads"),
        (lambda g, d: {"a": g["a"], "b": g["b"][:1]}, r"shape \(1,\) at \['b'\], expected \(2,\)"),
    ],
)
def test_oracle_answer_of_wrong_structure_or_shape_is_named(oracle, match):
    w = {"a": jnp.ones(3), "b": jnp.ones(2)}
    tx = fw_optax.frank_wolfe(1, 0.1, oracle=oracle)
    with pytest.raises(ValueError, match=match):
        tx.update(w, tx.init(w), w)


def test_global_oracle_refuses_per_tensor_radii():
    w = {"a": jnp.ones(3), "b": jnp.ones(2)}
    oracle = functools.partial(fw_optax.k_sparse_lmo, k=2)
    tx = fw_optax.frank_wolfe(1, 0.1, oracle=oracle, relative_radius=True)
    with pytest.raises(ValueError, match="one scalar radius"):
        tx.update(w, tx.init(w), w)


def test_inner_batches_with_wrong_leading_axis_is_named():
    w = jnp.ones(3)
    tx = fw_optax.frank_wolfe(3, 0.1)
    with pytest.raises(ValueError, match="K-1=2"):
        tx.update(
            w, tx.init(w), w, value_fn=lambda v, b: jnp.sum(v * b), inner_batches=jnp.ones((3, 3))
        )


def test_injecting_K_without_static_args_says_how_to_fix():
    tx = optax.inject_hyperparams(fw_optax.frank_wolfe)(K=2, delta=0.1)
    w = jnp.ones(2)
    update = jax.jit(functools.partial(tx.update, value_fn=lambda v: jnp.sum(v**2)))
    with pytest.raises(ValueError, match="list 'K' in static_args"):
        update(w, tx.init(w), w)


def test_stats_are_found_by_name_inside_any_wrapper_and_under_vmap():
    params, loss = jnp.array([1.0, -2.0]), lambda w: jnp.sum(w**2)
    fw = fw_optax.frank_wolfe(K=4, delta=0.1, gap_tol=1e-9)
    wrappers = {
        "chain": optax.chain(fw, optax.sgd(1.0)),
        "inject": optax.inject_hyperparams(fw_optax.frank_wolfe, static_args=("K",))(
            K=4, delta=0.1
        ),
        "masked": optax.masked(fw, True),
        "finite": optax.apply_if_finite(fw, 3),
    }
    for name, tx in wrappers.items():
        state = tx.init(params)
        _, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
        stats = fw_optax.frank_wolfe_stats(state)
        assert int(stats["outer_steps"]) == 1, name
        assert 1 <= int(stats["inner_steps"]) <= 4 and float(stats["gap"]) >= 0.0, name
    # Seeds stacked by vmap: one entry each.
    states = jax.vmap(fw.init)(jnp.stack([params, 2 * params]))
    assert fw_optax.frank_wolfe_stats(states)["inner_steps"].shape == (2,)
    assert fw_optax.frank_wolfe_stats(optax.adam(0.1).init(params)) is None
    two = optax.multi_transform({"a": fw, "b": fw}, {"x": "a", "y": "b"})
    with pytest.raises(ValueError, match=r"2 frank_wolfe states in opt_state, at .*\['a'\]"):
        fw_optax.frank_wolfe_stats(two.init({"x": params, "y": params}))
