"""Checkpoints: where and how often the loop saves its state with orbax, the save action it
calls after every evaluation, and resuming from the newest readable checkpoint.

A checkpoint holds the whole :class:`~benchmarks.training.step.TrainState` as it is (sharded
arrays included) and a JSON record: the run's ``Checkpoints.meta`` (matched on resume, so a
checkpoint of another configuration is refused), the step, the training wall time, the
stretches of steps with the machine that trained each, and the seeds that diverged.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

KEEP_CHECKPOINTS = 2
"""Checkpoints kept per run: the latest, and the one before it to fall back to."""


class CheckpointError(RuntimeError):
    """No checkpoint in the folder can be read."""


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where and how often :func:`train` saves its state with orbax.

    Attributes:
      directory: the checkpoint folder (created on the first save).
      every_s: save at an evaluation point once this many seconds passed since the last
        save (0: at every evaluation); the last step is always saved.
      every_steps: if set, save at the first evaluation point this many outer steps or more
        after the last save instead (``every_s`` is then not used). Either way a SIGKILL loses
        at most the steps since the last save, about ``every_s`` seconds or ``every_steps``
        steps (rounded up to an evaluation point).
      meta: JSON-able description of the run; resuming refuses a checkpoint whose ``meta``
        differs (another configuration wrote it). Leave the budget (total steps) out of it:
        a run asked for more steps than its checkpoint holds continues from there.
    """

    directory: Path
    every_s: float = 60.0
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    machine: dict[str, Any] | None = None
    """What trains this stretch of the run (``benchmarks.machine.machine()``; not matched on
    resume). Each checkpoint lists the stretches before it with their machines, so a run
    resumed on another machine says where each of its steps ran (``TrainResult.trained_on``)."""
    every_steps: int | None = None

    def __post_init__(self) -> None:
        if not self.every_s >= 0:
            raise ValueError(f"every_s must be >= 0 seconds, got every_s={self.every_s!r}")
        if self.every_steps is not None and (
            isinstance(self.every_steps, bool)
            or not isinstance(self.every_steps, int)
            or self.every_steps < 1
        ):
            raise ValueError(
                f"every_steps must be an int >= 1, got every_steps={self.every_steps!r}"
            )

    def due(self, steps_since: int, saved_at: float) -> bool:
        """Whether an evaluation point ``steps_since`` steps after the last save (made at
        ``time.perf_counter()`` = ``saved_at``) is due a save."""
        if self.every_steps is not None:
            return steps_since >= self.every_steps
        return time.perf_counter() - saved_at >= self.every_s


_UNMATCHED = ("step", "wall_time_s", "trained_on", "diverged")
"""What a checkpoint's meta records beyond ``Checkpoints.meta``: not matched on resume."""


def stretches(
    earlier: list[dict[str, Any]], machine: dict[str, Any] | None, start: int, step: int
) -> list[dict[str, Any]]:
    """``earlier`` and the stretch from ``start`` to ``step`` on ``machine``, merged into the
    last earlier stretch when that one ran on the same machine up to ``start``."""
    machine = json.loads(json.dumps(machine))
    if earlier and earlier[-1]["machine"] == machine and earlier[-1]["to_step"] == start:
        return [*earlier[:-1], {**earlier[-1], "to_step": step}]
    return [*earlier, {"machine": machine, "from_step": start, "to_step": step}]


def save(
    manager,
    checkpoints: Checkpoints,
    state: Any,
    step: int,
    wall: float,
    trained_on: list[dict[str, Any]],
    diverged: list[Any],
) -> None:
    """Writes ``state`` and its record at ``step``; ``diverged`` holds, per seed, ``None`` or
    the error (``Diverged``) that stopped it."""
    import orbax.checkpoint as ocp

    meta = {**checkpoints.meta, "step": step, "wall_time_s": wall, "trained_on": trained_on}
    meta["diverged"] = [None if d is None else d.as_dict() for d in diverged]
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )


def restore(manager, checkpoints: Checkpoints, state: Any) -> Resumed:
    """The newest readable checkpoint, as ``state`` is laid out (shapes, dtypes, shardings:
    a run saved on N devices restores on M), with its step, wall time, stretches and the
    seeds that diverged (``None`` where the checkpoint predates their record; stretches: one
    on a machine not recorded where the checkpoint predates them). An unreadable one is
    skipped with a warning."""
    import orbax.checkpoint as ocp

    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)),
        state,
    )
    expected = json.loads(json.dumps(checkpoints.meta))
    steps = sorted(manager.all_steps(), reverse=True)
    for step in steps:
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore(), state=ocp.args.StandardRestore(target)
                ),
            )
        except Exception as error:  # orbax/tensorstore raise many kinds; the message names it
            warnings.warn(
                f"checkpoint step {step} in {checkpoints.directory} is unreadable "
                f"({type(error).__name__}: {str(error)[:200]}); trying the one before it",
                stacklevel=4,
            )
            continue
        meta = restored["meta"]
        saved = {k: v for k, v in meta.items() if k not in _UNMATCHED}
        if saved != expected:
            raise ValueError(
                f"the checkpoint in {checkpoints.directory} was written by another "
                f"configuration ({saved}); delete it or pass another folder"
            )
        unrecorded = [{"machine": None, "from_step": 0, "to_step": step}]
        earlier = meta.get("trained_on", unrecorded)
        return Resumed(
            restored["state"], step, float(meta["wall_time_s"]), earlier, meta.get("diverged")
        )
    raise CheckpointError(
        f"no checkpoint in {checkpoints.directory} is readable (steps {steps}): delete the "
        "folder, or rerun with --restart, to start the run over"
    )


class Resumed(NamedTuple):
    """What :func:`restore` read: the state, its step and wall time, the stretches trained
    before it, and the seeds that diverged (``None`` where the checkpoint predates them)."""

    state: Any
    step: int
    wall_time_s: float
    trained_on: list[dict[str, Any]]
    diverged: list[dict[str, Any] | None] | None


class Saver:
    """The save action: after an evaluation it writes the state when ``Checkpoints.due`` says
    so, and always at the last step or before a stop. Without ``checkpoints`` it saves
    nothing, and a run still records the one stretch it trained."""

    def __init__(self, checkpoints: Checkpoints | None):
        self.checkpoints = checkpoints
        self.manager = None
        if checkpoints is not None:
            import orbax.checkpoint as ocp

            self.manager = ocp.CheckpointManager(
                checkpoints.directory.absolute(),
                options=ocp.CheckpointManagerOptions(max_to_keep=KEEP_CHECKPOINTS, create=True),
            )
        self.machine = checkpoints.machine if checkpoints is not None else None
        self.earlier: list[dict[str, Any]] = []  # stretches trained before the resumed step
        self.start = 0
        self._saved_step, self._saved_at = 0, time.perf_counter()

    @property
    def enabled(self) -> bool:
        return self.manager is not None

    def resume(self, state: Any, steps: int) -> Resumed | None:
        """The newest readable checkpoint laid out as ``state``, or ``None`` if there is none."""
        if self.manager is None or not self.manager.all_steps():
            return None
        resumed = restore(self.manager, self.checkpoints, state)
        if resumed.step > steps:
            raise ValueError(
                f"the checkpoint in {self.checkpoints.directory} is at step {resumed.step}, "
                f"beyond the {steps} steps asked for: ask for at least {resumed.step}, or "
                "start over"
            )
        self.earlier, self.start, self._saved_step = resumed.trained_on, resumed.step, resumed.step
        return resumed

    def begin(self) -> None:
        """Starts the clock of ``Checkpoints.every_s``: training starts now."""
        self._saved_at = time.perf_counter()

    def trained_on(self, step: int) -> list[dict[str, Any]]:
        """The stretches of steps up to ``step``, this one on this machine."""
        return stretches(self.earlier, self.machine, self.start, step)

    def __call__(
        self, state: Any, step: int, wall: float, diverged: list[Any], *, now: bool = False
    ) -> None:
        """Saves ``state`` at ``step`` if due, or ``now`` (the last step, a stop)."""
        if self.manager is None:
            return
        if not (now or self.checkpoints.due(step - self._saved_step, self._saved_at)):
            return
        save(self.manager, self.checkpoints, state, step, wall, self.trained_on(step), diverged)
        self._saved_step, self._saved_at = step, time.perf_counter()

    def close(self) -> None:
        """Waits for the last save to be written, so a resumed run never reads half of one."""
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()
