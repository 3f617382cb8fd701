"""The hyper-parameter tables: every (task, method, preset) setting lives here and only here.

Two presets:

* ``paper``: the authors' settings as read from their run scripts (``/work/shared/REFERENCE.md``):
  hidden sizes, batch sizes, learning rates, δ = lr for their Frank-Wolfe flavour, step
  schedules and epochs. Where a script does not state a value, the table says which value we
  chose (``CHOSEN`` below lists them).
* ``cpu``: a reduced budget that finishes on a 2-core CPU. Same models and learning rates,
  fewer epochs or steps, and a subset of MNIST:

  ===========  ====================================================================
  task         cpu budget per run
  ===========  ====================================================================
  adding       2000 outer steps (T=100, 200), 1000 (T=400); eval on 1000 test samples
  MNIST        first 20000 train / 2000 test images, batch 64 for every method, 4 epochs
  HAR-2        full data (7415 / 2996 windows), 5 epochs
  ===========  ====================================================================

Two Frank-Wolfe flavours for every FW row (``flavour``):

* ``alg1``: Algorithm 1 as written. One mini-batch per outer step (every inner gradient on
  it), perturbation at ``ω + Δ_{k-1}``, one global L2 ball of radius δ, outer step
  ``ω ← ω + η Δ_K`` (``chain(frank_wolfe(K, δ), sgd(η))``).
* ``authors``: the authors' released code. A fresh mini-batch per inner step (K per outer
  step), cumulative perturbation point, one L2 ball per tensor, Adam outer step with
  learning rate η = lr and δ = lr, one schedule decaying both.

They agree in their data and perturbation only for K = 1 (the outer step still differs);
for K >= 3 they differ in all three.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

TASKS: tuple[str, ...] = ("adding", "pixel_mnist", "permuted_mnist", "har2", "noisy_har2")
PRESETS: tuple[str, ...] = ("cpu", "paper")
FLAVOURS: tuple[str, ...] = ("alg1", "authors")
STEP_RULES: tuple[str, ...] = ("average", "open_loop")

METHODS: Mapping[str, str] = {
    "sgd": "vanilla tanh RNN, plain SGD",
    "sgd_clip": "vanilla tanh RNN, SGD with gradients clipped to global norm `clip`",
    "adam": "vanilla tanh RNN, Adam (the authors' baseline script)",
    "tbptt": "vanilla tanh RNN, truncated BPTT (chunks of `chunk_length`, one update each), Adam",
    "lstm_adam": "LSTM, Adam",
    "fw": "vanilla tanh RNN, Frank-Wolfe (K inner steps)",
    "fw_bn": "vanilla tanh RNN with batch norm on the last hidden state, Frank-Wolfe",
    "tbptt_fw": "vanilla tanh RNN, truncated BPTT, one chunk per inner Frank-Wolfe step",
    "lstm_fw": "LSTM, Frank-Wolfe",
    "indrnn": "deep IndRNN (6 x 128, batch norm, dropout 0.1), Adam with weight decay",
    "indrnn_fw": "deep IndRNN, gradients clamped to ±10, Frank-Wolfe",
}
FW_METHODS = frozenset({"fw", "fw_bn", "tbptt_fw", "lstm_fw", "indrnn_fw"})
TBPTT_METHODS = frozenset({"tbptt", "tbptt_fw"})

_MNIST = ("sgd", "sgd_clip", "adam", "tbptt", "fw", "tbptt_fw", "indrnn", "indrnn_fw")
TASK_METHODS: Mapping[str, tuple[str, ...]] = {
    "adding": ("sgd", "sgd_clip", "adam", "lstm_adam", "fw", "lstm_fw"),
    "pixel_mnist": _MNIST,
    "permuted_mnist": _MNIST,
    "har2": tuple(METHODS),
    "noisy_har2": tuple(METHODS),
}
"""Which methods fit which task (the rows of the paper's figures and tables, plus Adam)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything one run needs; built by :func:`get_config` from the tables below.

    Budget: ``steps`` outer steps for generated data (adding), else ``epochs`` passes over the
    training set (an FW outer step of the ``authors`` flavour eats K mini-batches, so it has
    K times fewer outer steps per epoch). ``eval_every`` is in outer steps (adding) and
    ``evals_per_epoch`` sets it for datasets: an epoch is then ``evals_per_epoch`` intervals
    of ``floor(steps_per_epoch / evals_per_epoch)`` outer steps, so a run may see up to
    ``evals_per_epoch`` outer steps per epoch fewer than a full pass (the summaries record
    the epochs actually run).
    """

    task: str
    method: str
    preset: str
    seed: int = 0
    # model
    cell: str = "simple"
    hidden: int = 128
    depth: int = 1
    batch_norm: bool = False
    layer_batch_norm: bool = False
    dropout: float = 0.0
    indrnn_gamma: float = 2.0
    unroll: int | None = None  # None: the models' own per-backend default (models.default_unroll)
    # optimizer
    optimizer: str = "adam"
    lr: float = 1e-3
    clip: float | None = None
    grad_clamp: float | None = None
    weight_decay: float = 0.0
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_factor: float = 1.0
    # Frank-Wolfe
    flavour: str | None = None
    K: int = 1
    delta: float | None = None
    eta: float | None = None
    p: float = 2.0
    gap_tol: float | None = None  # adaptive K: stop once the FW gap is below gap_tol * gap_1
    step_rule: str = "average"  # "average" (1/k, the paper) or "open_loop" (2/(k+1))
    # truncated BPTT
    chunk_length: int | None = None
    # data and budget
    batch_size: int = 128
    length: int | None = None
    steps: int | None = None
    eval_every: int | None = None
    epochs: int | None = None
    evals_per_epoch: int = 1
    train_size: int | None = None
    test_size: int | None = None
    eval_batch_size: int = 1000

    @property
    def is_fw(self) -> bool:
        return self.method in FW_METHODS

    @property
    def fresh_batches(self) -> bool:
        """The authors' flavour draws a fresh mini-batch per inner step (not under TBPTT)."""
        return self.flavour == "authors" and self.method != "tbptt_fw" and self.K > 1

    @property
    def batches_per_step(self) -> int:
        return self.K if self.fresh_batches else 1

    @property
    def run_name(self) -> str:
        """File stem of the run: method, K and flavour for FW rows (and the adaptive-K
        tolerance and step rule when set), preset and seed."""
        fw = f"_K{self.K}_{self.flavour}" if self.is_fw else ""
        if self.is_fw and self.gap_tol is not None:
            fw += f"_gaptol{self.gap_tol:g}"
        if self.is_fw and self.step_rule != "average":
            fw += f"_{self.step_rule}"
        return f"{self.method}{fw}_{self.preset}_seed{self.seed}"

    @property
    def task_dir(self) -> str:
        """Folder of the task's results; the adding task has one per sequence length."""
        return f"adding_T{self.length}" if self.task == "adding" else self.task


# The base settings of each task and preset. HAR and MNIST follow the authors' scripts.
_ADDING_BASE = {"hidden": 128, "batch_size": 50, "eval_every": 100, "eval_batch_size": 1000}
ADDING_CPU_STEPS: Mapping[int, int] = {100: 2000, 200: 2000}
"""cpu outer steps of the adding task per length T; longer sequences get 1000."""
_MNIST_BASE = {"hidden": 128, "eval_batch_size": 1000}
_HAR_BASE = {"hidden": 80, "batch_size": 128, "chunk_length": 16, "eval_batch_size": 1000}

BASE: Mapping[tuple[str, str], Mapping[str, Any]] = {
    ("adding", "cpu"): {**_ADDING_BASE, "length": 100, "steps": 2000, "test_size": 1000},
    ("adding", "paper"): {**_ADDING_BASE, "length": 750, "steps": 20000, "test_size": 2000},
    **{
        (task, "cpu"): {
            **_MNIST_BASE,
            "batch_size": 64,
            "chunk_length": 196,
            "epochs": 4,
            "evals_per_epoch": 4,
            "train_size": 20000,
            "test_size": 2000,
        }
        for task in ("pixel_mnist", "permuted_mnist")
    },
    **{
        (task, "paper"): {
            **_MNIST_BASE,
            "batch_size": 512,
            "chunk_length": 196,
            "epochs": 200,
            "lr_decay_epochs": (100,),
            "lr_decay_factor": 0.5,
        }
        for task in ("pixel_mnist", "permuted_mnist")
    },
    **{
        (task, "cpu"): {**_HAR_BASE, "epochs": 5, "evals_per_epoch": 2}
        for task in ("har2", "noisy_har2")
    },
    **{
        (task, "paper"): {
            **_HAR_BASE,
            "epochs": 300,
            "lr_decay_epochs": (100, 200),
            "lr_decay_factor": 0.1,
        }
        for task in ("har2", "noisy_har2")
    },
}

_INDRNN = {"cell": "indrnn", "depth": 6, "hidden": 128, "layer_batch_norm": True, "dropout": 0.1}
_SGD_LR = {
    "adding": 0.01,
    "pixel_mnist": 0.01,
    "permuted_mnist": 0.01,
    "har2": 0.1,
    "noisy_har2": 0.1,
}


def _method_table(task: str) -> dict[str, dict[str, Any]]:
    """Per-method settings of a task that both presets share (the authors' where stated)."""
    sgd = {"optimizer": "sgd", "lr": _SGD_LR[task]}
    table: dict[str, dict[str, Any]] = {
        "sgd": sgd,
        "sgd_clip": {**sgd, "clip": 1.0},
        "adam": {"optimizer": "adam", "lr": 1e-3},
        "tbptt": {"optimizer": "adam", "lr": 1e-3},
        "lstm_adam": {"cell": "lstm", "optimizer": "adam", "lr": 1e-3},
        "fw": {},
        "fw_bn": {"batch_norm": True},
        "tbptt_fw": {},
        "lstm_fw": {"cell": "lstm"},
        "indrnn": {**_INDRNN, "optimizer": "adam", "lr": 2e-4, "weight_decay": 1e-4},
        "indrnn_fw": {**_INDRNN, "grad_clamp": 10.0},
    }
    if task in ("pixel_mnist", "permuted_mnist"):
        table["adam"]["batch_size"] = 128 if task == "permuted_mnist" else 512
        table["indrnn"]["batch_size"] = 32
    if task in ("har2", "noisy_har2"):
        table["indrnn"]["batch_size"] = 64
    return table


# The authors' Frank-Wolfe settings: (task, method, K) -> lr (= δ = η) and batch size.
_AUTHORS_FW: Mapping[tuple[str, str, int], Mapping[str, Any]] = {
    **{
        (task, method, K): {"lr": 1e-3, "batch_size": 128}
        for task in ("har2", "noisy_har2")
        for method in FW_METHODS
        for K in (1, 5)
    },
    **{
        (task, method, 10): {"lr": 6e-4, "batch_size": 32}
        for task in ("har2", "noisy_har2")
        for method in FW_METHODS
    },
    ("pixel_mnist", "fw", 1): {"lr": 2e-4, "batch_size": 512},
    ("pixel_mnist", "fw", 5): {"lr": 2e-4, "batch_size": 64},
    ("pixel_mnist", "tbptt_fw", 1): {"lr": 2e-4, "batch_size": 64},
    ("pixel_mnist", "tbptt_fw", 5): {"lr": 2e-4, "batch_size": 64},
    ("pixel_mnist", "indrnn_fw", 1): {"lr": 6e-4, "batch_size": 64},
    ("pixel_mnist", "indrnn_fw", 5): {"lr": 6e-4, "batch_size": 64},
    ("permuted_mnist", "fw", 1): {"lr": 1e-3, "batch_size": 512},
    ("permuted_mnist", "fw", 5): {"lr": 2e-4, "batch_size": 64},
    ("permuted_mnist", "tbptt_fw", 1): {"lr": 6e-4, "batch_size": 32},
    ("permuted_mnist", "tbptt_fw", 5): {"lr": 1e-3, "batch_size": 64},
    ("permuted_mnist", "indrnn_fw", 1): {"lr": 6e-4, "batch_size": 64},
    ("permuted_mnist", "indrnn_fw", 5): {"lr": 1e-3, "batch_size": 64},
    **{("adding", method, K): {"lr": 1e-3} for method in ("fw", "lstm_fw") for K in (1, 5, 10)},
}
"""The authors' (lr, batch) per FW row; a K not listed uses the nearest listed K below it."""

# Algorithm 1 as written: one global L2 ball of radius δ, SGD outer step η (our choice; the
# poster gives no values). ω moves by η δ per outer step at most. Adding: the defaults of
# ``benchmarks.adding`` (δ = 0.1, η = 1).
_ALG1_FW: Mapping[str, Mapping[str, Any]] = {
    "adding": {"delta": 0.1, "eta": 1.0},
    "pixel_mnist": {"delta": 1.0, "eta": 0.02},
    "permuted_mnist": {"delta": 1.0, "eta": 0.02},
    "har2": {"delta": 1.0, "eta": 0.05},
    "noisy_har2": {"delta": 1.0, "eta": 0.05},
}

CPU_OVERRIDES: Mapping[str, Mapping[str, Any]] = {
    "pixel_mnist": {"batch_size": 64},
    "permuted_mnist": {"batch_size": 64},
}
"""cpu preset settings that win over the per-method tables (MNIST: 312 batches per epoch)."""

DEFAULT_K: Mapping[str, int] = {"fw": 1, "fw_bn": 1, "tbptt_fw": 1, "lstm_fw": 1, "indrnn_fw": 1}

CHOSEN: Mapping[str, str] = {
    "sgd lr": "plain SGD learning rates (0.01 adding/MNIST, 0.1 HAR): not in the authors' "
    "scripts, whose baseline is Adam (our `adam` row)",
    "tbptt optimizer": "Adam lr 1e-3, the authors' baseline optimizer; not stated for TBPTT",
    "alg1 δ, η": "δ = 0.1, η = 1 (adding, as benchmarks.adding), δ = 1 and η = 0.05 (HAR) or "
    "0.02 (MNIST): the poster gives none",
    "K of BN/TBPTT/LSTM/IndRNN + FW": "K = 1 unless --K is given; Table 2 does not state K",
    "HAR IndRNN batch": "64, as their IndRNN+FW MNIST runs; HAR not stated",
    "MNIST epochs (paper)": "200 (two 100-epoch decay periods); not stated",
    "HAR schedule (paper)": "lr x 0.1 at epochs 100 and 200, read from '× 0.1 after 100, "
    "then decays over 200'",
    "adding steps (paper)": "20000 outer steps with a fixed K; the authors switched K=1 to K=5/10 "
    "after 10k-15k batches",
    "cpu preset": "same models and learning rates as paper, batch 64 on MNIST, budgets in the "
    "module docstring",
}
"""Settings the authors' scripts do not state, and what we use instead."""

# The paper's numbers, copied from the poster (ICPR 2020, arXiv:2010.05397), Tables 1 and 2.
PAPER_TABLE1: Mapping[str, Mapping[str, tuple[float, float | None]]] = {
    "pixel_mnist": {
        "Baseline": (98.88, 4.84),
        "Ours K=1": (98.73, 3.46),
        "Ours K=5": (98.82, None),
    },
    "permuted_mnist": {
        "Baseline": (93.00, 4.92),
        "Ours K=1": (92.87, 3.68),
        "Ours K=5": (92.59, None),
    },
}
"""Test accuracy (%) and time per Table 1. The third column's header and times are cut off in
the poster text ("Our"); K=5 is the authors' other MNIST setting."""

PAPER_TABLE2: Mapping[str, tuple[float, float, float]] = {
    "SGD": (87.66, 0.17, 74.38),
    "SGD+Clipping": (93.36, 0.13, 74.38),
    "TBPTT": (93.62, 0.38, 86.20),
    "LSTM+Adam": (94.40, 0.14, 92.12),
    "Ours K=1": (93.52, 0.15, 86.04),
    "Ours K=5": (94.11, 0.14, 89.36),
    "Ours K=10": (93.65, 0.37, 89.52),
    "Ours+BN": (94.37, 0.36, 89.38),
    "TBPTT+Ours": (94.01, 0.35, 89.28),
    "LSTM+Ours": (94.95, 0.19, 92.41),
    "IndRNN": (95.73, 0.46, 91.20),
    "IndRNN+Ours": (96.55, 0.13, 92.15),
}
"""Table 2: (HAR-2 accuracy %, time, Noisy-HAR-2 accuracy %); the time unit is not stated."""

TABLE2_ROWS: Mapping[str, tuple[str, int | None]] = {
    "SGD": ("sgd", None),
    "SGD+Clipping": ("sgd_clip", None),
    "TBPTT": ("tbptt", None),
    "LSTM+Adam": ("lstm_adam", None),
    "Ours K=1": ("fw", 1),
    "Ours K=5": ("fw", 5),
    "Ours K=10": ("fw", 10),
    "Ours+BN": ("fw_bn", None),
    "TBPTT+Ours": ("tbptt_fw", None),
    "LSTM+Ours": ("lstm_fw", None),
    "IndRNN": ("indrnn", None),
    "IndRNN+Ours": ("indrnn_fw", None),
}
"""Paper row -> (method, K); ``None`` means any K (the method's default)."""

TABLE1_COLUMNS: Mapping[str, tuple[str, int | None]] = {
    "Baseline": ("adam", None),
    "Ours K=1": ("fw", 1),
    "Ours K=5": ("fw", 5),
}


def _check_choice(kind: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(choices)}")


def _authors_fw(task: str, method: str, K: int) -> Mapping[str, Any]:
    listed = sorted(k for t, m, k in _AUTHORS_FW if (t, m) == (task, method))
    if not listed:
        listed = sorted(k for t, m, k in _AUTHORS_FW if (t, m) == (task, "fw"))
        method = "fw"
    below = [k for k in listed if k <= K] or listed[:1]
    return _AUTHORS_FW[(task, method, below[-1])]


def get_config(
    task: str,
    method: str,
    preset: str,
    *,
    seed: int = 0,
    K: int | None = None,
    flavour: str | None = None,
    **overrides: Any,
) -> Config:
    """The settings of one run, read from the tables; ``overrides`` replace any field.

    Raises:
      ValueError: unknown task, method, preset or flavour; a method that does not fit the
        task; K or a flavour given for a method that is not Frank-Wolfe; a bad override.
    """
    _check_choice("task", task, TASKS)
    _check_choice("method", method, tuple(METHODS))
    _check_choice("preset", preset, PRESETS)
    if method not in TASK_METHODS[task]:
        fits = ", ".join(TASK_METHODS[task])
        raise ValueError(f"method {method!r} does not fit task {task!r}; it takes {fits}")
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; fields are {sorted(fields)}")
    values: dict[str, Any] = {**BASE[(task, preset)], **_method_table(task)[method]}
    if method in FW_METHODS:
        flavour = "authors" if flavour is None else flavour
        _check_choice("flavour", flavour, FLAVOURS)
        K = DEFAULT_K[method] if K is None else K
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"K must be an int >= 1, got {K!r}")
        if flavour == "authors":
            fw = _authors_fw(task, method, K)
            values.update(fw, optimizer="adam", delta=fw["lr"], eta=fw["lr"])
        else:
            values.update(_ALG1_FW[task], optimizer="sgd")
            values["lr"] = values["eta"]
        values.update(flavour=flavour, K=K)
    elif K is not None or flavour is not None:
        raise ValueError(f"--K and --flavour apply to Frank-Wolfe methods only, not {method!r}")
    if preset == "cpu":
        values.update(CPU_OVERRIDES.get(task, {}))
    if (task, preset) == ("adding", "cpu") and "steps" not in overrides:
        values["steps"] = ADDING_CPU_STEPS.get(overrides.get("length", values["length"]), 1000)
    values.update(overrides)
    config = Config(task=task, method=method, preset=preset, seed=seed, **values)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Raises ValueError naming the first setting that cannot run."""
    positive = ["hidden", "depth", "batch_size", "K", "evals_per_epoch", "eval_batch_size"]
    positive += [
        name
        for name in ("unroll", "length", "steps", "eval_every", "epochs", "train_size", "test_size")
        if getattr(config, name) is not None
    ]
    for name in positive:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not config.lr > 0:
        raise ValueError(f"lr must be > 0, got {config.lr}")
    if config.task == "adding":
        if config.length is None or config.length < 2 or config.steps is None:
            raise ValueError(f"the adding task needs length >= 2 and steps, got {config}")
        if config.eval_every is None or config.steps % config.eval_every:
            raise ValueError(
                f"steps ({config.steps}) must be a multiple of eval_every ({config.eval_every})"
            )
    elif config.epochs is None:
        raise ValueError(f"task {config.task!r} needs epochs")
    if config.method in TBPTT_METHODS and config.chunk_length is None:
        raise ValueError(f"method {config.method!r} needs chunk_length")
    if config.gap_tol is not None and not config.gap_tol > 0:  # also rejects NaN
        raise ValueError(f"gap_tol must be > 0 or None, got {config.gap_tol!r}")
    if config.step_rule not in STEP_RULES:
        raise ValueError(f"step_rule must be one of {STEP_RULES}, got {config.step_rule!r}")


def table_for(task: str, preset: str, *, seed: int = 0, **overrides: Any) -> list[Config]:
    """Every run of a task's reproduction under a preset (FW rows in both flavours)."""
    runs = []
    for method in TASK_METHODS[task]:
        if method in FW_METHODS:
            Ks = (1, 5, 10) if method == "fw" else (DEFAULT_K[method],)
            for K in Ks:
                for flavour in FLAVOURS:
                    runs.append(
                        get_config(
                            task, method, preset, seed=seed, K=K, flavour=flavour, **overrides
                        )
                    )
        else:
            runs.append(get_config(task, method, preset, seed=seed, **overrides))
    return runs
