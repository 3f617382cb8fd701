r"""Batch norm over every axis but the last, with a backward pass of two sweeps.

Reverse-mode autodiff of ``flax.linen.BatchNorm`` differentiates the mean, the fast
variance ``E[x^2] - E[x]^2`` and the normalization separately, each a sweep over the
``[T, B, H]`` activations of every layer of the deep IndRNN. ``batch_norm`` has the
closed-form gradient (Ioffe & Szegedy, 2015):

.. math::

    \hat x = (x - \mu)\, r,\quad r = (\sigma^2 + \epsilon)^{-1/2},\quad
    y = \gamma \hat x + \beta,\qquad
    \frac{\partial L}{\partial x} = \gamma r \Big(g - \overline{g}
      - \hat x\, \overline{g \hat x}\Big)

with bars the means over the normalized axes: one sweep for the two sums
``sum g``, ``sum g x_hat`` (which are also ``dbeta`` and ``dgamma``) and one for ``dx``.
In the deep IndRNN's training step batch norm's share went from 33 to 24 ms
(``benchmarks/perf/perf_models.py``, section 6).
``BatchNorm`` is ``flax.linen.BatchNorm`` with the statistics over all axes but the last:
the same variables (``params``: ``scale``, ``bias``; ``batch_stats``: ``mean``, ``var``),
the same running averages and the same numbers up to float rounding
(``tests/models/test_batch_norm.py``).
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _stats(x: Array) -> tuple[Array, Array]:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.maximum(jnp.mean(x * x, axis=axes) - mean * mean, 0.0)
    return mean, var


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm(x: Array, scale: Array, bias: Array, epsilon: float) -> tuple[Array, Array, Array]:
    """Normalize ``x`` over all axes but the last with its own statistics.

    Args:
      x: activations ``[..., H]``.
      scale: gamma ``[H]``.
      bias: beta ``[H]``.
      epsilon: added to the variance.

    Returns:
      ``(y, mean, var)``: the normalized, scaled and shifted ``x``, and the batch mean and
      (biased, ``E[x^2] - E[x]^2`` as Flax computes it) variance for the running averages.
    """
    return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, epsilon):
    mean, var = _stats(x)
    rstd = jax.lax.rsqrt(var + epsilon)
    y = (x - mean) * (rstd * scale) + bias
    return (y, mean, var), (x, mean, rstd, scale)


def _batch_norm_bwd(epsilon, residuals, cotangents):
    x, mean, rstd, scale = residuals
    g, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    x_hat = (x - mean) * rstd
    d_bias = jnp.sum(g, axis=axes)
    d_scale = jnp.sum(g * x_hat, axis=axes)
    dx = (scale * rstd) * (g - (d_bias + x_hat * d_scale) / count)
    # The statistics are outputs too (for the running averages); their cotangents are
    # zero when only the running averages read them, but are honoured.
    dx = dx + (g_mean + 2.0 * g_var * (x - mean)) / count
    return dx, d_scale, d_bias


batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.Module):
    """``flax.linen.BatchNorm`` over all axes but the last (``axis=-1``), on ``batch_norm``.

    Attributes:
      use_running_average: normalize with the stored averages (evaluation) instead of the
        batch's statistics; may be given per call.
      momentum: decay of the running averages (Flax's convention: ``0.9`` keeps 90%).
      epsilon: added to the variance.
    """

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        if use_running_average:
            rstd = jax.lax.rsqrt(ra_var.value + self.epsilon)
            return (x - ra_mean.value) * (rstd * scale) + bias
        y, mean, var = batch_norm(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
        return y
