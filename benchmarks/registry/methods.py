"""The methods: one registry entry per optimizer set-up that the experiments compare.

A :class:`Method` says which configuration fields it sets (model and optimizer), whether it
is a Frank-Wolfe method (then every run comes in the two flavours of
``benchmarks.registry.configs``), whether it trains by truncated BPTT, and how it builds its optax
transformation from a :class:`benchmarks.registry.config.Config`. Adding a method is one entry
in :data:`METHODS` (see ``benchmarks/README.md``); a task lists the methods that fit it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from benchmarks.registry.config import Config

if TYPE_CHECKING:
    import optax

    from benchmarks.registry.tasks import Task

# jax, optax and fw_optax are imported where an optimizer is built, so that the registry
# (names, descriptions, settings) loads without them: `python -m benchmarks.run --help`.

NONFINITE_PATIENCE = 10
"""``--on-nonfinite skip``: consecutive non-finite gradients skipped before one is applied
(``optax.apply_if_finite``'s ``max_consecutive_errors``); the run then stops on its
non-finite parameters."""

Schedule = Callable[[float], Any]
"""``schedule(value)``: the value, or a schedule of it that follows the config's decay."""


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the experiments: a model and an optimizer.

    Attributes:
      description: one line for ``--help`` and the tables.
      settings: the configuration fields this method sets (``cell``, ``optimizer``, ``lr``,
        ...), or a function of the task returning them (e.g. a task's own SGD rate).
      frank_wolfe: a Frank-Wolfe method: takes ``K``, comes in both flavours, and its
        optimizer is :func:`frank_wolfe_optimizer`.
      tbptt: trains by truncated BPTT (needs ``chunk_length``).
      table_K: the K values a task's full table (``--method all``) runs.
      build: ``build(config, schedule) -> optax transformation`` (default: SGD/Adam after
        clipping and weight decay, or the Frank-Wolfe chain for FW methods).
      tasks: tasks this method runs on besides those that list it in their ``methods``
        (a new method names its tasks here, so registering it is one entry).
    """

    description: str
    settings: Mapping[str, Any] | Callable[[Task], Mapping[str, Any]] = dataclasses.field(
        default_factory=dict
    )
    frank_wolfe: bool = False
    tbptt: bool = False
    table_K: tuple[int, ...] = (1,)
    build: Callable[[Config, Schedule], optax.GradientTransformation] | None = None
    tasks: tuple[str, ...] = ()

    def settings_for(self, task: Task) -> dict[str, Any]:
        return dict(self.settings(task) if callable(self.settings) else self.settings)

    def optimizer(
        self, config: Config, schedule: Schedule, batch_axis_name: str | None = None
    ) -> optax.GradientTransformation:
        if batch_axis_name is not None:  # fw_mode="local" (validated: a Frank-Wolfe method)
            return frank_wolfe_optimizer(config, schedule, batch_axis_name)
        build = self.build or (frank_wolfe_optimizer if self.frank_wolfe else standard_optimizer)
        return build(config, schedule)


def _not_recurrent(params: Any) -> Any:
    """Weight decay's mask: every parameter but IndRNN's recurrent weights."""
    import jax

    from models.cells import INDRNN_RECURRENT_NAME

    def keep(path, _):
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) != INDRNN_RECURRENT_NAME

    return jax.tree_util.tree_map_with_path(keep, params)


def _preprocessing(config: Config) -> list[optax.GradientTransformation]:
    """Gradient clamping, global-norm clipping and weight decay, as the config asks."""
    import optax

    parts: list[optax.GradientTransformation] = []
    if config.grad_clamp is not None:
        parts.append(optax.clip(config.grad_clamp))
    if config.clip is not None:
        parts.append(optax.clip_by_global_norm(config.clip))
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay, mask=_not_recurrent))
    return parts


def _outer(config: Config, schedule: Schedule) -> optax.GradientTransformation:
    import optax

    lr = schedule(config.lr)
    return optax.sgd(lr) if config.optimizer == "sgd" else optax.adam(lr)


def standard_optimizer(config: Config, schedule: Schedule) -> optax.GradientTransformation:
    """SGD or Adam (``config.optimizer``) at ``config.lr``, after clipping and weight decay."""
    import optax

    return optax.chain(*_preprocessing(config), _outer(config, schedule))


def frank_wolfe_optimizer(
    config: Config, schedule: Schedule, batch_axis_name: str | None = None
) -> optax.GradientTransformation:
    """``frank_wolfe`` then the outer step, in the config's flavour.

    ``alg1``: ``chain(frank_wolfe(K, δ, p), sgd(lr))``, lr being Algorithm 1's η.
    ``authors``: ``chain(frank_wolfe(K, δ, p, scope="leaf", cumulative=True), adam(lr))``,
    with δ following the same decay as the learning rate. With ``batch_axis_name`` (the
    runner's data axis when ``fw_mode="local"``) each device runs the inner steps on its own
    shard and Δ_K is averaged once (``frank_wolfe(..., local=True)``).
    """
    import optax

    import fw_optax

    authors = config.flavour == "authors"
    fw = fw_optax.frank_wolfe(
        config.K,
        schedule(config.delta) if authors else config.delta,
        config.p,
        scope="leaf" if authors else "global",
        cumulative=authors,
        gap_tol=config.gap_tol,
        step_rule=config.step_rule,
        batch_axis_name=batch_axis_name,
        local=batch_axis_name is not None,
    )
    return optax.chain(*_preprocessing(config), fw, _outer(config, schedule))


_INDRNN = {"cell": "indrnn", "depth": 6, "hidden": 128, "layer_batch_norm": True, "dropout": 0.1}


def _sgd(task: Task) -> dict[str, Any]:
    return {"optimizer": "sgd", "lr": task.sgd_lr}


METHODS: dict[str, Method] = {
    "sgd": Method("vanilla tanh RNN, plain SGD", _sgd),
    "sgd_clip": Method(
        "vanilla tanh RNN, SGD with gradients clipped to global norm `clip`",
        lambda task: {**_sgd(task), "clip": 1.0},
    ),
    "adam": Method(
        "vanilla tanh RNN, Adam (the authors' baseline script)", {"optimizer": "adam", "lr": 1e-3}
    ),
    "tbptt": Method(
        "vanilla tanh RNN, truncated BPTT (chunks of `chunk_length`, one update each), Adam",
        {"optimizer": "adam", "lr": 1e-3},
        tbptt=True,
    ),
    "lstm_adam": Method("LSTM, Adam", {"cell": "lstm", "optimizer": "adam", "lr": 1e-3}),
    "fw": Method(
        "vanilla tanh RNN, Frank-Wolfe (K inner steps)", frank_wolfe=True, table_K=(1, 5, 10)
    ),
    "fw_bn": Method(
        "vanilla tanh RNN with batch norm on the last hidden state, Frank-Wolfe",
        {"batch_norm": True},
        frank_wolfe=True,
    ),
    "tbptt_fw": Method(
        "vanilla tanh RNN, truncated BPTT, one chunk per inner Frank-Wolfe step",
        frank_wolfe=True,
        tbptt=True,
    ),
    "lstm_fw": Method("LSTM, Frank-Wolfe", {"cell": "lstm"}, frank_wolfe=True),
    "indrnn": Method(
        "deep IndRNN (6 x 128, batch norm, dropout 0.1), Adam with weight decay",
        {**_INDRNN, "optimizer": "adam", "lr": 2e-4, "weight_decay": 1e-4},
    ),
    "indrnn_fw": Method(
        "deep IndRNN, gradients clamped to ±10, Frank-Wolfe",
        {**_INDRNN, "grad_clamp": 10.0},
        frank_wolfe=True,
    ),
}
"""Every method, by the name the command line and the result files use."""


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name]


def build_optimizer(
    config: Config, updates_per_epoch: int | None, batch_axis_name: str | None = None
) -> optax.GradientTransformation:
    """The config's optimizer; learning rate (and the authors' δ) decay at
    ``lr_decay_epochs``, counted in updates; ``on_nonfinite="skip"`` wraps it in
    ``optax.apply_if_finite``. ``batch_axis_name``: the data axis of local Frank-Wolfe
    (``fw_mode="local"`` on several devices)."""
    import optax

    def schedule(value: float):
        if not config.lr_decay_epochs or updates_per_epoch is None:
            return value
        boundaries = {e * updates_per_epoch: config.lr_decay_factor for e in config.lr_decay_epochs}
        return optax.piecewise_constant_schedule(value, boundaries)

    tx = get_method(config.method).optimizer(config, schedule, batch_axis_name)
    if config.on_nonfinite == "skip":
        tx = optax.apply_if_finite(tx, NONFINITE_PATIENCE)
    return tx
