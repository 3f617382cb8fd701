"""The one timer of the measurement scripts: variants timed round-robin (one call of each in
turn, round after round), so that a slow spell of a shared machine hits every variant alike
instead of whichever happened to run during it; and what their reports share, the load
average and the printed lines also written to ``--out`` (:func:`tee`)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import statistics
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, NamedTuple

import jax


class Timing(NamedTuple):
    """One timed call: wall-clock seconds, and CPU seconds of every thread of the process."""

    wall: float
    cpu: float


def timed(fn: Callable[[], Any]) -> Timing:
    """Times one call of ``fn``, waiting for the arrays it returns."""
    cpu, wall = time.process_time(), time.perf_counter()
    jax.block_until_ready(fn())
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def rounds(
    fns: Mapping[Hashable, Callable[[], Any]], repeats: int, *, warm_up: bool = False
) -> dict[Hashable, list[Timing]]:
    """Each zero-argument function timed once per round, ``repeats`` rounds; with
    ``warm_up``, each is first called once untimed (compilation)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got repeats={repeats}")
    if warm_up:
        for fn in fns.values():
            jax.block_until_ready(fn())
    times: dict[Hashable, list[Timing]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(timed(fn))
    return times


def median_wall(times: Mapping[Hashable, list[Timing]]) -> dict[Hashable, float]:
    """The median wall-clock seconds of each variant's rounds."""
    return {key: statistics.median(t.wall for t in ts) for key, ts in times.items()}


def load_average() -> str:
    """The machine's 1-, 5- and 15-minute load averages, as the scripts print them."""
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load average unknown"


@contextlib.contextmanager
def tee(
    print_fn: Callable[[str], None], path: str | os.PathLike | None
) -> Iterator[Callable[[str], None]]:
    """``print_fn``, which also writes each line to ``path`` when one is given (as it goes,
    so a long run's file holds what it has measured so far)."""
    if path is None:
        yield print_fn
        return
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:

        def both(line: str) -> None:
            print_fn(line)
            out.write(line + "\n")
            out.flush()

        yield both
