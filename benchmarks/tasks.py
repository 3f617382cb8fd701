"""What a task is: its data, the model and head a method trains on it, the loss and metric.

Five tasks, as in the paper: the adding problem (generated, MSE), Pixel-MNIST and
Permuted-MNIST (10 classes, cross-entropy, accuracy), HAR-2 and Noisy-HAR-2 (binary,
sigmoid + MSE as in the authors' code, accuracy). :func:`load_task_data` reads the data,
:func:`build_model` the network a configuration names, and :func:`make_objective` ties them
into the :class:`benchmarks.train.Objective` the training loop runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.configs import Config
from benchmarks.data import Dataset, batches, load_har2, load_mnist, load_noisy_har2
from benchmarks.data.adding import PLATEAU_MSE, adding_batch
from benchmarks.train import TBPTT, Objective, Stream
from models import (
    RNNModel,
    clip_indrnn_recurrent,
    deep_indrnn,
    get_head,
    indrnn_recurrent_bound,
    make_train_loss,
    rnn_chunk_fn,
    split_variables,
)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """The fixed facts of a task: its title, head, output size and headline metric."""

    title: str
    head: str
    output_size: int
    metric: str
    load: Callable[[], Dataset] | None = None


TASK_SPECS: Mapping[str, TaskSpec] = {
    "adding": TaskSpec("Adding task", "regressor", 1, "loss"),
    "pixel_mnist": TaskSpec("Pixel-MNIST", "classifier", 10, "accuracy", load_mnist),
    "permuted_mnist": TaskSpec(
        "Permuted-MNIST", "classifier", 10, "accuracy", lambda: load_mnist(permuted=True)
    ),
    "har2": TaskSpec("HAR-2", "binary", 1, "accuracy", load_har2),
    "noisy_har2": TaskSpec("Noisy-HAR-2", "binary", 1, "accuracy", load_noisy_har2),
}


@dataclasses.dataclass(frozen=True, eq=False)
class TaskData:
    """A task's data for one run: the training stream and the test set.

    Attributes:
      stream: the training mini-batches.
      x_test, y_test: the test set, fixed for the run (Noisy-HAR-2's noise drawn once from
        the run's seed).
      sequence_length, num_features: T and F of the inputs.
      card: where the data came from and what was done to it.
    """

    stream: Stream
    x_test: np.ndarray
    y_test: np.ndarray
    sequence_length: int
    num_features: int
    card: Mapping[str, Any]


def load_task_data(config: Config, dataset: Dataset | None = None) -> TaskData:
    """The data of ``config.task``; ``dataset`` replaces the loader (tests pass toy data).

    ``train_size`` / ``test_size`` keep the first examples of each split (the cpu preset's
    MNIST subset; MNIST is stored in no particular class order).
    """
    if config.task == "adding":
        length = config.length

        def generate(key: jax.Array):
            return adding_batch(key, config.batch_size, length)

        x_test, y_test = adding_batch(
            jax.random.key(10_000 + config.seed), config.test_size, length
        )
        card = {
            "name": "adding",
            "source": "generated (benchmarks/data/adding.py)",
            "sizes": {"train": "a fresh batch every step", "test": config.test_size},
            "plateau_mse": PLATEAU_MSE,
        }
        return TaskData(
            Stream(generate=generate), np.asarray(x_test), np.asarray(y_test), length, 2, card
        )
    data = TASK_SPECS[config.task].load() if dataset is None else dataset
    x_train, y_train = data.x_train[: config.train_size], data.y_train[: config.train_size]
    x_test, y_test = data.x_test[: config.test_size], data.y_test[: config.test_size]
    if data.transform is not None:
        # Noisy-HAR-2 adds fresh noise at every read; the test copy is read once per run.
        x_test, y_test = next(
            batches(
                (x_test, y_test),
                len(x_test),
                seed=10_000 + config.seed,
                shuffle=False,
                transform=data.transform,
            )
        )
    if config.batch_size > len(x_train):
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {len(x_train)} training examples"
        )
    card = {
        **{k: v for k, v in data.card.items() if k in ("name", "source", "noise")},
        "sizes": {"train": len(x_train), "test": len(x_test), "full": dict(data.card["sizes"])}
        if "sizes" in data.card
        else {"train": len(x_train), "test": len(x_test)},
    }
    stream = Stream(
        arrays=(x_train, y_train), batch_size=config.batch_size, transform=data.transform
    )
    return TaskData(stream, x_test, y_test, data.sequence_length, data.num_features, card)


def build_model(config: Config, data: TaskData) -> RNNModel:
    """The network ``config`` names: vanilla/LSTM RNN (optionally with final BN) or deep IndRNN."""
    output_size = TASK_SPECS[config.task].output_size
    if config.cell == "indrnn":
        return deep_indrnn(
            output_size,
            indrnn_recurrent_bound(config.indrnn_gamma, data.sequence_length),
            depth=config.depth,
            hidden_size=config.hidden,
            dropout_rate=config.dropout,
            unroll=config.unroll,
        )
    return RNNModel(
        hidden_size=config.hidden,
        output_size=output_size,
        cell=config.cell,
        depth=config.depth,
        batch_norm=config.batch_norm,
        layer_batch_norm=config.layer_batch_norm,
        dropout_rate=config.dropout,
        unroll=config.unroll,
    )


def init_variables(config: Config, model: RNNModel, data: TaskData) -> tuple[Any, Any]:
    """``(params, model_state)`` drawn from ``key(seed)``; the state holds batch statistics."""
    x0 = jnp.zeros((2, data.sequence_length, data.num_features), jnp.float32)
    return split_variables(model.init(jax.random.key(config.seed), x0))


def make_objective(config: Config, model: RNNModel, data: TaskData) -> Objective:
    """The training loss, the test evaluation and, where the method needs them, TBPTT and
    IndRNN's recurrent clip."""
    spec = TASK_SPECS[config.task]
    head = get_head(spec.head)
    train_loss = make_train_loss(model, head.loss)

    def loss(params, model_state, batch, key):
        x, y = batch[0], batch[1]
        return train_loss(params, model_state, x, y, key if config.dropout > 0 else None)

    def evaluate(params, model_state, test):
        xs, ys, mask = test

        def one(totals, batch):
            x, y, m = batch
            out = model.apply({"params": params, **model_state}, x)
            per_example = jax.vmap(lambda o, t: head.loss(o[None], t[None]))(out, y)
            correct = (head.predict(out) == y) if spec.metric == "accuracy" else 0.0 * m
            return (totals[0] + jnp.sum(per_example * m), totals[1] + jnp.sum(correct * m)), None

        (total_loss, total_correct), _ = jax.lax.scan(one, (0.0, 0.0), (xs, ys, mask))
        count = jnp.sum(mask)
        metrics = {"loss": total_loss / count}
        if spec.metric == "accuracy":
            metrics["accuracy"] = total_correct / count
        return metrics

    project = None
    if config.cell == "indrnn":
        bound = indrnn_recurrent_bound(config.indrnn_gamma, data.sequence_length)

        def project(params):
            return clip_indrnn_recurrent(params, bound)

    tbptt = None
    if config.chunk_length is not None and config.method in ("tbptt", "tbptt_fw"):
        tbptt = TBPTT(
            chunk_fn=lambda model_state: rnn_chunk_fn(model, model_state),
            loss_fn=head.loss,
            chunk_length=config.chunk_length,
            initial_carry=model.initialize_carry,
            inner_steps=config.K if config.method == "tbptt_fw" else 1,
        )
    test = stack_test(data.x_test, data.y_test, config.eval_batch_size)
    return Objective(loss, evaluate, test, spec.metric, project, tbptt)


def stack_test(
    x: np.ndarray, y: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test set as ``[n, batch, ...]`` batches, padded, with a 0/1 mask on the padding."""
    size = min(batch_size, len(x))
    n = -(-len(x) // size)
    pad = n * size - len(x)
    mask = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)])
    return (
        x.reshape(n, size, *x.shape[1:]),
        y.reshape(n, size, *y.shape[1:]),
        mask.reshape(n, size),
    )
