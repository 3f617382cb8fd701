"""Tests for models/pallas.py: the persistent kernels equal Flax's cells and the fused
recurrences, value and gradient, on sizes that are not multiples of their tiles.

On a machine without the Pallas GPU lowering (CI) the kernels run through Pallas'
interpreter: the same kernel code, so indexing, padding and the backward loops are checked
here; ``benchmarks/perf/gpu_check.sh`` runs this file on a GPU, compiled.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from models import RNNModel, mse_loss
from models import pallas as kernels
from models.cells import make_cell
from models.fused import fused_scan_cell
from models.pallas import pallas_scan_cell, supports_pallas

# What the GPU gives a float32 product by default is TF32 (about 1e-3 relative per product);
# on the CPU and at float32 precision the kernels match to float32 rounding.
ON_GPU = jax.default_backend() == "gpu"
RTOL = 1e-5

CELLS = {
    "simple": make_cell("simple", 5),
    "irnn": make_cell("simple", 5, recurrent_init="identity", activation_fn=nn.relu),
    "simple-sigmoid": make_cell("simple", 5, activation_fn=nn.sigmoid),
    "indrnn": make_cell("indrnn", 5),
    "indrnn-tanh": make_cell("indrnn", 5, activation_fn=jnp.tanh),
    "lstm": make_cell("lstm", 5),
    "lstm-unoptimized": nn.LSTMCell(5, parent=None),
    "gru": make_cell("gru", 5),
}
# (T, batch, hidden): neither a multiple of the 16-row block nor a power of two, T = 1, the
# adding task's batch 50 with hidden 96 (padded to 64 x 128), an exact fit of one block.
SHAPES = [(7, 3, 5), (1, 1, 5), (4, 50, 96), (3, 16, 16)]
CASES = (
    [(name, *SHAPES[0]) for name in CELLS]
    + [(name, *shape) for name in ("simple", "indrnn") for shape in SHAPES[1:]]
    + [(name, *SHAPES[2]) for name in ("lstm", "gru")]
)


def _setup(cell, seq_len, batch, features=3, seed=0):
    """Flax parameters, time-major inputs and a non-zero initial carry."""
    keys = jax.random.split(jax.random.key(seed), 4)
    xs = jax.random.normal(keys[0], (seq_len, batch, features))
    params = nn.RNN(cell).init(keys[1], jnp.swapaxes(xs, 0, 1))["params"]["cell"]
    carry = cell.initialize_carry(keys[2], (batch, features))
    leaves, treedef = jax.tree.flatten(carry)
    noise = jax.random.split(keys[3], len(leaves))
    carry = treedef.unflatten(
        [0.5 * jax.random.normal(k, c.shape) for k, c in zip(noise, leaves, strict=True)]
    )
    return params, xs, carry


def _flax(cell, params, xs, carry):
    rnn = nn.RNN(cell, time_major=True, return_carry=True)
    return rnn.apply({"params": {"cell": params}}, xs, initial_carry=carry)


def _loss(run, cell):
    """A scalar that depends on every output and the final carry, nonlinearly."""

    def loss(params, xs, carry):
        final, hs = run(cell, params, xs, carry)
        weights = jnp.cos(jnp.arange(hs.size, dtype=hs.dtype)).reshape(hs.shape)
        return jnp.sum(weights * hs) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(final))

    return loss


def _assert_trees_close(actual, expected, rel=RTOL):
    """Every leaf within ``rel`` of the reference in relative norm, ``|a - b| / |b|``."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape
        error = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
        assert error <= rel, f"relative error {error:.2e} over {rel:.0e}"


def _with_hidden(cell, hidden):
    return cell.clone(features=hidden, parent=None)


@pytest.mark.parametrize(("name", "seq_len", "batch", "hidden"), CASES)
def test_outputs_carry_and_gradients_equal_flax_rnn(name, seq_len, batch, hidden):
    cell = _with_hidden(CELLS[name], hidden)
    setup = _setup(cell, seq_len, batch)
    with jax.default_matmul_precision("float32"):
        final, hs = jax.jit(lambda *a: pallas_scan_cell(cell, *a))(*setup)
        ref_final, ref_hs = _flax(cell, *setup)
        grads = jax.jit(jax.grad(_loss(pallas_scan_cell, cell), argnums=(0, 1, 2)))(*setup)
        ref_grads = jax.grad(_loss(_flax, cell), argnums=(0, 1, 2))(*setup)
    assert hs.shape == (seq_len, batch, hidden)
    _assert_trees_close((final, hs, grads), (ref_final, ref_hs, ref_grads))


@pytest.mark.parametrize("name", ["simple", "indrnn", "lstm", "gru"])
def test_equals_the_fused_recurrence_at_the_adding_tasks_size(name):
    cell = _with_hidden(CELLS[name], 128)
    setup = _setup(cell, 9, 50, features=2, seed=3)
    with jax.default_matmul_precision("float32"):
        value = jax.jit(lambda *a: pallas_scan_cell(cell, *a))(*setup)
        grads = jax.jit(jax.grad(_loss(pallas_scan_cell, cell), argnums=(0, 1, 2)))(*setup)
        ref = jax.jit(lambda *a: fused_scan_cell(cell, *a))(*setup)
        ref_grads = jax.jit(jax.grad(_loss(fused_scan_cell, cell), argnums=(0, 1, 2)))(*setup)
    _assert_trees_close(value, ref)
    _assert_trees_close(grads, ref_grads)


@pytest.mark.skipif(ON_GPU, reason="float64 is checked through the interpreter")
@pytest.mark.parametrize("name", ["simple", "lstm"])
def test_gradients_pass_numerical_check_in_float64(name):
    cell = CELLS[name]
    setup = _setup(cell, 3, 2)
    with jax.enable_x64(True):
        params, xs, carry = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), setup)
        loss = _loss(pallas_scan_cell, cell)
        assert loss(params, xs, carry).dtype == jnp.float64
        check_grads(loss, (params, xs, carry), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_vmap_over_seeds_equals_one_call_per_seed():
    cell = CELLS["simple"]
    setups = [_setup(cell, 5, 3, seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *setups)
    grad = jax.grad(_loss(pallas_scan_cell, cell), argnums=(0, 1, 2))
    with jax.default_matmul_precision("float32"):
        batched = jax.jit(jax.vmap(grad))(*stacked)
        one_by_one = [jax.jit(grad)(*setup) for setup in setups]
    _assert_trees_close(batched, jax.tree.map(lambda *a: jnp.stack(a), *one_by_one))


def test_grad_inside_scan_equals_the_unrolled_loop():
    """Gradient steps in a ``lax.scan`` (as truncated BPTT and the FW inner loop take them)."""
    cell = CELLS["indrnn-tanh"]
    params, xs, carry = _setup(cell, 5, 3)
    grad = jax.grad(_loss(pallas_scan_cell, cell))

    def descend(p, _):
        p = jax.tree.map(lambda a, g: a - 0.1 * g, p, grad(p, xs, carry))
        return p, None

    with jax.default_matmul_precision("float32"):
        scanned, _ = jax.jit(lambda p: jax.lax.scan(descend, p, None, length=3))(params)
        looped = params
        for _ in range(3):
            looped, _ = descend(looped, None)
    _assert_trees_close(scanned, looped)


def test_deep_stack_with_batch_norm_and_dropout_equals_the_fused_model():
    model = RNNModel(
        hidden_size=24,
        output_size=2,
        cell="indrnn",
        depth=2,
        layer_batch_norm=True,
        dropout_rate=0.1,
        recurrent_bound=1.0,
        impl="pallas",
    )
    x = jax.random.normal(jax.random.key(0), (20, 6, 3))
    y = jax.random.normal(jax.random.key(1), (20, 2))
    variables = model.init(jax.random.key(2), x)
    rngs = {"dropout": jax.random.key(3)}

    def loss(params, impl):
        out, updates = model.clone(impl=impl).apply(
            {**variables, "params": params}, x, train=True, rngs=rngs, mutable=["batch_stats"]
        )
        return mse_loss(out, y), updates

    with jax.default_matmul_precision("float32"):
        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(
            variables["params"], "pallas"
        )
        (ref, ref_stats), ref_grads = jax.value_and_grad(loss, has_aux=True)(
            variables["params"], "fused"
        )
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    _assert_trees_close(stats, ref_stats)
    _assert_trees_close(grads, ref_grads)


@pytest.mark.parametrize("name", ["simple", "lstm"])
def test_extra_batch_axes_are_flattened_and_restored(name):
    cell = CELLS[name]
    params, xs, carry = _setup(cell, 4, 6)
    split = jax.tree.map(lambda c: c.reshape(2, 3, 5), carry)
    final, hs = pallas_scan_cell(cell, params, xs.reshape(4, 2, 3, 3), split)
    ref_final, ref_hs = pallas_scan_cell(cell, params, xs, carry)
    assert hs.shape == (4, 2, 3, 5)
    assert all(leaf.shape == (2, 3, 5) for leaf in jax.tree.leaves(final))
    np.testing.assert_allclose(hs.reshape(ref_hs.shape), ref_hs, rtol=1e-6)
    for leaf, ref in zip(jax.tree.leaves(final), jax.tree.leaves(ref_final), strict=True):
        np.testing.assert_allclose(leaf.reshape(ref.shape), ref, rtol=1e-6)


def test_kernels_cover_every_cell_of_the_paper_up_to_the_hidden_limit():
    for name in ("simple", "indrnn", "lstm", "gru"):
        assert supports_pallas(make_cell(name, kernels.MAX_HIDDEN))
        assert not supports_pallas(make_cell(name, kernels.MAX_HIDDEN + 1))
    assert not supports_pallas(nn.GRUCell(8, activation_fn=nn.relu, parent=None))
    assert not supports_pallas(nn.SimpleCell(8, residual=True, parent=None))
    assert not supports_pallas(make_cell("simple", 8, activation_fn=nn.elu))
    assert [kernels.padded_hidden(h) for h in (1, 16, 17, 96, 128, 129)] == [
        16,
        16,
        32,
        128,
        128,
        256,
    ]


def test_launch_settings_apply_inside_the_block_and_are_checked():
    cell = CELLS["simple"]
    params, xs, carry = _setup(cell, 3, 20)
    with kernels.launch(block_rows=32, num_warps=2) as settings:
        assert settings == kernels.Launch(32, 2)
        wide = jax.jit(lambda *a: pallas_scan_cell(cell, *a))(params, xs, carry)
    # Restored on leaving: each kernel family gets its measured setting again.
    assert kernels._launch("elman") == kernels.LAUNCH["elman"] != kernels.Launch(32, 2)
    _assert_trees_close(wide, pallas_scan_cell(cell, params, xs, carry))
    with pytest.raises(ValueError, match="block_rows must be a power of two >= 1, got 24"):
        kernels.Launch(block_rows=24)


def test_bad_inputs_raise_errors_naming_them():
    cell = CELLS["simple"]
    params, xs, carry = _setup(cell, 4, 3)
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        pallas_scan_cell(cell, params, xs[:, :, 0], carry)
    with pytest.raises(ValueError, match="no Pallas kernel for cell"):
        pallas_scan_cell(make_cell("simple", 5, activation_fn=nn.elu), params, xs, carry)
    with pytest.raises(ValueError, match="hidden size 300"):
        kernels.elman_recurrence("tanh", jnp.eye(300), jnp.ones((2, 3, 300)), jnp.ones((3, 300)))
