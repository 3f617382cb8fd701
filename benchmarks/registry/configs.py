"""One run's settings: the :class:`Config` built from the task and method registries, and
what follows from it through them (:func:`is_fw`, :func:`run_name`, :func:`task_dir`...).

A configuration is read from three places, each later one winning: the task's preset
(``benchmarks.registry.tasks.TASKS[task].presets``), the method's settings
(``benchmarks.registry.methods.METHODS``, then the task's own ``method_settings``), and for
Frank-Wolfe methods the flavour's settings; then the ``cpu`` preset's ``cpu_settings`` and
finally the caller's overrides (``--set field=value`` on the command line).

Two presets: ``paper``, the authors' settings as read from their run scripts
(``/work/shared/REFERENCE.md``; REPRODUCTION.md says which settings they do not state and
what we chose), and ``cpu``, a reduced budget that finishes on a 2-core CPU (same models and
learning rates; adding: 2000 outer steps and 1000 test samples; MNIST: the first 20000 / 2000
images, batch 64, 4 epochs; HAR-2: 5 epochs).

Two Frank-Wolfe flavours for every FW row (``flavour``):

* ``alg1``: Algorithm 1 as written. One mini-batch per outer step (every inner gradient on
  it), perturbation at ``ω + Δ_{k-1}``, one global L2 ball of radius δ, outer step
  ``ω ← ω + η Δ_K`` (``chain(frank_wolfe(K, δ), sgd(η))``, η being ``lr``).
* ``authors``: the authors' released code. A fresh mini-batch per inner step (K per outer
  step), cumulative perturbation point, one L2 ball per tensor, Adam outer step with
  learning rate η = lr and δ = lr, one schedule decaying both.

They agree in their data and perturbation only for K = 1 (the outer step still differs);
for K >= 3 they differ in all three.

A run's name (:func:`run_name`) is its method, K and flavour, every setting that
differs from the tables (except the budget and the sequence length, which names the adding
task's folder), its preset and seed. The budget (``steps``, ``epochs``) is the one thing a
run may change when it resumes: asking a finished run for more continues it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from benchmarks.registry.config import Config
from benchmarks.registry.methods import METHODS, get_method
from benchmarks.registry.tasks import TASKS, get_task

PRESETS: tuple[str, ...] = ("cpu", "paper")
FLAVOURS: tuple[str, ...] = ("alg1", "authors")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
ON_NONFINITE: tuple[str, ...] = ("stop", "skip")
FW_MODES: tuple[str, ...] = ("sync", "local")
RESUMABLE: tuple[str, ...] = ("steps", "epochs")
"""Settings a run may change when it resumes: the budget. Learning-rate decays are fixed
epochs, not fractions of the budget, so a longer run continues the same schedule."""
KEYS: tuple[str, ...] = ("task", "method", "preset", "seed", "K", "flavour")
"""Fields that pick the table rows; they have their own flags and are not overrides."""
UNNAMED: tuple[str, ...] = (*RESUMABLE, "length", "unroll", "eval_batch_size")
"""Overrides left out of the run name: the budget, the adding task's length (it names the
folder), and how a run computes rather than what (``unroll``, ``eval_batch_size``)."""


def is_fw(config: Config) -> bool:
    """Whether ``config``'s method is a Frank-Wolfe method (its :data:`METHODS` row)."""
    return get_method(config.method).frank_wolfe


def is_tbptt(config: Config) -> bool:
    """Whether ``config``'s method trains by truncated BPTT (its :data:`METHODS` row)."""
    return get_method(config.method).tbptt


def fresh_batches(config: Config) -> bool:
    """The authors' flavour draws a fresh mini-batch per inner step (not under TBPTT)."""
    return config.flavour == "authors" and not is_tbptt(config) and config.K > 1


def batches_per_step(config: Config) -> int:
    """Mini-batches one outer step eats: K for :func:`fresh_batches`, else 1."""
    return config.K if fresh_batches(config) else 1


def overrides(config: Config) -> dict[str, Any]:
    """The settings of ``config`` that differ from the tables (:func:`get_config` without
    overrides), as ``config`` holds them."""
    return {name: getattr(config, name) for name in _overridden(config)}


@functools.lru_cache(maxsize=1024)
def _overridden(config: Config) -> tuple[str, ...]:
    """The fields of :func:`overrides`: the tables' configuration is built and checked once
    per configuration, not each time a run's name is read."""
    default = get_config(
        config.task, config.method, config.preset, seed=config.seed,
        K=config.K if is_fw(config) else None, flavour=config.flavour,
    )  # fmt: skip
    return tuple(
        f.name
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    )


def run_name(config: Config) -> str:
    """File stem of the run: method, K and flavour for FW rows, every named override
    (sorted by field; ``gap_tol`` reads ``gaptol``), preset and seed."""
    fw = f"_K{config.K}_{config.flavour}" if is_fw(config) else ""
    named = sorted((k, v) for k, v in overrides(config).items() if k not in UNNAMED)
    tags = "".join(f"_{_tag(k, v)}" for k, v in named)
    return f"{config.method}{fw}{tags}_{config.preset}_seed{config.seed}"


def task_dir(config: Config) -> str:
    """Folder of the task's results (the adding task has one per sequence length)."""
    folder = get_task(config.task).folder
    return config.task if folder is None else folder(config)


def _tag(name: str, value: Any) -> str:
    if name == "step_rule":
        return str(value)
    if isinstance(value, tuple):
        value = "-".join(str(v) for v in value) or "none"
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"{name.replace('_', '')}{value}"


def _check_choice(kind: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(choices)}")


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
    """The settings of one run, read from the registries; ``overrides`` replace any field.

    Raises:
      ValueError: unknown task, method, preset or flavour; a method that does not fit the
        task; K or a flavour given for a method that is not Frank-Wolfe; an unknown field or
        a bad value (named).
    """
    _check_choice("task", task, TASKS)
    _check_choice("method", method, METHODS)
    _check_choice("preset", preset, PRESETS)
    spec, row = get_task(task), get_method(method)
    if method not in task_methods(task):
        fits = ", ".join(task_methods(task))
        raise ValueError(f"method {method!r} does not fit task {task!r}; it takes {fits}")
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; fields are {sorted(fields)}")
    keys = sorted(set(overrides) & set(KEYS))
    if keys:
        raise ValueError(f"{keys} pick the table rows: pass them as arguments, not overrides")
    values: dict[str, Any] = {
        **spec.presets[preset],
        **row.settings_for(spec),
        **spec.method_settings.get(method, {}),
    }
    if row.frank_wolfe:
        flavour = "authors" if flavour is None else flavour
        _check_choice("flavour", flavour, FLAVOURS)
        K = 1 if K is None else K
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"K must be an int >= 1, got {K!r}")
        if flavour == "authors":
            fw = spec.authors_settings(method, K)
            values.update(fw, optimizer="adam", delta=fw["lr"])
        else:
            values.update(spec.alg1, optimizer="sgd")
        values.update(flavour=flavour, K=K)
    elif K is not None or flavour is not None:
        raise ValueError(f"K and flavour apply to Frank-Wolfe methods only, not {method!r}")
    if preset == "cpu":
        values.update(spec.cpu_settings)
    values.update(overrides)
    config = Config(task=task, method=method, preset=preset, seed=seed, **values)
    validate(config)
    return config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate(config: Config) -> None:
    """Raises ValueError naming the first setting that cannot run: each value on its own,
    then what the method needs, then the task's budget."""
    _check_values(config)
    _check_method(config)
    _check_budget(config)
    if is_tbptt(config) and config.chunk_length is None:
        raise ValueError(f"method {config.method!r} needs chunk_length")


def _check_values(config: Config) -> None:
    """Each setting on its own: its type, its range, one of its choices."""
    for f in dataclasses.fields(config):
        _check_type(f.name, getattr(config, f.name))
    positive = ["hidden", "depth", "batch_size", "K", "evals_per_epoch", "eval_batch_size"]
    positive += ["unroll", "length", "steps", "eval_every", "epochs", "train_size", "test_size"]
    positive += ["chunk_length", "k1_steps"]
    for name in positive:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {name}={value!r}")
    if config.seed < 0:
        raise ValueError(f"seed must be >= 0, got seed={config.seed!r}")
    for name in ("lr", "delta", "clip", "grad_clamp", "lr_decay_factor", "indrnn_gamma", "gap_tol"):
        value = getattr(config, name)
        if value is not None and not (value > 0 and math.isfinite(value)):  # rejects NaN
            raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")
    if not (0 <= config.weight_decay < math.inf):
        raise ValueError(f"weight_decay must be >= 0, got weight_decay={config.weight_decay!r}")
    if not 0 <= config.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got dropout={config.dropout!r}")
    if not config.p >= 1:
        raise ValueError(f"p must be >= 1 (or inf), got p={config.p!r}")
    if any(e < 1 for e in config.lr_decay_epochs):
        raise ValueError(f"lr_decay_epochs must be >= 1, got {config.lr_decay_epochs!r}")
    from models import CELL_NAMES  # here: the models import flax, a --help does not need it

    _check_choice("cell", config.cell, CELL_NAMES)
    _check_choice("optimizer", config.optimizer, OPTIMIZERS)
    from fw_optax._frank_wolfe import STEP_RULES  # here: fw_optax imports jax

    _check_choice("step_rule", config.step_rule, STEP_RULES)
    _check_choice("on_nonfinite", config.on_nonfinite, ON_NONFINITE)
    _check_choice("fw_mode", config.fw_mode, FW_MODES)


def _check_method(config: Config) -> None:
    """Settings that only some methods take: local FW, the K = 1 warm-up, delta."""
    if config.fw_mode == "local" and not (is_fw(config) and not is_tbptt(config)):
        raise ValueError(
            f"fw_mode='local' needs a Frank-Wolfe method without truncated BPTT, not "
            f"{config.method!r}"
        )
    if config.k1_steps is not None:
        if not is_fw(config) or is_tbptt(config) or config.K == 1:
            raise ValueError(
                f"k1_steps switches Frank-Wolfe from K=1 to K={config.K}: it needs an FW "
                f"method without TBPTT and K > 1, not {config.method!r} with K={config.K}"
            )
        if "steps" not in get_task(config.task).presets[config.preset]:
            raise ValueError(
                f"k1_steps counts outer steps of a task with a budget in steps (adding); "
                f"task {config.task!r} counts epochs, got k1_steps={config.k1_steps}"
            )
        if config.steps is None or not 0 < config.k1_steps < config.steps:
            raise ValueError(
                f"k1_steps must be in 1..steps-1 (steps={config.steps}), got {config.k1_steps}"
            )
        if config.k1_steps % config.eval_every:
            raise ValueError(
                f"k1_steps ({config.k1_steps}) must be a multiple of eval_every "
                f"({config.eval_every})"
            )
    if config.fw_mode == "local" and config.gap_tol is not None:
        raise ValueError("fw_mode='local' stops every device at its own k: drop gap_tol")
    if is_fw(config) and config.delta is None:
        raise ValueError(f"method {config.method!r} needs delta")


def _check_budget(config: Config) -> None:
    """The budget the task counts in: outer steps and a length (adding), or epochs."""
    budget = get_task(config.task).presets[config.preset]
    if "steps" in budget:
        if config.length is None or config.length < 2 or config.steps is None:
            raise ValueError(
                f"task {config.task!r} needs length >= 2 and steps, got length={config.length}"
                f", steps={config.steps}"
            )
        if config.eval_every is None or config.steps % config.eval_every:
            raise ValueError(
                f"steps ({config.steps}) must be a multiple of eval_every ({config.eval_every})"
            )
    elif config.epochs is None:
        raise ValueError(f"task {config.task!r} needs epochs")


_HINTS = typing.get_type_hints(Config)


def _check_type(name: str, value: Any) -> None:
    kind = _HINTS[name]
    options = (
        typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType)
        else (kind,)
    )
    for option in options:
        if option is type(None) and value is None:
            return
        if option is int and _is_int(value):
            return
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if option in (bool, str) and isinstance(value, option):
            return
        if typing.get_origin(option) is tuple and isinstance(value, tuple):
            if all(_is_int(v) for v in value):
                return
    raise ValueError(f"{name} must be {_type_name(kind)}, got {name}={value!r}")


def _type_name(kind: Any) -> str:
    return str(kind).replace("typing.", "").replace("<class '", "").replace("'>", "")


def as_json(value: Any) -> Any:
    """``value`` as it reads back from a JSON file (tuples as lists)."""
    return json.loads(json.dumps(value))


def recorded_config(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration as a run summary recorded it (JSON), with every :class:`Config` field
    the summary predates at its default: the run trained as the default says."""
    full = dict(recorded)
    for field in dataclasses.fields(Config):
        if field.name not in full and field.default is not dataclasses.MISSING:
            full[field.name] = as_json(field.default)
    return full


def field_default(name: str) -> Any:
    """The default of :class:`Config`'s field ``name``."""
    (field,) = [f for f in dataclasses.fields(Config) if f.name == name]
    return field.default


def settable_fields() -> list[tuple[str, str]]:
    """``(field, type)`` of every :class:`Config` field ``--set`` may change (not the keys
    that name a run's row: task, method, preset, seed, K, flavour)."""
    return [(f.name, _type_name(_HINTS[f.name])) for f in dataclasses.fields(Config)
            if f.name not in KEYS]  # fmt: skip


def parse_setting(text: str) -> tuple[str, Any]:
    """``"field=value"`` -> ``(field, value)``, the value read as the field's type.

    ``none`` is None (where the field allows it), booleans are ``true``/``false``, tuples of
    ints are comma-separated (``lr_decay_epochs=100,200``; empty for none), ``inf`` is a float.

    Raises:
      ValueError: not ``field=value``, an unknown field, a row key (``K``, ``seed``...), or
        a value that does not read as the field's type; the message names it.
    """
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or not name:
        raise ValueError(f"--set takes field=value, got {text!r}")
    if name in KEYS:
        flag = "--K" if name == "K" else f"--{name}"
        raise ValueError(f"{name} picks the table rows: use {flag}, not --set {text}")
    if name not in _HINTS:
        fields = sorted(set(_HINTS) - set(KEYS))
        raise ValueError(f"--set {text}: unknown field {name!r}; fields are {', '.join(fields)}")
    kind = _HINTS[name]
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    options = typing.get_args(kind) if union else (kind,)
    if raw.lower() == "none" and type(None) in options:
        return name, None
    for option in options:
        try:
            if option is bool:
                if raw.lower() in ("true", "false"):
                    return name, raw.lower() == "true"
            elif option is int:
                return name, int(raw)
            elif option is float:
                return name, float(raw)
            elif option is str:
                return name, raw
            elif typing.get_origin(option) is tuple:
                return name, tuple(int(v) for v in raw.split(",") if v.strip())
        except ValueError:
            continue
    raise ValueError(f"--set {text}: {name} must be {_type_name(kind)}, got {raw!r}")


def parse_settings(texts: Iterable[str]) -> dict[str, Any]:
    """Every ``--set field=value``; a field given twice is an error."""
    settings: dict[str, Any] = {}
    for text in texts:
        name, value = parse_setting(text)
        if name in settings:
            raise ValueError(f"--set gives {name} twice")
        settings[name] = value
    return settings


def table_for(task: str, preset: str, *, seed: int = 0, **overrides: Any) -> list[Config]:
    """Every run of a task's reproduction under a preset (FW rows in both flavours, at each
    of the method's ``table_K``)."""
    runs = []
    for method in task_methods(task):
        row = get_method(method)
        if not row.frank_wolfe:
            runs.append(get_config(task, method, preset, seed=seed, **overrides))
            continue
        for K in row.table_K:
            for flavour in FLAVOURS:
                runs.append(
                    get_config(task, method, preset, seed=seed, K=K, flavour=flavour, **overrides)
                )
    return runs


def task_methods(task: str) -> tuple[str, ...]:
    """The methods that fit ``task``: those it lists, then those that name it."""
    listed = get_task(task).methods
    return (*listed, *(m for m, row in METHODS.items() if task in row.tasks and m not in listed))
