"""Heads on the last hidden state: the losses and predictions that go with a linear output.

``RNNModel`` ends in one linear layer ``y = W_o h_T + b_o``; what ``y`` means is decided
here, by the loss it is trained with:

* ``"classifier"``: ``y`` are logits, softmax cross-entropy with integer labels;
* ``"regressor"``: ``y`` is the prediction, mean squared error (the adding task);
* ``"binary"``: ``y`` is one logit, ``sigmoid(y)`` is compared with a 0/1 label by mean
  squared error, as the authors' HAR-2 code does (``binary_cross_entropy_loss`` is the
  textbook alternative).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def cross_entropy_loss(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy ``-log softmax(y)_label`` of logits ``[B, C]``, labels ``[B]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def mse_loss(predictions: Array, targets: Array) -> Array:
    """Mean squared error ``mean((y - t)^2)``; targets ``[B]`` are matched to outputs ``[B, 1]``."""
    return jnp.mean((predictions - _like(targets, predictions)) ** 2)


def sigmoid_mse_loss(logits: Array, labels: Array) -> Array:
    """``mean((sigmoid(y) - t)^2)`` for one logit per example and 0/1 labels (authors' HAR-2)."""
    return jnp.mean((jax.nn.sigmoid(logits) - _like(labels, logits)) ** 2)


def binary_cross_entropy_loss(logits: Array, labels: Array) -> Array:
    """Mean ``-t log sigmoid(y) - (1 - t) log(1 - sigmoid(y))`` for 0/1 labels."""
    return optax.sigmoid_binary_cross_entropy(logits, _like(labels, logits)).mean()


def _like(targets: Array, outputs: Array) -> Array:
    targets = jnp.asarray(targets, outputs.dtype)
    return targets.reshape(outputs.shape) if targets.size == outputs.size else targets


class Head(NamedTuple):
    """What the linear output means: its training loss and its prediction."""

    loss: Callable[[Array, Array], Array]
    predict: Callable[[Array], Array]


HEADS: dict[str, Head] = {
    "classifier": Head(cross_entropy_loss, lambda y: jnp.argmax(y, axis=-1)),
    "regressor": Head(mse_loss, lambda y: y),
    "binary": Head(sigmoid_mse_loss, lambda y: (y[..., 0] > 0).astype(jnp.int32)),
}


def get_head(name: str) -> Head:
    """The head called ``name`` (one of ``HEADS``)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; expected one of {tuple(HEADS)}")
    return HEADS[name]
