"""The Lp-ball linear minimization oracle: closed forms and their defining properties."""

import inspect
import math
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fw_optax
from fw_optax import group_l2_lmo, k_sparse_lmo, lp_ball_lmo, nuclear_lmo, relative_radii

from tests.fw_optax import numpy_reference as ref

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


# ----------------------------------------------------------------------------- per-leaf radii
def test_leaf_scope_takes_a_pytree_of_radii():
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0, -2.0])}
    s = lp_ball_lmo(grads, {"a": 0.5, "b": 2.0}, 2, scope="leaf")
    np.testing.assert_allclose(s["a"], [-0.3, -0.4], rtol=1e-6)
    np.testing.assert_allclose(s["b"], [0.0, 2.0], rtol=1e-6)


def test_global_scope_refuses_a_pytree_of_radii():
    with pytest.raises(ValueError, match="one scalar radius"):
        lp_ball_lmo({"a": jnp.ones(2), "b": jnp.ones(1)}, {"a": 1.0, "b": 2.0}, 2)


def test_relative_radii_are_delta_times_l2_norm():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(300)}
    radii = relative_radii(params, 0.1)
    np.testing.assert_allclose(radii["w"], 0.1 * np.linalg.norm(np.arange(6.0)), rtol=1e-6)
    np.testing.assert_array_equal(radii["b"], 0.0)


# ----------------------------------------------------------------------------- k-sparse
normal = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False, width=32)
normal_vectors = hnp.arrays(np.float32, st.integers(1, 8), elements=normal)


@settings(max_examples=15, deadline=None)
@given(g1=normal_vectors, g2=normal_vectors, k=st.integers(1, 16))
def test_k_sparse_matches_reference(g1, g2, k):
    # (subnormals excluded: XLA:CPU flushes them to zero, so their sign is 0)
    grads = [jnp.asarray(g1), jnp.asarray(g2)]
    k = min(k, g1.size + g2.size)
    got = k_sparse_lmo(grads, 0.5, k=k)
    want = ref.k_sparse_lmo([g1.astype(np.float64), g2.astype(np.float64)], 0.5, k)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float64), b)


def test_k_sparse_ties_go_to_the_first_entries_in_leaf_order():
    s = k_sparse_lmo({"a": jnp.array([1.0, -2.0]), "b": jnp.array([2.0, -2.0])}, 1.0, k=2)
    np.testing.assert_array_equal(s["a"], [0.0, 1.0])
    np.testing.assert_array_equal(s["b"], [-1.0, 0.0])


@pytest.mark.parametrize("k", [0, -1, 7, 2.0, True])
def test_bad_k_is_named(k):
    with pytest.raises(ValueError, match=f"k={k!r}|got k={k}"):
        k_sparse_lmo({"a": jnp.ones(2), "b": jnp.ones((2, 2))}, 1.0, k=k)


# ----------------------------------------------------------------------------- group L2
@pytest.mark.parametrize("axis", [-1, 0])
def test_group_l2_is_one_ball_per_unit(axis):
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((4, 3)).astype(np.float32)
    kernel[:, 1] = 0.0  # a unit without gradient stays put
    bias = np.array([1.0, 0.0, -3.0], np.float32)
    s = group_l2_lmo({"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}, 0.3, axis=axis)
    want = ref.group_l2_lmo(kernel.astype(np.float64), 0.3, axis)
    np.testing.assert_allclose(s["kernel"], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s["bias"], -0.3 * np.sign(bias))


def test_group_l2_bad_axis_is_named():
    with pytest.raises(ValueError, match=r"axis=2.*shape \(4, 3\)"):
        group_l2_lmo({"kernel": jnp.ones((4, 3))}, 1.0, axis=2)


# ----------------------------------------------------------------------------- nuclear norm
def test_nuclear_matches_numpy_svd_and_attains_spectral_norm():
    rng = np.random.default_rng(1)
    g = rng.standard_normal((6, 4)).astype(np.float32)
    s = np.asarray(nuclear_lmo({"w": jnp.asarray(g)}, 2.0)["w"], np.float64)
    np.testing.assert_allclose(s, ref.nuclear_lmo(g.astype(np.float64), 2.0), atol=1e-5)
    np.testing.assert_allclose(np.sum(s * g), -2.0 * np.linalg.norm(g, 2), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(s, "nuc"), 2.0, rtol=1e-5)


def test_nuclear_zero_matrix_and_vector_fallback():
    s = nuclear_lmo({"w": jnp.zeros((3, 2)), "b": jnp.array([3.0, 4.0])}, 1.0)
    np.testing.assert_array_equal(s["w"], 0.0)
    np.testing.assert_allclose(s["b"], [-0.6, -0.8], rtol=1e-6)


def test_nuclear_refuses_tensors_with_three_axes():
    with pytest.raises(ValueError, match=r"shape \(2, 2, 2\) at \['conv'\]"):
        nuclear_lmo({"conv": jnp.ones((2, 2, 2))}, 1.0)


@pytest.mark.parametrize(
    "oracle",
    [
        lambda g, d: lp_ball_lmo(g, d, 3, scope="leaf"),
        group_l2_lmo,
        nuclear_lmo,
        lambda g, d: k_sparse_lmo(g, d, k=3),
    ],
    ids=["lp_leaf", "group", "nuclear", "k_sparse"],
)
def test_every_oracle_keeps_structure_and_dtype(oracle):
    grads = {"w": jnp.ones((3, 2), jnp.bfloat16), "b": jnp.array([1.0, -1.0], jnp.float32)}
    s = oracle(grads, 0.5)
    assert jax.tree.structure(s) == jax.tree.structure(grads)
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(grads), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype


def test_the_public_oracle_protocol_is_what_frank_wolfe_takes():
    assert "Oracle" in fw_optax.__all__
    hints = typing.get_type_hints(fw_optax.frank_wolfe)
    assert fw_optax.Oracle in typing.get_args(hints["oracle"])
    # Its call takes (grads, delta), positional-only, as frank_wolfe calls an oracle.
    params = list(inspect.signature(fw_optax.Oracle.__call__).parameters.values())[1:]
    assert [(p.name, p.kind) for p in params] == [
        ("grads", inspect.Parameter.POSITIONAL_ONLY),
        ("delta", inspect.Parameter.POSITIONAL_ONLY),
    ]
