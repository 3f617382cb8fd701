"""The test suite, a package so that its folders may hold files of the same name and its
helpers import by one name (``tests.worker``). ``ROOT`` is the repository root, where the
tests read the repository's files and run their subprocesses."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
