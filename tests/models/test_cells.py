"""Tests for models/cells.py: the IndRNN cell, its bound, the recurrent initializers, and the
registry of cells."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.cells import (
    CELL_NAMES,
    CELLS,
    FAST_IMPLS,
    IndRNNCell,
    cell_path,
    clip_indrnn_recurrent,
    identity_init,
    indrnn_recurrent_bound,
    make_cell,
    register_path,
    registered_cell,
)


def test_indrnn_matches_hand_computed_case():
    # F = 1, H = 2: W = [[1, -1]], b = [0, 0.5], u = [0.5, 2], inputs 1 then -1.
    # t=1: relu([1, -1] + [0, .5]) = [1, 0];  t=2: relu([-1, 1] + [0, .5] + [.5, 0]) = [0, 1.5]
    params = {
        "i": {"kernel": jnp.array([[1.0, -1.0]]), "bias": jnp.array([0.0, 0.5])},
        "recurrent_kernel": jnp.array([0.5, 2.0]),
    }
    rnn = nn.RNN(IndRNNCell(2))
    hs = rnn.apply({"params": {"cell": params}}, jnp.array([[[1.0], [-1.0]]]))
    np.testing.assert_allclose(hs[0], [[1.0, 0.0], [0.0, 1.5]], rtol=0, atol=1e-7)


def test_indrnn_parameter_layout_and_default_init_respects_bound():
    cell = IndRNNCell(64, recurrent_bound=0.3)
    x = jnp.ones((2, 3))
    params = cell.init(jax.random.key(0), cell.initialize_carry(jax.random.key(1), x.shape), x)
    shapes = jax.tree.map(jnp.shape, params["params"])
    assert shapes == {"i": {"kernel": (3, 64), "bias": (64,)}, "recurrent_kernel": (64,)}
    u = params["params"]["recurrent_kernel"]
    assert float(u.min()) >= 0.0 and float(u.max()) <= 0.3
    assert float(u.max()) > 0.15  # drawn over the whole range, not a constant


def test_indrnn_recurrent_bound_is_gamma_to_one_over_t():
    bound = indrnn_recurrent_bound(2.0, 100)
    np.testing.assert_allclose(bound**100, 2.0, rtol=1e-12)


@pytest.mark.parametrize(("gamma", "seq_len"), [(0.0, 10), (-1.0, 10), (2.0, 0)])
def test_indrnn_recurrent_bound_rejects_bad_values(gamma, seq_len):
    with pytest.raises(ValueError, match="must be"):
        indrnn_recurrent_bound(gamma, seq_len)


def test_clip_indrnn_recurrent_clips_only_recurrent_vectors():
    params = {
        "rnn_0": {"cell": {"recurrent_kernel": jnp.array([-3.0, 0.5, 3.0])}},
        "head": {"kernel": jnp.array([[5.0]])},
    }
    clipped = clip_indrnn_recurrent(params, 1.0)
    np.testing.assert_array_equal(clipped["rnn_0"]["cell"]["recurrent_kernel"], [-1.0, 0.5, 1.0])
    np.testing.assert_array_equal(clipped["head"]["kernel"], [[5.0]])


def test_identity_init_matrix_and_vector():
    key = jax.random.key(0)
    np.testing.assert_array_equal(identity_init()(key, (3, 3)), np.eye(3))
    np.testing.assert_array_equal(identity_init(0.5)(key, (4,)), np.full(4, 0.5))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        identity_init()(key, (2, 3))


@pytest.mark.parametrize("name", CELL_NAMES)
def test_identity_recurrent_init_reaches_the_cell(name):
    cell = make_cell(name, 4, recurrent_init="identity")
    x = jnp.ones((1, 2))
    params = cell.init(jax.random.key(0), cell.initialize_carry(jax.random.key(0), x.shape), x)
    recurrent = {
        "simple": lambda p: p["h"]["kernel"],
        "lstm": lambda p: p["hf"]["kernel"],
        "gru": lambda p: p["hz"]["kernel"],
        "indrnn": lambda p: jnp.diag(p["recurrent_kernel"]),
    }[name](params["params"])
    np.testing.assert_array_equal(recurrent, np.eye(4))


def test_make_cell_rejects_unknown_names_and_misplaced_options():
    with pytest.raises(ValueError, match="'rnn'"):
        make_cell("rnn", 4)
    with pytest.raises(ValueError, match="'kaiming'"):
        make_cell("simple", 4, recurrent_init="kaiming")
    with pytest.raises(ValueError, match="'lstm'"):
        make_cell("lstm", 4, recurrent_bound=1.0)
    with pytest.raises(ValueError, match="orthogonal"):
        make_cell("indrnn", 4, recurrent_init="orthogonal")
    with pytest.raises(ValueError, match="0"):
        make_cell("gru", 0)


# What the four tables the registry replaced listed (cells.make_cell, rnn._CELL_NAMES_BY_TYPE,
# scan_rnn._SCANS, fused._FUSED, pallas._PALLAS): every class had all three fast paths.
FLAX_CLASSES = {
    "simple": {nn.SimpleCell},
    "lstm": {nn.OptimizedLSTMCell, nn.LSTMCell},
    "gru": {nn.GRUCell},
    "indrnn": {IndRNNCell},
}
PATH_MODULES = {"hoisted": "models.scan_rnn", "fused": "models.fused", "pallas": "models.pallas"}


@pytest.mark.parametrize("name", CELL_NAMES)
def test_every_registered_cell_has_its_classes_and_all_three_fast_paths(name):
    entry = CELLS[name]
    assert entry.name == name
    assert set(entry.classes) == FLAX_CLASSES[name]
    assert set(entry.paths) == set(FAST_IMPLS) == set(PATH_MODULES)
    for impl, scan in entry.paths.items():
        assert callable(scan) and scan.__module__ == PATH_MODULES[impl], (impl, scan)
    for cls in entry.classes:
        assert registered_cell(cls(4, parent=None)) is entry
    cell = make_cell(name, 4)
    assert type(cell) is entry.classes[0] and cell.features == 4
    assert registered_cell(cell) is entry
    assert all(cell_path(cell, impl) is entry.paths[impl] for impl in FAST_IMPLS)


def test_the_names_are_the_registry_and_the_paths_differ_by_cell():
    assert CELL_NAMES == tuple(CELLS) == ("simple", "lstm", "gru", "indrnn")
    for impl in FAST_IMPLS:
        assert len({id(CELLS[name].paths[impl]) for name in CELL_NAMES}) == len(CELL_NAMES)


class _Subclass(nn.SimpleCell):
    """A subclass may change the math: the registry does not know it."""


@pytest.mark.parametrize(
    "cell", [_Subclass(4, parent=None), nn.MGUCell(4, parent=None)], ids=["subclass", "mgu"]
)
def test_cells_outside_the_registry_have_no_entry_and_no_path(cell):
    assert registered_cell(cell) is None
    assert all(cell_path(cell, impl) is None for impl in FAST_IMPLS)


def test_register_path_refuses_an_unknown_impl_and_a_second_recurrence():
    with pytest.raises(ValueError, match="unknown impl 'cuda'"):
        register_path("cuda", "simple")
    with pytest.raises(ValueError, match=r"unknown cells \['elman'\]"):
        register_path("fused", "simple", "elman")
    before = {name: dict(entry.paths) for name, entry in CELLS.items()}
    with pytest.raises(ValueError, match="cell 'gru' already has a 'fused' path"):
        register_path("fused", "gru")(lambda cell, params, xs, carry, unroll: (carry, xs))
    assert {name: entry.paths for name, entry in CELLS.items()} == before
    # The same function again (a module imported twice under one name) changes nothing.
    assert register_path("fused", "gru")(before["gru"]["fused"]) is before["gru"]["fused"]
    assert {name: entry.paths for name, entry in CELLS.items()} == before
