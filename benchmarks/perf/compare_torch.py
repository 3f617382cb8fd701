"""fw-optax against PyTorch: one vanilla RNN, one Frank-Wolfe optimizer, timed side by side.

    pip install -e ".[compare]"                  # the CPU build of torch
    python -m benchmarks.perf.compare_torch           # check, then time T=100 and T=400
    python -m benchmarks.perf.compare_torch --quick   # smoke run: tiny T, one repeat
    python -m benchmarks.perf.compare_torch --compile --lengths 100   # add a torch.compile set-up
    python -m benchmarks.perf.compare_torch --device cuda --precision tf32 --impls fused pallas \
        --lengths 100 400 784 --out results/gpu/compare_torch.txt    # on a GPU, both sides

The model is the adding task's: a tanh RNN (hidden 128, 2 inputs, batch 50) with a linear head
on ``h_T`` and the MSE loss; fw-optax runs ``models.RNNModel(cell="simple")``, torch runs
``torch.nn.RNN`` (tanh, ``batch_first``) and an ``nn.Linear`` head, written as a PyTorch user
would. Both start from the same weights (Flax's, copied into torch) and eat the same batches.
Two optimizers, K = 5 inner steps, hyper-parameters from ``benchmarks.registry.configs``:

* ``alg1``, Algorithm 1: one L2 ball of radius δ over all parameters, inner gradient k taken
  at ``ω + Δ_{k-1}``, ``Δ_k = (1 - 1/k) Δ_{k-1} + s_k / k``, then ``ω ← ω + η Δ_K``;
  ``chain(frank_wolfe(5, δ, 2), sgd(η))``; one mini-batch per outer step.
* ``authors``, the authors' released code: one L2 ball per tensor, inner gradient k taken at
  ``ω + Δ_1 + ... + Δ_{k-1}``, Adam on ``-Δ_K``, a fresh mini-batch per inner step;
  ``chain(frank_wolfe(5, δ, 2, scope="leaf", cumulative=True), adam(η))``. Their code hands
  Adam ``-Δ_K / δ``; both sides here hand it ``-Δ_K``, which Adam's normalization makes the
  same step up to its ε.

First, in float64, both sides take one outer step from the same weights: the relative
differences of the direction ``Δ_K``, of the step ``ω_1 - ω_0`` and of ``ω_1`` (largest over
the parameter tensors) must be below 1e-6, or nothing is timed. Then every contender (fw-optax
and each torch set-up) runs a few outer steps in turn, round after round, so that a busy spell
of a shared machine slows them alike; the median time per outer step is reported, with the
ratio of the fastest torch set-up to the fastest fw-optax contender and to each of them.
``--impls`` names the ``models.RNNModel`` implementations to time, each its own contender
``fw-optax[IMPL]`` (by default ``auto``, on the CPU named plain ``fw-optax``).

On the CPU (``--device cpu``, the default) the torch set-ups are threads 1 and 2 with flush-denormal
on and off, and fw-optax runs as the runner trains: on one device, and, where the host has several
CPU devices (one per core, ``benchmarks.training.parallel``), with each batch split over them. Each
torch set-up runs in a process of its own whose settings are made before torch starts a thread
(flush-denormal is per thread; OpenMP's workers copy it when they start), as a torch user sets them
at start-up. On a loaded machine a torch set-up with more threads than free cores can take seconds
per step; one whose median is over 3x the fastest torch set-up's is dropped after the round that
shows it. ``torch.compile`` is only timed with ``--compile``: dynamo leaves ``nn.RNN`` in eager mode
unless ``torch._dynamo.config.allow_rnn`` is set, and then it unrolls all T steps (on the 2-core
CPU: minutes of compilation at T=100, see ``results/cpu/compare_torch_compile.txt``).

On a GPU (``--device cuda``; JAX must run on the GPU, which torch then shares) fw-optax runs on
that one device, and torch, each set-up again in a process of its own, in two set-ups a
speed-minded PyTorch user would pick:

* ``torch cuda eager``: model and optimizer on the GPU, the RNN run by cuDNN;
* ``torch cuda graph``: the whole outer step (the K forward and backward passes, the
  Frank-Wolfe combination, the optimizer's update) captured once as a ``torch.cuda.CUDAGraph``
  after a warm-up on a side stream, then replayed, each step's batches first copied into the
  graph's input tensors. A set-up that cannot be captured is reported in one line, not timed.

``--precision`` sets both sides' float32 matmuls: ``float32`` (torch's
``backends.cuda.matmul.allow_tf32`` and ``backends.cudnn.allow_tf32`` off; JAX traced under
``jax.default_matmul_precision("float32")``) or ``tf32`` (both flags on; JAX under
``"tensorfloat32"``). A CPU has no TF32. ``--out`` also writes the printed lines to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import multiprocessing
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

import fw_optax
from benchmarks.machine import describe, machine
from benchmarks.perf.timing import load_average, tee
from benchmarks.registry import tasks
from benchmarks.registry.configs import get_config
from benchmarks.training import parallel
from benchmarks.training.step import Objective, TrainState, make_step

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError(
        "benchmarks.perf.compare_torch needs PyTorch: pip install -e '.[compare]'"
    ) from None

Params = Any
TOLERANCE = 1e-6
TARGET = 2.0
INPUTS = 2
# --precision -> the jax.default_matmul_precision the fw-optax steps are traced under.
JAX_PRECISION = {"float32": "float32", "tf32": "tensorfloat32"}

# (Flax parameter path, torch parameter name, transpose): Flax computes x @ W, torch W x.
_LAYOUT: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    (("rnn_0", "cell", "i", "kernel"), "rnn.weight_ih_l0", True),
    (("rnn_0", "cell", "i", "bias"), "rnn.bias_ih_l0", False),
    (("rnn_0", "cell", "h", "kernel"), "rnn.weight_hh_l0", True),
    (("head", "kernel"), "head.weight", True),
    (("head", "bias"), "head.bias", False),
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One Frank-Wolfe optimizer, as both sides build it.

    Attributes:
      name: ``"alg1"`` or ``"authors"`` (``benchmarks.registry.configs`` flavours).
      K: inner steps.
      delta: the radius δ.
      eta: the outer learning rate η.
      scope: ``"global"`` (one ball) or ``"leaf"`` (one ball per tensor).
      cumulative: inner gradient k at ``ω + Σ_{j<k} Δ_j`` instead of ``ω + Δ_{k-1}``.
      outer: ``"sgd"`` or ``"adam"``.
      fresh_batches: one mini-batch per inner step (K per outer step) instead of one.
    """

    name: str
    K: int
    delta: float
    eta: float
    scope: str
    cumulative: bool
    outer: str
    fresh_batches: bool

    @property
    def batches_per_step(self) -> int:
        return self.K if self.fresh_batches else 1


def variants(K: int = 5) -> dict[str, Variant]:
    """The two compared optimizers, δ and η read from the adding task's cpu table."""
    alg1 = get_config("adding", "fw", "cpu", flavour="alg1")
    authors = get_config("adding", "fw", "cpu", flavour="authors")
    return {
        "alg1": Variant("alg1", K, alg1.delta, alg1.lr, "global", False, "sgd", False),
        "authors": Variant("authors", K, authors.delta, authors.lr, "leaf", True, "adam", True),
    }


@dataclasses.dataclass(frozen=True)
class Problem:
    """The benchmark's size: sequence length T, batch B, hidden H; its model, loss and
    batches are the adding task's (``benchmarks.registry.tasks.adding_problem``)."""

    length: int
    batch: int
    hidden: int

    def task(self, impl: str = "auto") -> tasks.Problem:
        """The adding task at this size, the recurrence run by ``impl`` (which
        ``models.RNNModel`` checks)."""
        return tasks.adding_problem(
            length=self.length, batch_size=self.batch, hidden=self.hidden, impl=impl
        )


# --------------------------------------------------------------------------- data and weights


def make_batches(problem: Problem, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` adding-task batches as host arrays ``x [count, B, T, 2]``, ``y [count, B, 1]``."""
    keys = jax.random.split(jax.random.key(seed), count)
    x, y = jax.vmap(problem.task().make_batch)(keys)
    return np.array(x), np.array(y)


def init_params(problem: Problem, seed: int = 0) -> Params:
    """Flax's initial weights (float32), the starting point of both sides."""
    return problem.task().init(seed)


def _flax_leaves(params: Params) -> dict[tuple[str, ...], np.ndarray]:
    flat = {
        tuple(k.key for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    expected = {path for path, _, _ in _LAYOUT}
    if set(flat) != expected:
        raise ValueError(
            f"models.RNNModel's parameters changed: got {sorted(flat)}, expected {sorted(expected)}"
        )
    return flat


# --------------------------------------------------------------------------- the fw-optax side


def jax_tx(variant: Variant) -> optax.GradientTransformation:
    fw = fw_optax.frank_wolfe(
        variant.K, variant.delta, 2, scope=variant.scope, cumulative=variant.cumulative
    )
    outer = optax.sgd(variant.eta) if variant.outer == "sgd" else optax.adam(variant.eta)
    return optax.chain(fw, outer)


@functools.cache
def jax_step(
    problem: Problem,
    variant: Variant,
    mesh: jax.sharding.Mesh | None = None,
    impl: str = "auto",
) -> Callable[..., tuple[Params, Any, jax.Array]]:
    """``step(params, opt_state, x, y) -> (params, opt_state, loss)``, jitted.

    One outer step of the project's training loop (``benchmarks.training.step.make_step``) on the
    step's stacked mini-batches ``x [batches_per_step, B, T, 2]``, ``y [batches_per_step, B, 1]``,
    with the model's recurrence run by ``impl``. With a ``mesh``, each mini-batch is split over
    its devices and every gradient averaged over them (``benchmarks.training.parallel``), as the
    runner trains on CPU.
    """
    loss = problem.task(impl).loss
    if mesh is not None:
        loss = parallel.data_parallel_loss(loss, mesh.axis_names[0])
    objective = Objective(
        loss=lambda params, state, batch, key: (loss(params, batch), state),
        evaluate=lambda params, state, test: {},
        test=None,
    )
    step = make_step(objective, jax_tx(variant), batches_per_step=variant.batches_per_step)
    rng = jax.random.key_data(jax.random.key(0))

    def run(params, opt_state, x, y):
        state = TrainState(jnp.zeros([], jnp.int32), params, {}, opt_state, rng)
        state, value = step(state, (0, (x, y)))
        return state.params, state.opt_state, value

    if mesh is None:
        return jax.jit(run)
    split, same = parallel.batch_spec(1, mesh.axis_names[0]), jax.sharding.PartitionSpec()
    return parallel.data_parallel(
        run, mesh, in_specs=(same, same, split, split), out_specs=(same, same, same)
    )


def jax_direction(problem: Problem, variant: Variant, params: Params, x, y) -> Params:
    """``-Δ_K``: what ``frank_wolfe`` hands the outer optimizer on these batches."""
    loss = problem.task().loss  # built outside the trace: it draws the task's data
    fw = fw_optax.frank_wolfe(
        variant.K, variant.delta, 2, scope=variant.scope, cumulative=variant.cumulative
    )

    @jax.jit
    def direction(params, x, y):
        grads = jax.grad(loss)(params, (x[0], y[0]))
        if variant.fresh_batches:
            extra = {"value_fn": loss, "inner_batches": (x[1:], y[1:])}
        else:
            extra = {"value_fn": lambda w: loss(w, (x[0], y[0]))}
        return fw.update(grads, fw.init(params), params, **extra)[0]

    return direction(params, x, y)


# --------------------------------------------------------------------------- the torch side


class TorchRNN(torch.nn.Module):
    """``torch.nn.RNN`` (tanh, batch first) and a linear head on ``h_T``.

    Flax's ``SimpleCell`` has one bias, torch's RNN two (``b_ih + b_hh``): ``b_hh`` stays zero
    and frozen, so both sides train the same five tensors.
    """

    def __init__(self, hidden_size: int, output_size: int = 1) -> None:
        super().__init__()
        self.rnn = torch.nn.RNN(INPUTS, hidden_size, nonlinearity="tanh", batch_first=True)
        self.head = torch.nn.Linear(hidden_size, output_size)
        with torch.no_grad():
            self.rnn.bias_hh_l0.zero_()
        self.rnn.bias_hh_l0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_last = self.rnn(x)
        return self.head(h_last[-1])


def torch_model(params: Params, dtype: torch.dtype = torch.float32) -> TorchRNN:
    """A ``TorchRNN`` holding Flax's weights ``params``."""
    leaves = _flax_leaves(params)
    hidden = leaves[("rnn_0", "cell", "h", "kernel")].shape[0]
    model = TorchRNN(hidden).to(dtype)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for path, name, transpose in _LAYOUT:
            value = leaves[path].T if transpose else leaves[path]
            named[name].copy_(torch.from_numpy(np.array(value)))
    return model


def flax_layout(tensors: dict[str, torch.Tensor]) -> dict[tuple[str, ...], np.ndarray]:
    """Torch tensors by parameter name, as arrays in Flax's layout keyed by Flax's path."""
    out = {}
    for path, name, transpose in _LAYOUT:
        value = tensors[name].detach().cpu().numpy()
        out[path] = value.T if transpose else value
    return out


class FrankWolfe:
    r"""Algorithm 1 in PyTorch: K linear-minimization steps, then ``outer`` steps on ``-Δ_K``.

    With ``s_k = argmin_{‖s‖_2 ≤ δ} <s, ∇F(ω + p_{k-1})>`` (one ball over all parameters, or
    one per tensor), ``Δ_k = (1 - 1/k) Δ_{k-1} + s_k / k`` and the perturbation ``p_{k-1}``
    equal to ``Δ_{k-1}`` (Algorithm 1) or ``Δ_1 + ... + Δ_{k-1}`` (``cumulative``, the
    authors' code), the weights are restored to ω and ``-Δ_K`` is handed to ``outer`` as the
    gradient: ``SGD(lr=η)`` gives ``ω + η Δ_K``.

    Args:
      outer: the optimizer that applies ``-Δ_K``; its parameters are the ones perturbed.
      K: inner steps.
      delta: the radius δ.
      scope: ``"global"`` or ``"leaf"``.
      cumulative: where the inner gradients are taken (above).
    """

    def __init__(
        self,
        outer: torch.optim.Optimizer,
        *,
        K: int,
        delta: float,
        scope: str = "global",
        cumulative: bool = False,
    ) -> None:
        if K < 1 or not delta >= 0 or scope not in ("global", "leaf"):
            raise ValueError(f"bad Frank-Wolfe settings: K={K}, delta={delta}, scope={scope!r}")
        self.outer = outer
        self.params = [p for group in outer.param_groups for p in group["params"]]
        self.K, self.delta, self.scope, self.cumulative = K, delta, scope, cumulative
        self._origin = [torch.empty_like(p) for p in self.params]

    def _lmo(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """``-δ g / ‖g‖_2``, the norm over all tensors or per tensor; ``g = 0`` gives 0."""
        tiny = torch.finfo(grads[0].dtype).tiny
        norms = torch._foreach_norm(grads)
        if self.scope == "global":
            total = torch.linalg.vector_norm(torch.stack(norms)).clamp_min(tiny)
            return torch._foreach_mul(grads, -self.delta / total)
        scales = [-self.delta / n.clamp_min(tiny) for n in norms]
        return torch._foreach_mul(grads, scales)

    @torch.no_grad()
    def step(self, closure: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """One outer step. ``closure(k)`` zeroes the gradients, computes the loss of inner step
        ``k`` (0 .. K-1; step 0 at ω) at the current weights, calls ``backward`` and returns the
        loss. Returns the loss at ω."""
        torch._foreach_copy_(self._origin, self.params)
        avg: list[torch.Tensor] = []
        for k in range(1, self.K + 1):
            with torch.enable_grad():
                value = closure(k - 1)
            s = self._lmo([p.grad for p in self.params])
            if k == 1:
                loss, avg = value.detach(), s
            else:
                torch._foreach_lerp_(avg, s, 1.0 / k)
            if k < self.K:
                if self.cumulative:
                    torch._foreach_add_(self.params, avg)
                else:
                    torch._foreach_copy_(self.params, torch._foreach_add(self._origin, avg))
        torch._foreach_copy_(self.params, self._origin)
        for p, a in zip(self.params, avg, strict=True):
            p.grad = a.neg_()
        self.outer.step()
        return loss


def torch_optimizer(model: TorchRNN, variant: Variant, *, capturable: bool = False) -> FrankWolfe:
    """``variant``'s optimizer over ``model``'s trained parameters.

    ``capturable``: Adam keeps its step count on the GPU and computes its bias corrections
    there, so that a CUDA graph can replay the update (the default reads the count on the host;
    torch's Adam refuses to be captured without it). SGD has no host state to move.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if variant.outer == "sgd":
        outer = torch.optim.SGD(params, lr=variant.eta, foreach=True)
    else:
        outer = torch.optim.Adam(params, lr=variant.eta, foreach=True, capturable=capturable)
    # fw_optax holds δ in float32; round it the same way so the float64 check compares like with
    # like.
    delta = float(np.float32(variant.delta))
    return FrankWolfe(
        outer, K=variant.K, delta=delta, scope=variant.scope, cumulative=variant.cumulative
    )


def torch_step(
    model: Callable[[torch.Tensor], torch.Tensor],
    optimizer: FrankWolfe,
    x: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """One outer step on the stacked mini-batches (inner step k reads ``x[k]`` if present)."""

    def closure(k: int) -> torch.Tensor:
        b = min(k, x.shape[0] - 1)
        optimizer.outer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x[b]), y[b])
        loss.backward()
        return loss

    return optimizer.step(closure)


WARMUP = 3  # eager steps before a capture, as in PyTorch's whole-network capture example


def cuda_graph(step: Callable[[], Any], warmup: int = WARMUP) -> Callable[[], None]:
    """``step()`` captured once as a ``torch.cuda.CUDAGraph``; returns the graph's replay.

    PyTorch's recipe (CUDA semantics, "whole-network capture"): ``warmup`` eager calls on a
    side stream create what the capture must find in place (the optimizer's state, the cuDNN
    and cuBLAS workspaces of that stream), then one call on the same stream is recorded.
    Recording runs nothing; one replay follows, synchronized, so that a graph that cannot run
    fails here too. When this returns, ``step`` has run ``warmup + 1`` times. A replay reads
    and writes the same memory as the capture: the caller refills inputs in place, and the
    step updates parameters in place and must not synchronize with the host (no ``.item()``,
    no branch on a tensor's value).
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        step()
    graph.replay()
    torch.cuda.synchronize()
    return graph.replay


def static_steps(
    step: Callable[[torch.Tensor, torch.Tensor], Any],
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    capture: Callable[[Callable[[], Any]], Callable[[], Any]] = cuda_graph,
) -> Callable[[int], None]:
    """Outer steps replayed from one capture: returns ``run(i)``, one step on ``xs[i], ys[i]``.

    ``step(x, y)`` is captured (``capture``, by default ``cuda_graph``) on static inputs shaped
    like ``xs[0], ys[0]`` (a step's stacked mini-batches, all ``batches_per_step`` of them);
    ``run(i)`` copies ``xs[i], ys[i]`` into them and replays. ``capture=lambda f: f`` runs the
    same path eagerly, which is how the CPU tests check it.
    """
    static_x, static_y = xs[0].clone(), ys[0].clone()
    replay = capture(lambda: step(static_x, static_y))

    def run(i: int) -> None:
        static_x.copy_(xs[i])
        static_y.copy_(ys[i])
        replay()

    return run


# --------------------------------------------------------------------------- the float64 check


@dataclasses.dataclass(frozen=True)
class Check:
    """Relative differences (largest over tensors) of the two sides after one outer step."""

    variant: str
    direction: float
    step: float
    params: float
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return max(self.direction, self.step, self.params) < self.tolerance

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"{self.variant:8s} rel. diff  Δ_K {self.direction:.1e}  ω1-ω0 {self.step:.1e}  "
            f"ω1 {self.params:.1e}  (< {self.tolerance:.0e}: {verdict})"
        )


def _relative(a: dict, b: dict) -> float:
    """``max over tensors ‖a - b‖ / ‖b‖``."""
    tiny = np.finfo(np.float64).tiny
    return max(float(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(b[k]), tiny)) for k in b)


def check_first_step(
    problem: Problem,
    variant: Variant,
    *,
    seed: int = 0,
    torch_delta: float | None = None,
    perturb: Callable[[TorchRNN], None] | None = None,
) -> Check:
    """Both sides take one float64 outer step from the same weights on the same batches.

    ``torch_delta`` and ``perturb`` (applied to the torch model before the step) exist to show
    that the check can fail.
    """
    x, y = make_batches(problem, variant.batches_per_step, seed)
    params0 = init_params(problem, seed)
    with jax.enable_x64(True):
        p0 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params0)
        x64, y64 = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
        tx = jax_tx(variant)
        p1, _, _ = jax_step(problem, variant)(p0, tx.init(p0), x64, y64)
        direction = jax_direction(problem, variant, p0, x64, y64)
        jax_p0, jax_p1 = _flax_leaves(p0), _flax_leaves(p1)
        jax_dir = _flax_leaves(direction)

    model = torch_model(params0, torch.float64)
    if perturb is not None:
        with torch.no_grad():
            perturb(model)
    optimizer = torch_optimizer(model, variant)
    if torch_delta is not None:
        optimizer.delta = torch_delta
    torch_step(model, optimizer, torch.from_numpy(x).double(), torch.from_numpy(y).double())
    named = dict(model.named_parameters())
    torch_p1 = flax_layout(named)
    torch_dir = flax_layout({name: p.grad for name, p in named.items() if p.grad is not None})
    torch_step_ = {k: torch_p1[k] - jax_p0[k] for k in jax_p0}
    jax_step_ = {k: jax_p1[k] - jax_p0[k] for k in jax_p0}
    return Check(
        variant.name,
        direction=_relative(torch_dir, jax_dir),
        step=_relative(torch_step_, jax_step_),
        params=_relative(torch_p1, jax_p1),
    )


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class TorchSetup:
    """Process-wide torch settings for one contender.

    Attributes:
      threads: intra-op threads (CPU; ``None``: torch's default).
      flush_denormal: flush denormal numbers to zero (CPU).
      compile: ``torch.compile`` the model (CPU).
      device: ``"cpu"`` or ``"cuda"``.
      graph: replay the whole outer step from a CUDA graph (``static_steps``).
      precision: ``"float32"`` or ``"tf32"``, torch's TF32 switches on a GPU.
    """

    threads: int | None = None
    flush_denormal: bool = False
    compile: bool = False
    device: str = "cpu"
    graph: bool = False
    precision: str = "float32"

    @property
    def name(self) -> str:
        if self.device == "cuda":
            return "torch cuda graph" if self.graph else "torch cuda eager"
        flush = "on" if self.flush_denormal else "off"
        return f"torch {self.threads} thr, flush {flush}" + (", compile" if self.compile else "")

    def apply(self) -> None:
        """Call before any torch work: flush-denormal is per thread, and OpenMP's worker
        threads copy the setting of the thread that starts them.

        Raises:
          RuntimeError: a CUDA set-up where torch sees no CUDA device.
        """
        if self.device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError(
                    f"torch {torch.__version__} sees no CUDA device "
                    f"(torch.version.cuda: {torch.version.cuda})"
                )
            tf32 = self.precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            return
        torch.set_flush_denormal(self.flush_denormal)
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def describe(self) -> str:
        """Where this set-up runs, for the report's header."""
        if self.device == "cuda":
            tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            return (
                f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, "
                f"cuDNN {torch.backends.cudnn.version()}, TF32 matmul/cuDNN {tf32[0]}/{tf32[1]}"
            )
        return f"CPU, {torch.get_num_threads()} threads"


def torch_setups(
    threads: Sequence[int] = (1, 2),
    compile_: bool = False,
    *,
    device: str = "cpu",
    precision: str = "float32",
) -> list[TorchSetup]:
    """On the CPU, every thread count with flush-denormal off and on; ``compile_`` adds a
    compiled model with the most threads and flush-denormal on. On a GPU, eager and
    CUDA-graph replay."""
    if device == "cuda":
        return [TorchSetup(device="cuda", graph=g, precision=precision) for g in (False, True)]
    setups = [TorchSetup(t, f) for t, f in itertools.product(sorted(threads), (False, True))]
    if compile_:
        setups.append(TorchSetup(max(threads), True, compile=True))
    return setups


Runner = Callable[[int], None]  # runner(steps): that many outer steps, finished on return


def jax_runner(
    problem: Problem,
    variant: Variant,
    params0: Params,
    x,
    y,
    mesh=None,
    *,
    impl: str = "auto",
    precision: str = "float32",
) -> Runner:
    """Outer steps of fw-optax from ``params0`` on the pooled batches, one jitted call each
    (split over ``mesh``'s devices when given), the recurrence run by ``impl``.

    Every call runs under ``jax.default_matmul_precision`` for ``precision``: the setting is
    read when the step is traced, at its first call, and is part of jit's cache key.
    """
    step = jax_step(problem, variant, mesh, impl)
    state = [params0, jax_tx(variant).init(params0)]
    per_step = variant.batches_per_step

    def put(a):
        return jnp.asarray(a) if mesh is None else parallel.shard_batch(a, mesh, batch_axis=1)

    if mesh is not None:
        state = list(jax.device_put(state, jax.sharding.NamedSharding(mesh, P())))
    xs = [put(x[i : i + per_step]) for i in range(0, len(x), per_step)]
    ys = [put(y[i : i + per_step]) for i in range(0, len(y), per_step)]
    order = itertools.cycle(range(len(xs)))

    def run(steps: int) -> None:
        with jax.default_matmul_precision(JAX_PRECISION[precision]):
            for _ in range(steps):
                i = next(order)
                state[0], state[1], loss = step(state[0], state[1], xs[i], ys[i])
        jax.block_until_ready(loss)

    return run


def torch_runner(setup: TorchSetup, variant: Variant, params0: Params, x, y) -> Runner:
    """Outer steps of the torch side from ``params0`` (Flax layout) on the pooled batches,
    each step's batches already on ``setup.device``. A CUDA-graph set-up captures here."""
    device = torch.device(setup.device)
    model = torch_model(params0).to(device)
    optimizer = torch_optimizer(model, variant, capturable=setup.graph)
    forward = model
    if setup.compile:
        import torch._dynamo as dynamo

        # Without this dynamo leaves nn.RNN to eager mode; with it, it unrolls the T steps.
        dynamo.config.allow_rnn = True
        forward = torch.compile(model)
    per_step = variant.batches_per_step
    xs = [torch.from_numpy(x[i : i + per_step]).to(device) for i in range(0, len(x), per_step)]
    ys = [torch.from_numpy(y[i : i + per_step]).to(device) for i in range(0, len(y), per_step)]
    order = itertools.cycle(range(len(xs)))
    if setup.graph:
        step = static_steps(functools.partial(torch_step, forward, optimizer), xs, ys)
    else:

        def step(i: int) -> None:
            torch_step(forward, optimizer, xs[i], ys[i])

    def run(steps: int) -> None:
        for _ in range(steps):
            step(next(order))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def _serve(conn: Connection, setup: TorchSetup) -> None:
    """The loop of a torch set-up's process: ``("describe", None)`` says where it runs,
    ``("load", args)`` builds a ``torch_runner``, ``("run", steps)`` runs it, ``None`` ends.
    Each answer is ``(error message or None, value)``; a set-up that cannot be applied (no
    CUDA device) answers every command with that error."""
    # This process computes nothing with JAX: should anything start a JAX backend here, it must
    # not be the GPU's, whose memory JAX would claim.
    jax.config.update("jax_platforms", "cpu")
    try:
        setup.apply()
        failure = None
    except Exception as error:
        failure = error
    run = None
    while (message := conn.recv()) is not None:
        command, payload = message
        try:
            if failure is not None:
                raise failure
            value = None
            if command == "describe":
                value = setup.describe()
            elif command == "load":
                run = torch_runner(setup, *payload)
            else:
                run(payload)
            conn.send((None, value))
        except Exception as error:  # handed to the parent, which raises it
            conn.send((f"{type(error).__name__}: {error}", None))


class TorchProcess:
    """One torch set-up in a process of its own, stepped from this one.

    Its settings are applied before torch starts a thread (``TorchSetup.apply``), as a torch
    user sets them at start-up, and its thread pool never shares a process with XLA's.
    """

    def __init__(self, setup: TorchSetup) -> None:
        context = multiprocessing.get_context("spawn")  # JAX's threads do not survive fork.
        self.setup = setup
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, setup), daemon=True)
        self._process.start()
        child.close()

    def _call(self, command: str, payload: Any = None) -> Any:
        try:
            self._conn.send((command, payload))
            error, value = self._conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"{self.setup.name}: its process died") from None
        if error is not None:
            raise RuntimeError(f"{self.setup.name}: {error}")
        return value

    def describe(self) -> str:
        """Where the set-up runs (``TorchSetup.describe``, asked in its process)."""
        return self._call("describe")

    def load(self, variant: Variant, params0: Params, x: np.ndarray, y: np.ndarray) -> None:
        """Starts a new run from ``params0`` on the batch pool ``x, y``."""
        self._call("load", (variant, jax.tree.map(np.asarray, params0), x, y))

    def __call__(self, steps: int) -> None:
        self._call("run", steps)

    def stop(self) -> None:
        """Asks the process to end (``join`` waits for it)."""
        try:
            self._conn.send(None)
        except OSError:
            pass  # already gone

    def join(self, timeout: float = 30.0) -> None:
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
        self._conn.close()


@contextlib.contextmanager
def torch_processes(setups: Sequence[TorchSetup]) -> Iterator[list[TorchProcess]]:
    """A running ``TorchProcess`` per set-up, all stopped on exit."""
    processes = [TorchProcess(setup) for setup in setups]
    try:
        yield processes
    finally:
        for process in processes:
            process.stop()
        for process in processes:
            process.join()


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per outer step of each contender: every round's time and the first (compiling)
    step; ``dropped[name]`` is the round after which a set-up stopped being timed, and
    ``failed[name]`` why a set-up could not be loaded (a CUDA graph that cannot be captured)."""

    times: dict[str, list[float]]
    warmup: dict[str, float]
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    steps: int = 1
    failed: dict[str, str] = dataclasses.field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])


def time_interleaved(
    runners: dict[str, Runner],
    *,
    repeats: int,
    steps: int,
    prune: float = 3.0,
    keep: Sequence[str] = (),
    pause: float = 0.05,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Round-robin timing: each round runs ``steps`` outer steps of every contender in turn.

    The order rotates from round to round, and a short pause lets the previous contender's
    idle worker threads stop spinning before the clock starts. A contender not in ``keep``
    whose median so far is over ``prune`` times the best such median is timed no more: on a
    loaded machine torch with more threads than free cores can take seconds per step, and it
    cannot be the fastest.
    """
    warmup = {}
    for name, run in runners.items():
        t0 = clock()
        run(1)
        warmup[name] = clock() - t0
    times: dict[str, list[float]] = {name: [] for name in runners}
    dropped: dict[str, int] = {}
    for r in range(repeats):
        names = [name for name in runners if name not in dropped]
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if pause:
                time.sleep(pause)
            t0 = clock()
            runners[name](steps)
            times[name].append((clock() - t0) / steps)
        medians = {n: statistics.median(times[n]) for n in names if n not in keep}
        if medians:
            best = min(medians.values())
            dropped |= {n: r + 1 for n, m in medians.items() if m > prune * best}
    return Timing(times, warmup, dropped, steps)


JAX_NAME = "fw-optax"


def jax_name(impl: str, impls: Sequence[str], device: str = "cpu") -> str:
    """The contender timing ``impl``: ``fw-optax[IMPL]``, or plain ``fw-optax`` for the CPU's
    default (``auto`` alone), the name earlier CPU results carry."""
    if device == "cpu" and list(impls) == ["auto"]:
        return JAX_NAME
    return f"{JAX_NAME}[{impl}]"


def benchmark(
    problem: Problem,
    variant: Variant,
    workers: Sequence[TorchProcess],
    *,
    repeats: int,
    steps: int,
    seed: int = 0,
    impls: Sequence[str] = ("auto",),
    device: str = "cpu",
    precision: str = "float32",
) -> Timing:
    """Times fw-optax (one contender per ``impls`` entry) and every torch set-up on the same
    weights and batches.

    On the CPU each fw-optax contender also runs split over the host's CPU devices, and a torch
    set-up far slower than the fastest is dropped (``time_interleaved``); on a GPU every
    contender is timed every round. A CUDA-graph set-up that fails to load is left out, with
    the reason in ``Timing.failed``.
    """
    params0 = init_params(problem, seed)
    x, y = make_batches(problem, max(steps, 2) * variant.batches_per_step, seed + 1)
    mesh = parallel.training_mesh(None, problem.batch) if device == "cpu" else None
    runners: dict[str, Runner] = {}
    for impl in impls:
        name = jax_name(impl, impls, device)
        options = {"impl": impl, "precision": precision}
        runners[name] = jax_runner(problem, variant, params0, x, y, **options)
        if mesh is not None:
            runners[f"{name} {mesh.size} devices"] = jax_runner(
                problem, variant, params0, x, y, mesh, **options
            )
    jax_names = tuple(runners)
    failed = {}
    for worker in workers:
        try:
            worker.load(variant, params0, x, y)
        except RuntimeError as error:
            if not worker.setup.graph:
                raise
            failed[worker.setup.name] = str(error).splitlines()[0]  # CUDA errors add advice
            continue
        runners[worker.setup.name] = worker
    keep = tuple(runners) if device == "cuda" else jax_names
    timing = time_interleaved(runners, repeats=repeats, steps=steps, keep=keep)
    return dataclasses.replace(timing, failed=failed)


def report(
    problem: Problem,
    variant: Variant,
    timing: Timing,
    print_fn: Callable[[str], None] = print,
) -> float:
    """Prints one table; returns the fastest torch set-up's time / the fastest fw-optax
    contender's time (and prints that ratio for every fw-optax contender)."""
    jax_names = [n for n in timing.times if n.startswith(JAX_NAME)]
    jax_best = min(jax_names, key=timing.median)
    jax_time = timing.median(jax_best)
    torch_names = [n for n in timing.times if n not in jax_names]
    fastest = min(torch_names, key=timing.median)
    print_fn(
        f"\n{variant.name}, T={problem.length}: ms per outer step (K={variant.K}), median of "
        f"{len(timing.times[jax_best])} rounds of {timing.steps} steps [min-max]; first step "
        "(compile) in s"
    )
    for name, t in timing.times.items():
        note = ""
        if name in timing.dropped:
            note = f"  (dropped after round {timing.dropped[name]}: over 3x the fastest torch)"
        print_fn(
            f"  {name:30s} {timing.median(name) * 1e3:8.1f}  [{min(t) * 1e3:.1f}-"
            f"{max(t) * 1e3:.1f}]  first {timing.warmup[name]:.1f}{note}"
        )
    for name, reason in timing.failed.items():
        print_fn(f"  {name:30s} not timed, it failed to load: {reason}")
    if len(jax_names) > 1:
        for name in jax_names:
            print_fn(
                f"  fastest torch ({fastest}) / {name} = "
                f"{timing.median(fastest) / timing.median(name):.2f}x"
            )
    ratio = timing.median(fastest) / jax_time
    verdict = "met" if ratio >= TARGET else "NOT met"
    print_fn(
        f"  fastest torch ({fastest}) / fastest fw-optax ({jax_best}) = {ratio:.2f}x  "
        f"(target >= {TARGET}: {verdict})"
    )
    return ratio


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.repeats, args.steps = [10], 1, 1
    if args.variants is None:
        args.variants = ["alg1", "authors"]
    args.impls = list(dict.fromkeys(args.impls))
    _check_sizes(args, parser)
    _check_setups(args, parser)
    return args


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _problem_arguments(parser.add_argument_group("what is compared"))
    _timing_arguments(parser.add_argument_group("timing"))
    _setup_arguments(parser.add_argument_group("where and how both sides run"))
    return parser


def _problem_arguments(group: argparse._ArgumentGroup) -> None:
    """The sizes, optimizers and K, defaults from the adding task's cpu table."""
    config = get_config("adding", "fw", "cpu", flavour="alg1")
    group.add_argument("--lengths", type=int, nargs="+", default=[100, 400], help="T values")
    group.add_argument("--variants", nargs="+", choices=["alg1", "authors"], default=None)
    group.add_argument("--K", type=int, default=5, help="inner Frank-Wolfe steps")
    group.add_argument("--hidden", type=int, default=config.hidden)
    group.add_argument("--batch", type=int, default=config.batch_size)
    group.add_argument("--check-length", type=int, default=None, help="T of the float64 check")


def _timing_arguments(group: argparse._ArgumentGroup) -> None:
    """Rounds, steps per round, the smoke run and the output file."""
    group.add_argument("--repeats", type=int, default=7, help="timing rounds")
    group.add_argument(
        "--steps",
        type=int,
        default=None,
        help="outer steps per contender per round (default 300 // T, at least 1)",
    )
    group.add_argument("--quick", action="store_true", help="smoke run: T=10, one round")
    group.add_argument(
        "--out", type=pathlib.Path, default=None, help="also write the printed lines to this file"
    )


def _setup_arguments(group: argparse._ArgumentGroup) -> None:
    """The device, the fw-optax implementations, the precision and the torch set-ups."""
    group.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where both sides run; cuda needs JAX on a GPU and a CUDA build of torch",
    )
    group.add_argument(
        "--impls",
        nargs="+",
        default=["auto"],
        metavar="IMPL",
        help="models.RNNModel implementations timed on the fw-optax side, each a contender",
    )
    group.add_argument(
        "--precision",
        choices=sorted(JAX_PRECISION),
        default="float32",
        help="float32 matmuls as float32 or as TF32 (cuda only), on both sides",
    )
    group.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to try (cpu)"
    )
    group.add_argument(
        "--compile", action="store_true", help="also time torch.compile (cpu; compiles for minutes)"
    )


def _check_sizes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Counts at least 1, sequence lengths at least 2."""
    for name in ("K", "hidden", "batch", "repeats", "steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.threads) < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if min(args.lengths + [args.check_length or 2]) < 2:
        parser.error(f"sequence lengths must be >= 2 (the adding task), got {args.lengths}")


def _check_setups(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Implementations ``models.RNNModel`` knows, and a precision and set-ups the device has."""
    for impl in args.impls:
        try:
            Problem(2, args.batch, args.hidden).task(impl)  # RNNModel checks the name
        except ValueError as error:
            parser.error(f"--impls: {error}")
    if args.device == "cpu" and args.precision == "tf32":
        parser.error("--precision tf32 needs --device cuda: a CPU has no TF32")
    if args.device == "cuda" and args.compile:
        parser.error("--compile is a CPU set-up; on cuda the torch step is a CUDA graph")


def main(argv: list[str] | None = None, print_fn: Callable[[str], None] | None = None) -> dict:
    """Checks, then times; returns ``{"checks": [...], "ratios": {(variant, T, B, H): ratio}}``.

    Raises:
      SystemExit: ``--device cuda`` while JAX's default backend is not a GPU, or the float64
        check failed.
    """
    args = parse_args(argv)
    if args.device == "cpu":
        parallel.start_cpu_devices(None)  # fw-optax as the runner trains: one device per core
    elif (backend := jax.default_backend()) != "gpu":
        raise SystemExit(
            f"--device cuda times fw-optax on a GPU, but JAX's default backend is {backend!r} "
            f"({jax.devices()[0].device_kind}): install a CUDA build of jax, or run --device cpu"
        )
    with tee(print_fn or functools.partial(print, flush=True), args.out) as print_fn:
        return _compare(args, argv, print_fn)


def _compare(
    args: argparse.Namespace, argv: list[str] | None, print_fn: Callable[[str], None]
) -> dict:
    """The run ``main`` starts: the header, the float64 check, then a table per T and variant."""
    chosen = [variants(args.K)[name] for name in args.variants]
    setups = torch_setups(args.threads, args.compile, device=args.device, precision=args.precision)
    print_fn(f"python -m benchmarks.perf.compare_torch {' '.join(argv or sys.argv[1:])}")
    with torch_processes(setups) as workers:
        _print_header(args, chosen, workers, print_fn)
        checks = _float64_checks(args, chosen, print_fn)
        _print_torch_note(args, print_fn)
        ratios = {}
        for length in args.lengths:
            for variant in chosen:
                key = (variant.name, length, args.batch, args.hidden)
                ratios[key] = _time_and_report(args, length, variant, workers, print_fn)
    return {"checks": checks, "ratios": ratios}


def _print_header(
    args: argparse.Namespace,
    chosen: Sequence[Variant],
    workers: Sequence[TorchProcess],
    print_fn: Callable[[str], None],
) -> None:
    """The machine, both sides' versions and devices, the model and the optimizers."""
    where = f"torch on {workers[0].describe()}; " if args.device == "cuda" else ""
    print_fn(f"Machine: {describe(machine())}; torch {torch.__version__}; {where}{load_average()}")
    print_fn(
        f"vanilla RNN hidden {args.hidden}, batch {args.batch}, K={args.K}, "
        f"precision {args.precision}; "
        + "; ".join(f"{v.name}: δ={v.delta}, η={v.eta}" for v in chosen)
    )
    if args.device == "cpu" and jax.default_backend() != "cpu":
        print_fn(
            f"Note: JAX's default backend is {jax.default_backend()}: fw-optax runs there, "
            "torch on the CPU (--device cuda puts both on the GPU)."
        )


def _float64_checks(
    args: argparse.Namespace, chosen: Sequence[Variant], print_fn: Callable[[str], None]
) -> list[Check]:
    """One outer step of each optimizer on both sides in float64; exits if they disagree.

    Raises:
      SystemExit: the two sides disagree.
    """
    check_problem = Problem(args.check_length or min(args.lengths), args.batch, args.hidden)
    print_fn(f"float64 check, one outer step at T={check_problem.length}:")
    checks = [check_first_step(check_problem, v) for v in chosen]
    for check in checks:
        print_fn("  " + check.line())
    if not all(check.ok for check in checks):
        print_fn("The two sides disagree: not timing them.")
        raise SystemExit(1)
    return checks


def _print_torch_note(args: argparse.Namespace, print_fn: Callable[[str], None]) -> None:
    """What the torch set-ups are on a GPU, or why torch.compile is not timed."""
    if args.device == "cuda":
        print_fn(
            "torch on the GPU: eager (cuDNN nn.RNN), and the whole outer step captured once "
            f"as a CUDA graph after {WARMUP} warm-up steps, then replayed."
        )
    elif not args.compile:
        print_fn(
            "torch.compile not timed (--compile does): dynamo leaves nn.RNN in eager mode "
            "unless torch._dynamo.config.allow_rnn, and with it unrolls all T steps."
        )


def _time_and_report(
    args: argparse.Namespace,
    length: int,
    variant: Variant,
    workers: Sequence[TorchProcess],
    print_fn: Callable[[str], None],
) -> float:
    """One table: every contender timed at T = ``length``; the ratio ``report`` returns."""
    problem = Problem(length, args.batch, args.hidden)
    timing = benchmark(
        problem,
        variant,
        workers,
        repeats=args.repeats,
        steps=args.steps or max(1, 300 // length),
        impls=args.impls,
        device=args.device,
        precision=args.precision,
    )
    ratio = report(problem, variant, timing, print_fn)
    print_fn(f"  ({load_average()})")
    return ratio


if __name__ == "__main__":
    main()
