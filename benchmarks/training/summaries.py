"""A run's summary, ``<task>/<run>.json`` beside its curves: what was trained, on what, and
what came out. The runner writes it when a run ends (finished or diverged) and reads it back
to skip, extend or refuse a run; the report reads every one. Both go through this module.

Files written before a field existed read as that field's default (``status`` "finished",
no ``overrides``, one device), so every committed result stays readable.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Literal

REQUIRED = ("task", "method", "run", "config", "final", "machine", "curves")
"""The fields that make a JSON file a run summary (other JSON files are not runs)."""

_WRITTEN_WHEN_NONE = ("final", "plan", "epochs", "time_per_epoch_s")
"""Fields written even when ``None`` (a finished adding run has no epochs, a converted one no
plan); other ``None`` fields are left out of the file, as summaries always were."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSummary:
    """One run's summary.

    Attributes:
      task, title, method, run: the task (and its title), the method and the run's name.
      config: every setting of the run (``Config`` as JSON); ``overrides`` those that differ
        from the tables; ``plan`` the schedule (outer steps, evaluations, batches per step;
        ``None`` in results converted from before the runner).
      machine: what trained it (``benchmarks.machine.machine()``); ``trained_on`` the
        stretches of steps and their machines where a resumed run changed machine.
      data: the data card (source, sizes); ``metric`` the headline test metric.
      curves: the curves file's name, beside the summary.
      status: "finished", or "diverged" with ``diverged`` (where and how) and no results.
      final: the last curve record; ``best_test`` the best test metric over the records.
      steps, updates, batches, epochs, grad_evals: what the run did.
      wall_time_s, time_per_epoch_s, compile_time_s, process_time_s: what it cost (training,
        per epoch, compiling, and the whole runner call).
      devices, per_device_batch, steps_per_call, seeds_in_program: how it was placed.
      skipped_updates: updates ``optax.apply_if_finite`` skipped, where it was used.
      started_from: the folder whose checkpoint it continued (``--start-from``).
      converted_from: the file it was converted from (results older than the runner).
    """

    task: str
    title: str = ""
    method: str
    run: str
    config: dict[str, Any]
    plan: dict[str, Any] | None = None
    machine: dict[str, Any]
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    metric: str = "loss"
    curves: str
    status: Literal["finished", "diverged"] = "finished"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    final: dict[str, Any] | None
    steps: int = 0
    best_test: float | None = None
    updates: int | None = None
    batches: int | None = None
    epochs: float | None = None
    grad_evals: float | None = None
    wall_time_s: float | None = None
    time_per_epoch_s: float | None = None
    compile_time_s: float | None = None
    process_time_s: float | None = None
    devices: int = 1
    per_device_batch: int | None = None
    steps_per_call: int | None = None
    seeds_in_program: list[int] | None = None
    skipped_updates: int | None = None
    trained_on: list[dict[str, Any]] | None = None
    diverged: dict[str, Any] | None = None
    started_from: dict[str, Any] | None = None
    converted_from: Any = None

    def __post_init__(self) -> None:
        if self.status not in ("finished", "diverged"):
            raise ValueError(f"status must be 'finished' or 'diverged', got {self.status!r}")
        if (self.status == "diverged") != (self.diverged is not None):
            raise ValueError(f"a {self.status} run has diverged={self.diverged!r}")

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RunSummary:
        """The summary a file's JSON object holds; a field it does not have takes its default,
        and a field :class:`RunSummary` does not know is refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(f"run summary {record.get('run')!r} has unknown fields {unknown}")
        return cls(**record)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the file (``None`` fields left out but for those always
        written)."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in record.items() if v is not None or k in _WRITTEN_WHEN_NONE}

    def replace(self, **changes: Any) -> RunSummary:
        return dataclasses.replace(self, **changes)


def is_summary(record: Any) -> bool:
    """Whether a JSON value is a run summary (has every ``REQUIRED`` field)."""
    return isinstance(record, dict) and set(REQUIRED) <= set(record)


def read_summary(path: Path) -> RunSummary | None:
    """The summary at ``path``, or ``None`` if there is no such file or it holds no run
    summary. Raises ``json.JSONDecodeError`` for a file that is not JSON and ``ValueError``
    for a summary with unknown fields."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return RunSummary.from_json(record) if is_summary(record) else None


def write_summary(path: Path, summary: RunSummary) -> None:
    """Writes ``summary`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(summary.to_json(), indent=1))
    os.replace(part, path)
