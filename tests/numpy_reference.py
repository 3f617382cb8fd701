"""An independent plain-NumPy (float64) reference of Algorithm 1 and of two test problems.

No JAX here: parameters are lists of arrays, gradients come from hand-written derivatives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Params = list[np.ndarray]


def lmo(grads: Params, delta: float, p: float, scope: str) -> Params:
    """argmin over the Lp ball(s) of <s, g>, straight from the textbook formulas."""
    if scope == "leaf":
        return [lmo([g], delta, p, "global")[0] for g in grads]
    flat = np.concatenate([g.ravel() for g in grads])
    if not np.any(flat):
        s = np.zeros_like(flat)
    elif p == math.inf:
        s = -delta * np.sign(flat)
    elif p == 1:
        s = np.zeros_like(flat)
        i = int(np.argmax(np.abs(flat)))
        s[i] = -delta * np.sign(flat[i])
    else:
        q = p / (p - 1)
        s = (
            -delta
            * np.sign(flat)
            * np.abs(flat) ** (q - 1)
            / np.sum(np.abs(flat) ** q) ** ((q - 1) / q)
        )
    out, start = [], 0
    for g in grads:
        out.append(s[start : start + g.size].reshape(g.shape))
        start += g.size
    return out


def frank_wolfe_delta(
    w: Params,
    grad0: Params,
    grad_fn: Callable[[Params, int], Params],
    K: int,
    delta: float,
    p: float,
    scope: str,
    cumulative: bool = False,
) -> Params:
    """Δ_K of one outer step; ``grad_fn(w, k)`` is the gradient used by inner step k >= 2."""
    avg = lmo(grad0, delta, p, scope)
    offset = [a.copy() for a in avg]
    for k in range(2, K + 1):
        point = offset if cumulative else avg
        g = grad_fn([wi + di for wi, di in zip(w, point, strict=True)], k)
        s = lmo(g, delta, p, scope)
        avg = [(1 - 1 / k) * a + (1 / k) * si for a, si in zip(avg, s, strict=True)]
        offset = [o + a for o, a in zip(offset, avg, strict=True)]
    return avg


def quadratic_grad(w: Params, A: np.ndarray, b: np.ndarray) -> Params:
    """Gradient of F(w) = 1/2 w'Aw + b'w + sum(w^4)/4 on the flattened parameters."""
    flat = np.concatenate([x.ravel() for x in w])
    g = A @ flat + b + flat**3
    out, start = [], 0
    for x in w:
        out.append(g[start : start + x.size].reshape(x.shape))
        start += x.size
    return out


def rnn_loss_and_grad(w: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray):
    """MSE of a vanilla tanh RNN on its last state, with backpropagation through time.

    w = [W_x (F,H), W_h (H,H), b (H,), W_o (H,1), b_o (1,)]; x: (B,T,F); y: (B,1).
    """
    Wx, Wh, b, Wo, bo = w
    B, T, _ = x.shape
    hs = [np.zeros((B, Wh.shape[0]))]
    for t in range(T):
        hs.append(np.tanh(x[:, t] @ Wx + hs[-1] @ Wh + b))
    pred = hs[-1] @ Wo + bo
    loss = np.mean((pred - y) ** 2)
    dpred = 2 * (pred - y) / pred.size
    dWo, dbo = hs[-1].T @ dpred, dpred.sum(0)
    dWx, dWh, db = np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)
    dh = dpred @ Wo.T
    for t in range(T, 0, -1):
        da = dh * (1 - hs[t] ** 2)
        dWx += x[:, t - 1].T @ da
        dWh += hs[t - 1].T @ da
        db += da.sum(0)
        dh = da @ Wh.T
    return loss, [dWx, dWh, db, dWo, dbo]
