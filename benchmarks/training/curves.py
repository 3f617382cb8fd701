"""A run's curves: one JSON record per evaluation, one line each (JSON Lines), appended as
each is measured and read back by the loop (to resume), the runner and the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Appends ``record`` as one line of ``path``."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_records(path: Path | None) -> list[dict[str, Any]]:
    """The records of ``path`` in order; ``[]`` if there is no such file. Blank lines are
    skipped; a line that is not JSON raises ``json.JSONDecodeError``."""
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
