"""README.md's promises: the quick-start snippet runs, CI runs README's test command, the API
signature is complete, and every link leads somewhere. The snippets that moved to the
documentation (your own oracle, inject_hyperparams, shard_map) are run by tests/test_docs.py."""

import re
import tomllib

import jax
import numpy as np
from markdown.extensions.toc import slugify

from tests import ROOT

README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_quick_start_snippet_runs_and_learns():
    namespace: dict = {}
    exec(compile(_blocks("python")[0], "README.md", "exec"), namespace)
    loss = namespace["loss_fn"](namespace["params"], namespace["batch"])
    initial = namespace["loss_fn"](
        jax.tree.map(np.zeros_like, namespace["params"]), namespace["batch"]
    )
    assert float(loss) < float(initial)
    assert int(namespace["state"][0].count) == 3


def test_ci_runs_exactly_the_readme_test_command():
    commands = [b.strip() for b in _blocks("bash")]
    test_commands = [c for c in commands if "pytest" in c]
    assert len(test_commands) == 1
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_commands[0] in ci.splitlines()
    # It installs every extra: the docs are built, torch is compared, the datasets are read.
    (extras,) = re.findall(r'pip install -e "\.\[([^\]]*)\]"', test_commands[0])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(extras.split(",")) == set(pyproject["project"]["optional-dependencies"])
    assert any("python -m benchmarks.adding" in c for c in commands)


def test_the_api_signature_names_every_parameter_in_order():
    match = re.search(r"`fw_optax\.frank_wolfe\((.*?)\)`\s*returns", README, flags=re.S)
    written = [part.split("=")[0].strip() for part in match.group(1).split(",")]
    written = [name for name in written if name != "*"]
    import inspect

    import fw_optax

    assert written == list(inspect.signature(fw_optax.frank_wolfe).parameters)


def test_every_relative_link_leads_to_a_file_and_heading_of_the_repository():
    links = re.findall(r"\]\(([^)#\s]+)(#[^)\s]+)?\)", README)
    relative = [(path, anchor) for path, anchor in links if "://" not in path]
    assert any(path.startswith("docs/") for path, _ in relative)
    for path, anchor in relative:
        target = ROOT / path
        assert target.exists(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M)
            assert anchor[1:] in {slugify(h, "-") for h in headings}, path + anchor
