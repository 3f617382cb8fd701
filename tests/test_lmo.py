"""The Lp-ball linear minimization oracle: closed forms and their defining properties."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fw_optax import lp_ball_lmo

P_VALUES = [1.0, 1.5, 2.0, 3.0, 7.0, math.inf]


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def _norm(x, p):
    return np.max(np.abs(x)) if p == math.inf else np.sum(np.abs(x) ** p) ** (1.0 / p)


def _dual(p):
    return math.inf if p == 1 else 1.0 if p == math.inf else p / (p - 1)


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
vectors = hnp.arrays(np.float32, st.integers(1, 12), elements=finite)


@settings(max_examples=60, deadline=None)
@given(g1=vectors, g2=vectors, p=st.sampled_from(P_VALUES), delta=st.floats(0.01, 10.0))
def test_global_lmo_is_feasible_and_attains_dual_norm(g1, g2, p, delta):
    grads = {"a": jnp.asarray(g1), "b": jnp.asarray(g2)}
    s = _flat(lp_ball_lmo(grads, delta, p))
    g = _flat(grads)
    assert _norm(s, p) <= delta * (1 + 1e-5) + 1e-30
    gq = _norm(g, _dual(p))
    np.testing.assert_allclose(s @ g, -delta * gq, rtol=1e-4, atol=1e-6 * max(gq, 1.0))


@settings(max_examples=60, deadline=None)
@given(
    g=vectors,
    p=st.sampled_from(P_VALUES),
    seed=st.integers(0, 2**31 - 1),
)
def test_lmo_beats_random_feasible_points(g, p, seed):
    delta = 0.7
    s = np.asarray(lp_ball_lmo(jnp.asarray(g), delta, p), np.float64)
    rng = np.random.default_rng(seed)
    others = rng.standard_normal((64, g.size))
    others *= delta / np.array([_norm(o, p) for o in others])[:, None]  # on the sphere
    g64 = g.astype(np.float64)
    assert np.all(s @ g64 <= others @ g64 + 1e-4 * (1 + np.abs(others @ g64)))


@settings(max_examples=40, deadline=None)
@given(g1=vectors, g2=vectors, p=st.sampled_from(P_VALUES))
def test_leaf_scope_is_one_ball_per_leaf(g1, g2, p):
    delta = 0.3
    grads = [jnp.asarray(g1), jnp.asarray(g2)]
    s = lp_ball_lmo(grads, delta, p, scope="leaf")
    for s_leaf, g_leaf in zip(s, grads, strict=True):
        expected = lp_ball_lmo(g_leaf, delta, p)  # one leaf: global == leaf
        np.testing.assert_allclose(s_leaf, expected, rtol=1e-6, atol=1e-7)
        gq = _norm(np.asarray(g_leaf, np.float64), _dual(p))
        np.testing.assert_allclose(
            np.asarray(s_leaf, np.float64) @ np.asarray(g_leaf, np.float64),
            -delta * gq,
            rtol=1e-4,
            atol=1e-6 * max(gq, 1.0),
        )


def test_closed_forms():
    g = jnp.array([3.0, -4.0, 0.0, 1.0])
    np.testing.assert_allclose(lp_ball_lmo(g, 2.0, 2), -2.0 * g / 5.0 / np.sqrt(26 / 25), rtol=1e-6)
    np.testing.assert_allclose(lp_ball_lmo(g, 2.0, "inf"), [-2.0, 2.0, 0.0, -2.0])
    np.testing.assert_allclose(lp_ball_lmo(g, 2.0, jnp.inf), [-2.0, 2.0, 0.0, -2.0])
    np.testing.assert_allclose(lp_ball_lmo(g, 2.0, 1), [0.0, 2.0, 0.0, 0.0])


def test_p1_global_picks_one_vertex_across_leaves():
    grads = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([[0.5, -7.0], [3.0, 0.0]])}
    s = lp_ball_lmo(grads, 0.5, 1)
    np.testing.assert_array_equal(s["a"], [0.0, 0.0])
    np.testing.assert_array_equal(s["b"], [[0.0, 0.5], [0.0, 0.0]])


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("scope", ["global", "leaf"])
def test_zero_gradient_gives_zero_direction(p, scope):
    s = lp_ball_lmo({"a": jnp.zeros((2, 3)), "b": jnp.zeros(4)}, 1.0, p, scope=scope)
    for leaf in jax.tree.leaves(s):
        assert np.all(np.isfinite(leaf))
        np.testing.assert_array_equal(leaf, 0.0)


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("magnitude", [1e30, 1e-30, 1e-35])
def test_no_overflow_or_underflow(p, magnitude):
    g = jnp.array([1.0, -2.0, 0.5], jnp.float32) * jnp.float32(magnitude)
    s = np.asarray(lp_ball_lmo(g, 1.0, p), np.float64)
    assert np.all(np.isfinite(s))
    # The oracle is scale-invariant in g, so the result must equal the unit-scale one.
    np.testing.assert_allclose(s, lp_ball_lmo(jnp.array([1.0, -2.0, 0.5]), 1.0, p), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_dtype_is_kept(dtype):
    s = lp_ball_lmo({"w": jnp.ones((3,), dtype)}, 0.1, 3)
    assert s["w"].dtype == dtype


@pytest.mark.parametrize("bad_p", [0.5, 0, -1, float("nan"), "two", True, None])
def test_bad_p_is_named(bad_p):
    with pytest.raises(ValueError, match="p must"):
        lp_ball_lmo(jnp.ones(2), 1.0, bad_p)


def test_bad_scope_is_named():
    with pytest.raises(ValueError, match="scope.*'layer'"):
        lp_ball_lmo(jnp.ones(2), 1.0, 2, scope="layer")
