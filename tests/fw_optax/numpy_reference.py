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
    return frank_wolfe_run(w, grad0, grad_fn, K, delta, p, scope, cumulative)[0]


def _dot(a: Params, b: Params) -> float:
    return float(sum(np.sum(x * y) for x, y in zip(a, b, strict=True)))


def frank_wolfe_run(
    w: Params,
    grad0: Params,
    grad_fn: Callable[[Params, int], Params],
    K: int,
    delta: float,
    p: float,
    scope: str,
    cumulative: bool = False,
    step_rule: str = "average",
    gap_tol: float | None = None,
) -> tuple[Params, float, int]:
    """One outer step: ``(Δ, gap, gradients evaluated)``, written as plainly as possible.

    gap_k = <g_k, Δ_{k-1} - s_k>; with ``gap_tol`` the loop stops at the first k >= 2 with
    gap_k <= gap_tol * gap_1 and returns Δ_{k-1}.
    """
    zero = [np.zeros_like(g) for g in grad0]
    avg, offset = zero, zero
    gap1 = gap = 0.0
    for k in range(1, K + 1):
        point = offset if cumulative else avg
        g = grad0 if k == 1 else grad_fn([wi + di for wi, di in zip(w, point, strict=True)], k)
        s = lmo(g, delta, p, scope)
        gap = _dot(g, [a - si for a, si in zip(avg, s, strict=True)])
        if k == 1:
            gap1 = gap
        elif gap_tol is not None and gap <= gap_tol * gap1:
            return avg, gap, k
        step = 1 / k if step_rule == "average" else 2 / (k + 1)
        avg = [(1 - step) * a + step * si for a, si in zip(avg, s, strict=True)]
        offset = [o + a for o, a in zip(offset, avg, strict=True)] if k > 1 else avg
    return avg, gap, K


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


def k_sparse_lmo(grads: Params, delta: float, k: int) -> Params:
    """-δ sign(g) on the k largest |g| of the whole pytree (first index on ties), else 0."""
    flat = np.concatenate([g.ravel() for g in grads])
    order = sorted(range(flat.size), key=lambda i: (-abs(flat[i]), i))[:k]
    s = np.zeros_like(flat)
    s[order] = -delta * np.sign(flat[order])
    out, start = [], 0
    for g in grads:
        out.append(s[start : start + g.size].reshape(g.shape))
        start += g.size
    return out


def group_l2_lmo(g: np.ndarray, delta: float, axis: int) -> np.ndarray:
    """One L2 ball per slice along ``axis`` of a matrix: each slice -δ g_j / ||g_j||."""
    moved = np.moveaxis(g, axis, 0)
    out = np.zeros_like(moved)
    for j, gj in enumerate(moved):
        norm = np.linalg.norm(gj)
        out[j] = -delta * gj / norm if norm > 0 else 0.0
    return np.moveaxis(out, 0, axis)


def nuclear_lmo(g: np.ndarray, delta: float) -> np.ndarray:
    """-δ u_1 v_1^T from NumPy's SVD of a matrix."""
    u, _, vt = np.linalg.svd(g)
    return -delta * np.outer(u[:, 0], vt[0])
