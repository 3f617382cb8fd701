"""frank_wolfe passes the checks optax applies to its own contrib optimizers.

Mirrors the battery of ``optax/contrib/_common_test.py`` (extra arguments, recompilation,
convergence targets, ``tree.map_params``, ``inject_hyperparams``, dtypes, ``MultiSteps``,
``lax.cond`` stability, schedules, sharding), plus ``masked``/``multi_transform``.
"""

import functools
import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fw_optax

from tests.worker import host_devices

STEPS = 5000
# δ_t → 0 as (1 - t/STEPS)^2: steps shrink onto the minimizer instead of orbiting it.
DELTA = optax.polynomial_schedule(0.1, 0.0, power=2.0, transition_steps=STEPS)


def _parabola():
    final = jnp.array([1.0, -1.0, 1.0])
    return jnp.array([-1.0, 10.0, 1.0]), final, lambda w: jnp.sum((w - final) ** 2)


def _rosenbrock():
    def f(w):
        return (1.0 - w[0]) ** 2 + 100.0 * (w[1] - w[0] ** 2) ** 2

    return jnp.zeros(2), jnp.ones(2), f


def _matrix_parabola():
    final = jnp.array([[3.0, -2.0], [1.0, 4.0]])
    return jnp.zeros((2, 2)), final, lambda w: jnp.sum((w - final) ** 2)


def _mixed():
    final = (jnp.array([1.0, -1.0, 2.0]), jnp.array([[1.0, 0.0], [-1.0, 1.0]]))

    def f(w):
        return sum(jnp.sum((a - b) ** 2) for a, b in zip(w, final, strict=True))

    return (jnp.zeros(3), jnp.zeros((2, 2))), final, f


def _fw(**kwargs):
    return optax.chain(fw_optax.frank_wolfe(3, DELTA, 2, **kwargs), optax.sgd(1.0))


def _step_fn(tx, objective, **update_kwargs):
    @jax.jit
    def step(params, state):
        grads = jax.grad(objective)(params)
        updates, state = tx.update(grads, state, params, value_fn=objective, **update_kwargs)
        return optax.apply_updates(params, updates), state

    return step


def test_accepts_extra_args_and_does_not_recompile(caplog):
    params, _, objective = _rosenbrock()
    tx = _fw()
    step = _step_fn(tx, objective, unexpected_extra_args_your_optimizer_doesnt_expect=1)
    params, state = step(params, tx.init(params))
    with jax.log_compiles(), caplog.at_level(logging.DEBUG):
        caplog.clear()
        step(params, state)
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()]


@pytest.mark.parametrize(
    "target", [_parabola, _rosenbrock, _matrix_parabola, _mixed], ids=lambda f: f.__name__[1:]
)
@pytest.mark.parametrize("gap_tol", [None, 0.05], ids=["fixed_K", "adaptive_K"])
def test_converges_and_map_params_works(target, gap_tol):
    params, final, objective = target()
    tx = _fw(gap_tol=gap_tol)
    state = optax.tree.map_params(tx, lambda v: v, tx.init(params))
    step = _step_fn(tx, objective)

    def body(carry, _):
        return step(*carry), None

    (params, _), _ = jax.lax.scan(body, (params, state), length=STEPS)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(final), strict=True):
        np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2)


def test_inject_hyperparams_gives_equal_updates_and_state():
    params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
    grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]
    objective = lambda w: optax.tree.norm(w, squared=True)  # noqa: E731
    kwargs = dict(K=3, delta=0.2, p=3, gap_tol=0.5, step_rule="open_loop")
    plain = fw_optax.frank_wolfe(**kwargs)
    injected = optax.inject_hyperparams(fw_optax.frank_wolfe, static_args=("K", "p"))(**kwargs)
    u1, s1 = jax.jit(functools.partial(plain.update, value_fn=objective))(
        grads, plain.init(params), params
    )
    u2, s2 = jax.jit(functools.partial(injected.update, value_fn=objective))(
        grads, injected.init(params), params
    )
    for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2.inner_state)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_preserves_dtype(dtype):
    params = jnp.array([1.0, 2.0], dtype)
    objective = lambda w: jnp.sum(w**2)  # noqa: E731
    tx = fw_optax.frank_wolfe(3, 0.1)
    updates, _ = jax.jit(functools.partial(tx.update, value_fn=objective))(
        jax.grad(objective)(params), tx.init(params), params
    )
    assert updates.dtype == params.dtype


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_multisteps_emits_zeros_until_the_kth_step(dtype):
    objective = lambda w: jnp.sum(w**2)  # noqa: E731
    fw = fw_optax.frank_wolfe(3, 0.1)
    tx = optax.MultiSteps(
        optax.GradientTransformationExtraArgs(
            fw.init, functools.partial(fw.update, value_fn=objective)
        ),
        every_k_schedule=4,
    )
    params = jnp.array([1.0, 2.0], dtype)
    # Four directions: the mean's differs from each one's (the oracle sees only directions).
    grads = [jnp.array(g, dtype) for g in ([1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-3.0, 2.0])]
    update, state = jax.jit(tx.update), tx.init(params)
    for g in grads[:3]:
        updates, state = update(g, state, params)
        np.testing.assert_array_equal(updates, jnp.zeros_like(params))
    updates, state = update(grads[3], state, params)
    # The k-th mini-step emits one Frank-Wolfe step on the averaged gradient.
    mean = sum(g.astype(jnp.float32) for g in grads) / 4
    want, _ = fw.update(mean.astype(dtype), fw.init(params), params, value_fn=objective)
    assert updates.dtype == params.dtype and np.any(np.asarray(updates, np.float32) != 0)
    tol = 1e-6 if dtype in (jnp.float32, jnp.float64) else 1e-2
    np.testing.assert_allclose(np.asarray(updates, np.float32), np.asarray(want, np.float32),
                               rtol=tol, atol=tol)  # fmt: skip


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64])
def test_state_shape_and_dtype_are_stable_under_cond(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        params, _, objective = _parabola()
        params = params.astype(dtype)
        tx = fw_optax.frank_wolfe(3, 0.1, gap_tol=0.1)

        @jax.jit
        def step(params, state):
            grads = jax.grad(objective)(params)
            take = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
            updates, state = jax.lax.cond(
                take,
                lambda: tx.update(grads, state, params, value_fn=objective),
                lambda: (params, state),
            )
            return optax.apply_updates(params, updates), state

        state = tx.init(params)
        for _ in range(2):
            params, new_state = step(params, state)
            assert params.dtype == dtype
            assert jax.tree.map(jnp.shape, new_state) == jax.tree.map(jnp.shape, state)
            assert jax.tree.map(jnp.result_type, new_state) == jax.tree.map(jnp.result_type, state)
            state = new_state


def test_constant_schedule_equals_the_constant():
    params, _, objective = _parabola()
    runs = []
    for delta in (optax.constant_schedule(0.05), 0.05):
        tx = optax.chain(fw_optax.frank_wolfe(3, delta), optax.sgd(1.0))
        step, state, w = _step_fn(tx, objective), tx.init(params), params
        for _ in range(10):
            w, state = step(w, state)
        runs.append(w)
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-6)


def test_fw_on_recurrent_weights_only_adam_on_the_rest():
    rng = np.random.default_rng(0)
    params = {
        "recurrent": jnp.asarray(rng.standard_normal((3, 3)), jnp.float32),
        "head": jnp.asarray(rng.standard_normal(3), jnp.float32),
    }
    x = jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)

    def loss(w):
        return jnp.sum(jnp.tanh(x @ w["recurrent"]) @ w["head"]) ** 2

    labels = {"recurrent": "fw", "head": "adam"}
    fw, adam = fw_optax.frank_wolfe(4, 0.1, 2), optax.adam(1e-2)
    tx = optax.multi_transform({"fw": fw, "adam": adam}, labels)

    def value_fn(sub):  # FW sees only its partition; the rest stays at the current weights
        return loss({"recurrent": sub["recurrent"], "head": params["head"]})

    grads = jax.grad(loss)(params)
    updates, _ = tx.update(grads, tx.init(params), params, value_fn=value_fn)
    want_fw, _ = fw.update(
        {"recurrent": grads["recurrent"]},
        fw.init(None),
        {"recurrent": params["recurrent"]},
        value_fn=lambda sub: loss({"recurrent": sub["recurrent"], "head": params["head"]}),
    )
    want_adam, _ = adam.update(grads["head"], adam.init(params["head"]))
    np.testing.assert_allclose(updates["recurrent"], want_fw["recurrent"], rtol=1e-6)
    np.testing.assert_allclose(updates["head"], want_adam, rtol=1e-6)
    masked = optax.masked(fw, {"recurrent": True, "head": False})
    out, _ = masked.update(grads, masked.init(params), params, value_fn=value_fn)
    np.testing.assert_allclose(out["recurrent"], want_fw["recurrent"], rtol=1e-6)
    np.testing.assert_array_equal(out["head"], grads["head"])  # masked out: passed through


MESH_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, optax
    from jax.sharding import AxisType, PartitionSpec as P
    import fw_optax

    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
        params = {
            "w": jax.device_put(jnp.arange(16.0).reshape(8, 2), P("data")),
            "b": jnp.ones(3),
        }
        objective = lambda w: jnp.sum(w["w"] ** 2) + jnp.sum(jnp.sin(w["b"]))
        for kwargs in ({}, {"gap_tol": 0.1, "scope": "leaf"}):
            tx = optax.chain(fw_optax.frank_wolfe(3, 0.1, **kwargs), optax.sgd(0.1))
            state = tx.init(params)
            grads = jax.grad(objective)(params)
            update = jax.jit(lambda g, s, p: tx.update(g, s, p, value_fn=objective))
            updates, new_state = update(grads, state, params)
            types = lambda tree: jax.tree.map(jax.typeof, tree)
            assert types(new_state) == types(state), (types(state), types(new_state))
            assert types(updates) == types(grads), (types(updates), types(grads))
    print("ok")
    """
)


def test_state_type_is_unchanged_under_an_explicit_8_device_mesh():
    env = os.environ | host_devices(8)
    result = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
