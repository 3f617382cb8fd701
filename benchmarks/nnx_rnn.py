"""Train a Flax NNX RNN with ``frank_wolfe`` through ``nnx.Optimizer`` (the adding task).

    python -m benchmarks.nnx_rnn                 # GRU, hidden 32, T=30, K=5, 300 steps
    python -m benchmarks.nnx_rnn --K 1 --steps 100

``nnx.Optimizer.update(model, grads, **kwargs)`` forwards its keyword arguments to the optax
transform, so ``frank_wolfe``'s ``value_fn`` goes there. ``value_fn`` receives the ``nnx.Param``
state (plain arrays) at a perturbed point ω + Δ and must return the loss there: it merges those
parameters with the model's graph and its other state (``nnx.split``/``nnx.merge``), as a
pure function.

Batch statistics and RNG: the outer gradient (``nnx.value_and_grad`` on the model itself) runs
the model in training mode and updates the batch-norm running averages and the dropout RNG
counter in place, as any NNX training step does. The inner steps k = 2..K run on a merged copy
that is thrown away, so they neither touch the running averages nor advance the RNG: they see
the statistics of their own batch and share one dropout mask, drawn after the outer step's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import fw_optax
from benchmarks.registry.tasks import adding_problem, get_task
from models import get_head

Batch = tuple[jax.Array, jax.Array]
_OUTPUT_LOSS = get_head(get_task("adding").head).loss  # the adding task's: MSE


class AddingRNN(nnx.Module):
    """GRU over the sequence, batch norm and dropout on the last state, a linear head."""

    def __init__(self, hidden_size: int, *, dropout_rate: float = 0.1, rngs: nnx.Rngs):
        self.rnn = nnx.RNN(nnx.GRUCell(2, hidden_size, rngs=rngs))
        self.norm = nnx.BatchNorm(hidden_size, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.head = nnx.Linear(hidden_size, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.rnn(x)[:, -1]
        return self.head(self.dropout(self.norm(h)))


def loss_fn(model: AddingRNN, batch: Batch) -> jax.Array:
    """The adding task's loss (``benchmarks.registry.tasks``: mean squared error) of the
    model on ``(x, y)``."""
    x, y = batch
    return _OUTPUT_LOSS(model(x), y)


def make_value_fn(model: nnx.Module, batch: Batch) -> Callable[[nnx.State], jax.Array]:
    """``value_fn`` for ``frank_wolfe``: the loss on ``batch`` as a function of the params.

    The graph and the non-parameter state (batch statistics, RNG counters) are those of
    ``model`` now; ``nnx.merge`` builds a fresh copy per call, so the caller's model is not
    changed by the inner steps.
    """
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    rest = nnx.as_pure(rest)  # plain arrays: each call builds its own variables

    def value_fn(params: nnx.State) -> jax.Array:
        return loss_fn(nnx.merge(graphdef, params, rest), batch)

    return value_fn


@nnx.jit
def train_step(model: AddingRNN, optimizer: nnx.Optimizer, batch: Batch) -> jax.Array:
    """One outer step: the gradient at ω, then K-1 more inside ``frank_wolfe``."""
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    optimizer.update(model, grads, value_fn=make_value_fn(model, batch))
    return loss


@nnx.jit
def eval_loss(model: AddingRNN, batch: Batch) -> jax.Array:
    """Test loss with the running batch statistics and no dropout."""
    model.eval()
    loss = loss_fn(model, batch)
    model.train()
    return loss


def train(
    *,
    K: int = 5,
    delta: float = 0.1,
    eta: float = 1.0,
    hidden_size: int = 32,
    length: int = 30,
    batch_size: int = 64,
    steps: int = 300,
    seed: int = 0,
) -> tuple[AddingRNN, list[float]]:
    """Trains ``AddingRNN`` with ``chain(frank_wolfe(K, δ), sgd(η))`` on the adding task's
    batches and test set of 512 (``benchmarks.registry.tasks``); returns it and its test
    losses before training and after every tenth of ``steps``."""
    problem = adding_problem(
        length=length, batch_size=batch_size, hidden=hidden_size, seed=seed, test_size=512
    )
    model = AddingRNN(hidden_size, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    tx = optax.chain(fw_optax.frank_wolfe(K, delta), optax.sgd(eta))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    keys = jax.random.split(jax.random.key(seed + 2), steps)
    test = (jnp.asarray(problem.data.x_test), jnp.asarray(problem.data.y_test))
    losses = [float(eval_loss(model, test))]
    for step in range(steps):
        train_step(model, optimizer, problem.make_batch(keys[step]))
        if (step + 1) % max(1, steps // 10) == 0:
            losses.append(float(eval_loss(model, test)))
    return model, losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", type=int, default=5)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--length", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _, losses = train(
        K=args.K,
        delta=args.delta,
        eta=args.eta,
        hidden_size=args.hidden,
        length=args.length,
        batch_size=args.batch,
        steps=args.steps,
        seed=args.seed,
    )
    print(f"nnx GRU, frank_wolfe K={args.K} δ={args.delta} η={args.eta}, adding T={args.length}")
    print("test MSE: " + " -> ".join(f"{x:.4f}" for x in losses))


if __name__ == "__main__":
    main()
