"""Tests for models/rnn.py and models/heads.py: every model's shapes, gradients, batch norm,
errors, and a few jitted steps with ``chain(frank_wolfe(...), sgd(...))``."""

import re
import typing

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fw_optax
import models.rnn as models_rnn
from benchmarks.training.step import make_train_loss, split_variables
from models import (
    CELL_NAMES,
    IMPLS,
    HoistedRNN,
    Impl,
    IndRNNCell,
    RNNModel,
    clip_indrnn_recurrent,
    cross_entropy_loss,
    deep_indrnn,
    get_head,
    make_cell,
    mse_loss,
    sigmoid_mse_loss,
)
from models.rnn import check_impl, resolve_impl

from tests import ROOT

B, T, F, H = 3, 6, 2, 5
X = jax.random.normal(jax.random.key(0), (B, T, F))

# Every model of the paper's tables, small (each cell alone, deep stacks, batch norm).
CONFIGS = {
    **{f"{cell}": {"cell": cell} for cell in CELL_NAMES},
    "deep-lstm": {"cell": "lstm", "depth": 2},
    "deep-gru": {"cell": "gru", "depth": 2},
    "simple+bn": {"cell": "simple", "batch_norm": True},
    "irnn": {"cell": "simple", "recurrent_init": "identity", "activation_fn": nn.relu},
    "deep-indrnn-bn-dropout": {
        "cell": "indrnn",
        "depth": 2,
        "layer_batch_norm": True,
        "dropout_rate": 0.1,
        "recurrent_bound": 1.2,
    },
}


def _init(model, x=X):
    return model.init(jax.random.key(1), x)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_shapes_dtypes_and_carries(config):
    model = RNNModel(hidden_size=H, output_size=4, **config)
    variables = _init(model)
    y = model.apply(variables, X)
    assert y.shape == (B, 4) and y.dtype == jnp.float32
    carries, y2 = model.apply(variables, X, return_carry=True)
    np.testing.assert_array_equal(y, y2)
    assert len(carries) == config.get("depth", 1)
    expected = jax.tree.map(jnp.shape, model.initialize_carry(B))
    assert jax.tree.map(jnp.shape, carries) == expected
    assert all(leaf.shape == (B, H) for leaf in jax.tree.leaves(carries))


# The fused path is checked cell by cell in tests/models/test_fused.py; here in the stacks.
FAST_CASES = [(name, "hoisted") for name in CONFIGS] + [
    (name, "fused") for name in ("deep-lstm", "deep-gru", "irnn", "deep-indrnn-bn-dropout")
]


@pytest.mark.parametrize(("name", "impl"), FAST_CASES)
def test_fast_and_flax_impls_share_parameters_outputs_and_gradients(name, impl):
    config = CONFIGS[name]
    hoisted = RNNModel(hidden_size=H, output_size=2, impl=impl, **config)
    flax_rnn = hoisted.clone(impl="flax")
    variables = _init(hoisted)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, _init(flax_rnn))
    params, state = split_variables(variables)

    def loss(model, p):
        y, _ = model.apply(
            {"params": p, **state},
            X,
            train=True,
            mutable=list(state),
            rngs={"dropout": jax.random.key(2)},
        )
        return jnp.sum(y**2)

    grads = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
    g_hoisted, g_flax = grads(hoisted, params), grads(flax_rnn, params)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_hoisted, g_flax
    )
    for path, leaf in jax.tree_util.tree_leaves_with_path(g_hoisted):
        assert np.all(np.isfinite(leaf)), path
        assert np.any(leaf != 0), f"zero gradient at {jax.tree_util.keystr(path)}"


class _UserCell(nn.GRUCell):
    """A cell of the user's own (a subclass): no fast path knows its math."""


BACKENDS = ["cpu", "gpu", "tpu"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "cell",
    [nn.SimpleCell(H, residual=True, parent=None), _UserCell(H, parent=None)],
    ids=["residual", "user-cell"],
)
def test_auto_falls_back_to_flax_rnn_for_cells_without_a_fast_path(cell, backend):
    assert resolve_impl("auto", cell, backend) == "flax"
    for impl in ("pallas", "fused", "hoisted"):
        with pytest.raises(ValueError, match=f"impl '{impl}' has no recurrence for cell"):
            resolve_impl(impl, cell, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_picks_the_fastest_measured_impl_at_the_nearest_length(backend):
    choice = models_rnn.MEASURED[backend]
    assert models_rnn.default_unroll(backend) == choice.unroll >= 1
    assert set(choice.ms) == set(CELL_NAMES)
    for name in CELL_NAMES:
        for seq_len, times in choice.ms[name].items():
            # Lengths nearer this one than any other measured length pick one of its
            # fastest, within the measurements' noise.
            for t in (seq_len, seq_len + 1, max(1, seq_len - 1)):
                picked = models_rnn.default_impl(name, backend, seq_len=t)
                assert times[picked] <= min(times.values()) * (1 + models_rnn.NOISE)
                cell = make_cell(name, H)
                assert resolve_impl("auto", cell, backend, seq_len=t) == picked
        assert resolve_impl("flax", make_cell(name, H), backend) == "flax"
    with pytest.raises(ValueError, match="'elman'"):
        models_rnn.default_impl("elman", backend)


def test_measured_ranking_switches_between_lengths_at_their_geometric_mean():
    table = models_rnn.Recurrence(
        {"simple": {100: {"fused": 1.0, "flax": 2.0}, 400: {"fused": 9.0, "flax": 8.0}}},
        1,
        "test",
    )
    assert table.ranking("simple", 199) == ["fused", "flax"]
    assert table.ranking("simple", 201) == ["flax", "fused"]
    assert table.ranking("simple") == ["flax", "fused"]  # no length: the longest measured


def test_level_times_go_to_the_implementation_fastest_over_all_lengths():
    table = models_rnn.Recurrence(
        {"simple": {100: {"fused": 1.0, "flax": 1.5}, 400: {"fused": 8.1, "flax": 8.0}}},
        1,
        "test",
    )
    assert table.ranking("simple", 400) == ["fused", "flax"]  # 1.2% apart: level
    table.ms["simple"][400]["fused"] = 8.5  # 6% apart: flax is faster there
    assert table.ranking("simple", 400) == ["flax", "fused"]


def test_auto_skips_a_measured_winner_that_cannot_run_the_cell(monkeypatch):
    table = models_rnn.Recurrence(
        {name: {100: {"pallas": 1.0, "fused": 2.0, "flax": 3.0}} for name in CELL_NAMES},
        1,
        "test",
    )
    monkeypatch.setitem(models_rnn.MEASURED, "gpu", table)
    for name in CELL_NAMES:
        assert resolve_impl("auto", make_cell(name, H), "gpu") == "pallas"
        # Over the kernels' hidden-size limit: the next fastest, fused.
        assert resolve_impl("auto", make_cell(name, 512), "gpu") == "fused"
    with pytest.raises(ValueError, match="impl 'pallas' has no recurrence"):
        resolve_impl("pallas", make_cell("simple", 512), "gpu")


def test_auto_model_with_a_cell_lacking_the_fast_path_runs_nn_rnn():
    model = RNNModel(hidden_size=H, output_size=1, activation_fn=nn.elu)
    variables = _init(model)
    y = model.apply(variables, X)
    np.testing.assert_allclose(y, model.clone(impl="flax").apply(variables, X), rtol=1e-6)
    with pytest.raises(ValueError, match="impl 'fused' has no recurrence"):
        model.clone(impl="fused").apply(variables, X)


def test_measured_entries_are_numbers_from_results_files_that_exist():
    for backend, table in models_rnn.MEASURED.items():
        files = re.findall(r"results/\S+\.txt", table.source)
        assert files, backend
        assert all((ROOT / f).is_file() for f in files), table.source
        for by_length in table.ms.values():
            for times in by_length.values():
                assert times and all(isinstance(ms, float) and ms > 0 for ms in times.values())
                assert set(times) <= set(IMPLS) - {"auto"}
    assert (ROOT / "results" / "MEASURED_history.md").is_file()


def test_impl_is_a_literal_checked_once_with_the_bad_value_named():
    assert IMPLS == typing.get_args(Impl) == ("auto", "pallas", "fused", "hoisted", "flax")
    assert [check_impl(impl) for impl in IMPLS] == list(IMPLS)
    for impl in IMPLS:  # every value of the Literal builds a model of a registered cell
        assert RNNModel(hidden_size=H, output_size=1, impl=impl).impl == impl
    cell = make_cell("simple", H)
    for bad in ("cuda", "Fused", ""):
        with pytest.raises(ValueError, match=f"unknown impl {bad!r}"):
            check_impl(bad)
        with pytest.raises(ValueError, match=f"unknown impl {bad!r}"):
            resolve_impl(bad, cell)
        with pytest.raises(ValueError, match=f"unknown impl {bad!r}"):
            RNNModel(hidden_size=H, output_size=1, impl=bad)
    # HoistedRNN takes the fast ones only.
    for bad in ("auto", "flax", "cuda"):
        with pytest.raises(ValueError, match=f"unknown impl {bad!r}"):
            HoistedRNN(cell, impl=bad)


def _same_model(named, given, x=X):
    """Both models have the same parameter tree, and with the same parameters the same
    outputs and gradients."""
    variables = _init(named, x)
    assert jax.tree.map(jnp.shape, _init(given, x)) == jax.tree.map(jnp.shape, variables)

    def loss(model, params):
        return jnp.sum(jnp.sin(model.apply({"params": params}, x)))

    for a, b in zip(
        jax.value_and_grad(loss, argnums=1)(named, variables["params"]),
        jax.value_and_grad(loss, argnums=1)(given, variables["params"]),
        strict=True,
    ):
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)


@pytest.mark.parametrize("impl", ["auto", "flax", "fused"])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_a_cell_instance_is_the_named_cell_with_its_hidden_size(name, impl):
    named = RNNModel(hidden_size=H, output_size=2, cell=name, depth=2, impl=impl)
    given = RNNModel(output_size=2, cell=make_cell(name, H), depth=2, impl=impl)
    assert given.units == H and given.initialize_carry(B) is not None
    assert resolve_impl(impl, given.layer_cell(), seq_len=T) == resolve_impl(
        impl, named.layer_cell(), seq_len=T
    )
    _same_model(named, given)


def test_a_configured_instance_reaches_every_layer_with_its_own_parameters():
    cell = IndRNNCell(features=4, activation_fn=jnp.tanh, recurrent_bound=0.25, parent=None)
    model = RNNModel(cell=cell, output_size=1, depth=2)
    params = _init(model)["params"]
    u0, u1 = (params[f"rnn_{i}"]["cell"]["recurrent_kernel"] for i in range(2))
    assert u0.shape == u1.shape == (4,) and not np.allclose(u0, u1)
    assert float(jnp.maximum(u0.max(), u1.max())) <= 0.25
    named = RNNModel(4, 1, cell="indrnn", depth=2, activation_fn=jnp.tanh, recurrent_bound=0.25)
    _same_model(named, model)
    # nn.LSTMCell (not the OptimizedLSTMCell make_cell builds) runs too, with the fast paths.
    lstm = RNNModel(cell=nn.LSTMCell(features=4, parent=None), output_size=1, impl="fused")
    _same_model(lstm.clone(impl="flax"), lstm)


class _ScaledGRUCell(nn.GRUCell):
    """A cell of the user's own whose math no fast path knows."""

    def __call__(self, carry, inputs):
        carry, h = super().__call__(carry, inputs)
        return 0.5 * carry, 0.5 * h


@pytest.mark.parametrize(
    "cell", [_ScaledGRUCell(H, parent=None), nn.MGUCell(H, parent=None)], ids=["subclass", "mgu"]
)
def test_a_cell_without_a_registry_entry_runs_with_flax_and_refuses_fast_impls(cell):
    model = RNNModel(cell=cell, output_size=1)
    assert resolve_impl("auto", model.layer_cell(), "gpu", seq_len=T) == "flax"
    variables = _init(model)
    expected = nn.Dense(1).apply(
        {"params": variables["params"]["head"]},
        nn.RNN(cell).apply({"params": variables["params"]["rnn_0"]}, X)[:, -1],
    )
    np.testing.assert_allclose(model.apply(variables, X), expected, rtol=1e-6)
    np.testing.assert_allclose(model.clone(impl="flax").apply(variables, X), expected, rtol=1e-6)
    for impl in ("hoisted", "fused", "pallas"):
        with pytest.raises(ValueError, match=f"impl '{impl}' has no recurrence for cell"):
            RNNModel(cell=cell, output_size=1, impl=impl)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cell": nn.GRUCell(4, parent=None), "hidden_size": 5}, "hidden_size 5 disagrees.* 4"),
        ({"cell": "gru"}, "hidden_size is required with the cell name 'gru'"),
        ({"cell": nn.GRUCell(4, parent=None), "output_size": None}, "output_size is required"),
        (
            {"cell": IndRNNCell(4, parent=None), "recurrent_bound": 1.0},
            "recurrent_bound configure a cell given by name; set them on the IndRNNCell",
        ),
        (
            {"cell": nn.SimpleCell(4, parent=None), "activation_fn": nn.relu},
            "activation_fn configure",
        ),
    ],
)
def test_cell_instance_configuration_errors_name_the_conflict(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RNNModel(**{"output_size": 1, **kwargs})
    assert RNNModel(output_size=1, cell=nn.GRUCell(4, parent=None), hidden_size=4).units == 4


@pytest.mark.parametrize("depth", [1, 3])
def test_stacked_model_has_depth_recurrent_layers(depth):
    model = RNNModel(hidden_size=H, output_size=1, cell="gru", depth=depth)
    params = _init(model)["params"]
    assert sorted(k for k in params if k.startswith("rnn_")) == [f"rnn_{i}" for i in range(depth)]
    assert params["rnn_0"]["cell"]["ir"]["kernel"].shape == (F, H)
    for i in range(1, depth):
        assert params[f"rnn_{i}"]["cell"]["ir"]["kernel"].shape == (H, H)


def test_deep_indrnn_is_the_authors_stack():
    model = deep_indrnn(10, recurrent_bound=1.01, hidden_size=H)
    variables = _init(model)
    assert model.depth == 6 and model.dropout_rate == 0.1
    assert sorted(variables["batch_stats"]) == [f"bn_{i}" for i in range(6)]
    u = jnp.stack([variables["params"][f"rnn_{i}"]["cell"]["recurrent_kernel"] for i in range(6)])
    assert float(u.max()) <= 1.01
    clipped = clip_indrnn_recurrent(jax.tree.map(lambda a: 3 * a, variables["params"]), 1.01)
    assert float(clipped["rnn_5"]["cell"]["recurrent_kernel"].max()) <= 1.01


@pytest.mark.parametrize("config", [{"batch_norm": True}, {"layer_batch_norm": True, "depth": 2}])
def test_batch_stats_update_in_train_mode_and_freeze_in_eval(config):
    model = RNNModel(hidden_size=H, output_size=1, cell="simple", **config)
    params, state = split_variables(_init(model))
    x = 3.0 + X
    _, new = model.apply({"params": params, **state}, x, train=True, mutable=["batch_stats"])
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), state, new)
    assert all(jax.tree.leaves(moved))
    if "batch_norm" in config:
        # Running mean = 0.9 * 0 + 0.1 * batch mean of h_T (PyTorch's momentum 0.1).
        carries, _ = model.apply({"params": params, **state}, x, return_carry=True)
        np.testing.assert_allclose(
            new["batch_stats"]["bn_final"]["mean"], 0.1 * carries[0].mean(0), rtol=1e-5, atol=1e-7
        )
    _, same = model.apply({"params": params, **new}, x, train=False, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, same, new)
    # Eval mode normalizes each example alone: no dependence on the rest of the batch.
    full = model.apply({"params": params, **new}, x)
    np.testing.assert_allclose(model.apply({"params": params, **new}, x[:1]), full[:1], rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cell": "transformer"}, "'transformer'"),
        ({"depth": 0}, "depth must be >= 1, got 0"),
        ({"impl": "cuda"}, "'cuda'"),
        ({"dropout_rate": 1.0}, "1.0"),
        ({"unroll": 0}, "unroll must be >= 1, got 0"),
        ({"hidden_size": 0}, "got 0"),
    ],
)
def test_bad_configuration_raises_value_error_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RNNModel(**{"hidden_size": H, "output_size": 1, **kwargs})


@pytest.mark.parametrize("shape", [(B, T), (B, T, F, 1)])
def test_wrong_input_rank_raises_value_error_naming_the_shape(shape):
    model = RNNModel(hidden_size=H, output_size=1)
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        model.init(jax.random.key(0), jnp.zeros(shape))


def test_heads_losses_and_predictions():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(
        cross_entropy_loss(logits, jnp.array([0, 0])),
        np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0))]),
        rtol=1e-6,
    )
    np.testing.assert_allclose(mse_loss(jnp.array([[1.0], [3.0]]), jnp.array([0.0, 1.0])), 2.5)
    np.testing.assert_allclose(
        sigmoid_mse_loss(jnp.array([[0.0], [0.0]]), jnp.array([1, 0])), 0.25, rtol=1e-6
    )
    np.testing.assert_array_equal(get_head("classifier").predict(logits), [0, 1])
    np.testing.assert_array_equal(get_head("binary").predict(jnp.array([[0.3], [-2.0]])), [1, 0])
    with pytest.raises(ValueError, match="'ranking'"):
        get_head("ranking")


def _fw_train(model, x, y, loss_fn, steps=3, K=2):
    """A jitted FW step, the BN/dropout-aware way: fresh data and keys per inner step."""
    params, state = split_variables(_init(model, x))
    train_loss = make_train_loss(model, loss_fn)
    tx = optax.chain(fw_optax.frank_wolfe(K=K, delta=0.05), optax.sgd(1.0))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, state, opt_state, key):
        keys = jax.random.split(key, K)
        (loss, new_state), grads = jax.value_and_grad(train_loss, has_aux=True)(
            params, state, x, y, keys[0]
        )

        def value_fn(w, k):
            return train_loss(w, state, x, y, k)[0]

        updates, opt_state = tx.update(
            grads, opt_state, params, value_fn=value_fn, inner_batches=keys[1:]
        )
        return optax.apply_updates(params, updates), new_state, opt_state, loss

    losses = []
    for i in range(steps):
        params, state, opt_state, loss = step(params, state, opt_state, jax.random.key(i))
        losses.append(float(loss))
    return losses, step, state


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_every_model_trains_with_frank_wolfe_under_jit_without_recompiling(config):
    model = RNNModel(hidden_size=H, output_size=1, **config)
    y = jnp.array([0.5, -0.5, 1.0])
    losses, step, state = _fw_train(model, X, y, mse_loss)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert step._cache_size() == 1
    if state:
        assert jax.tree.leaves(state)[0].dtype == jnp.float32


def test_frank_wolfe_with_batch_norm_updates_stats_once_per_outer_step():
    model = RNNModel(hidden_size=H, output_size=1, cell="simple", batch_norm=True)
    _, _, state = _fw_train(model, X + 3.0, jnp.zeros(B), mse_loss, steps=1)
    # One outer step moves the running mean by exactly 0.1 * (batch mean - 0), once.
    params, state0 = split_variables(_init(model, X + 3.0))
    carries, _ = model.apply({"params": params, **state0}, X + 3.0, return_carry=True)
    np.testing.assert_allclose(
        state["batch_stats"]["bn_final"]["mean"], 0.1 * carries[0].mean(0), rtol=1e-5, atol=1e-7
    )
