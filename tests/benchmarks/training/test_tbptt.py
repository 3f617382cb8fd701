"""Tests for benchmarks/training/tbptt.py: truncation, its equivalence to full BPTT, and
TBPTT + FW."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fw_optax
from benchmarks.training.tbptt import (
    ChunkBatch,
    chunk_loss,
    rnn_chunk_fn,
    split_chunks,
    tbptt_loss,
    tbptt_step,
)
from models import RNNModel, mse_loss

B, T, F, H = 2, 8, 2, 4
X = jax.random.normal(jax.random.key(0), (B, T, F))
Y = jnp.array([0.3, -0.7])


def _model(cell="simple", **kwargs):
    model = RNNModel(hidden_size=H, output_size=1, cell=cell, **kwargs)
    return model, model.init(jax.random.key(1), X)["params"]


def _full_loss(model, params, x=X):
    return mse_loss(model.apply({"params": params}, x), Y)


def _allclose_tree(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def test_split_chunks_keeps_time_order():
    chunks = split_chunks(X, 2)
    assert chunks.shape == (4, B, 2, F)
    np.testing.assert_array_equal(chunks[1], X[:, 2:4])


def test_tbptt_with_one_chunk_equals_full_bptt():
    model, params = _model("lstm", depth=2)

    def truncated(p):
        return tbptt_loss(
            rnn_chunk_fn(model),
            mse_loss,
            p,
            X,
            Y,
            chunk_length=T,
            initial_carry=model.initialize_carry(B),
        )[0]

    full_value, full_grad = jax.value_and_grad(lambda p: _full_loss(model, p))(params)
    value, grad = jax.value_and_grad(truncated)(params)
    np.testing.assert_allclose(value, full_value, rtol=1e-6)
    _allclose_tree(grad, full_grad)


@pytest.mark.parametrize("cell", ["simple", "lstm", "indrnn"])
def test_no_gradient_crosses_a_chunk_boundary(cell):
    model, params = _model(cell, recurrent_init="identity")
    length = 2

    def chunk_losses(x):
        return tbptt_loss(
            rnn_chunk_fn(model),
            mse_loss,
            params,
            x,
            Y,
            chunk_length=length,
            initial_carry=model.initialize_carry(B),
        )[1]

    jac = np.abs(np.asarray(jax.jacrev(chunk_losses)(X)))  # [chunks, B, T, F]
    for c in range(T // length):
        assert np.all(jac[c, :, : c * length] == 0), f"chunk {c} sees inputs before it"
        assert np.all(jac[c, :, (c + 1) * length :] == 0), f"chunk {c} sees inputs after it"
        assert np.any(jac[c, :, c * length : (c + 1) * length] > 0)
    # Untruncated, the loss does depend on the first inputs.
    full = np.abs(np.asarray(jax.grad(lambda x: _full_loss(model, params, x))(X)))
    assert np.any(full[:, :length] > 0)


def test_tbptt_step_with_one_chunk_is_one_full_bptt_step():
    model, params = _model("gru")
    tx = optax.sgd(0.1)
    new, _, losses = tbptt_step(
        rnn_chunk_fn(model),
        mse_loss,
        tx,
        params,
        tx.init(params),
        X,
        Y,
        chunk_length=T,
        initial_carry=model.initialize_carry(B),
    )
    loss, grads = jax.value_and_grad(lambda p: _full_loss(model, p))(params)
    np.testing.assert_allclose(losses, [loss], rtol=1e-6)
    _allclose_tree(new, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads))


def test_tbptt_step_is_the_authors_loop_one_update_per_chunk():
    """A Python loop over chunks, one SGD step each, carry from the weights before it."""
    model, params = _model("simple")
    apply = rnn_chunk_fn(model)
    tx = optax.sgd(0.2)
    new, _, losses = jax.jit(
        lambda p: tbptt_step(
            apply,
            mse_loss,
            tx,
            p,
            tx.init(p),
            X,
            Y,
            chunk_length=2,
            initial_carry=model.initialize_carry(B),
        )
    )(params)

    def chunk_value(p, carry, x_c):
        return mse_loss(apply(p, carry, x_c)[1], Y)

    expected, carry, expected_losses = params, model.initialize_carry(B), []
    for c in range(T // 2):
        x_c = X[:, 2 * c : 2 * c + 2]
        loss, g = jax.value_and_grad(chunk_value)(expected, carry, x_c)
        carry, _ = apply(expected, carry, x_c)
        expected = jax.tree.map(lambda p, g: p - 0.2 * g, expected, g)
        expected_losses.append(loss)
    assert losses.shape == (T // 2,)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    _allclose_tree(new, expected)


def test_tbptt_with_frank_wolfe_feeds_chunk_k_to_inner_step_k():
    model, params = _model("simple")
    apply, value = rnn_chunk_fn(model), chunk_loss(rnn_chunk_fn(model), mse_loss)
    K, length = 4, 2
    tx = optax.chain(fw_optax.frank_wolfe(K=K, delta=0.1), optax.sgd(1.0))
    step = jax.jit(
        lambda p, s: tbptt_step(
            apply,
            mse_loss,
            tx,
            p,
            s,
            X,
            Y,
            chunk_length=length,
            initial_carry=model.initialize_carry(B),
            inner_steps=K,
        )
    )
    state = tx.init(params)
    new, new_state, losses = step(params, state)

    # By hand: carries at ω, gradient of chunk 0, chunks 1..3 as inner batches.
    chunks, carry, carries = split_chunks(X, length), model.initialize_carry(B), []
    for c in range(K):
        carries.append(carry)
        carry, _ = apply(params, carry, chunks[c])
    batches = [ChunkBatch(chunks[c], carries[c], Y) for c in range(K)]
    loss, grads = jax.value_and_grad(value)(params, batches[0])
    inner = jax.tree.map(lambda *leaves: jnp.stack(leaves), *batches[1:])
    updates, _ = tx.update(grads, state, params, value_fn=value, inner_batches=inner)
    np.testing.assert_allclose(losses, [loss], rtol=1e-6)
    _allclose_tree(new, optax.apply_updates(params, updates))
    # The jitted step trains and compiles once.
    for _ in range(3):
        new, new_state, more = step(new, new_state)
    assert float(more[0]) < float(losses[0])
    assert step._cache_size() == 1


def test_tbptt_with_frank_wolfe_wraps_the_last_update_around_to_chunk_zero():
    """K = 3 on n = 4 chunks: updates [0, 1, 2] then [3, 0, 1]. Chunk 3 enters with the carry
    of the previous update's weights; chunk 0 restarts from the initial carry."""
    model, params = _model("simple")
    apply, value = rnn_chunk_fn(model), chunk_loss(rnn_chunk_fn(model), mse_loss)
    K, length = 3, 2
    tx = optax.chain(fw_optax.frank_wolfe(K=K, delta=0.1), optax.sgd(1.0))
    init = model.initialize_carry(B)
    new, _, losses = jax.jit(
        lambda p, s: tbptt_step(
            apply, mse_loss, tx, p, s, X, Y, chunk_length=length, initial_carry=init,
            inner_steps=K,
        )
    )(params, tx.init(params))  # fmt: skip

    chunks, state, carry, expected = split_chunks(X, length), tx.init(params), init, []
    for idx in ([0, 1, 2], [3, 0, 1]):
        carries = []
        for c in idx:
            carry = init if c == 0 else carry
            carries.append(carry)
            carry, _ = apply(params, carry, chunks[c])
        batches = [ChunkBatch(chunks[c], h, Y) for c, h in zip(idx, carries, strict=True)]
        loss, grads = jax.value_and_grad(value)(params, batches[0])
        inner = jax.tree.map(lambda *leaves: jnp.stack(leaves), *batches[1:])
        updates, state = tx.update(grads, state, params, value_fn=value, inner_batches=inner)
        params = optax.apply_updates(params, updates)
        expected.append(loss)
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    _allclose_tree(new, params)


@pytest.mark.parametrize("length", [0, -2, 3, 16])
def test_bad_chunk_length_raises_value_error_naming_it(length):
    model, params = _model()
    with pytest.raises(ValueError, match=str(length)):
        tbptt_loss(
            rnn_chunk_fn(model),
            mse_loss,
            params,
            X,
            Y,
            chunk_length=length,
            initial_carry=model.initialize_carry(B),
        )


def test_bad_inner_steps_and_input_rank_raise_value_error():
    model, params = _model()
    tx = optax.sgd(0.1)
    with pytest.raises(ValueError, match="inner_steps must be >= 1, got 0"):
        tbptt_step(
            rnn_chunk_fn(model),
            mse_loss,
            tx,
            params,
            tx.init(params),
            X,
            Y,
            chunk_length=2,
            initial_carry=model.initialize_carry(B),
            inner_steps=0,
        )
    with pytest.raises(ValueError, match=r"\(2, 8\)"):
        split_chunks(X[..., 0], 2)
