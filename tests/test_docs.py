"""The documentation site (``mkdocs.yml``, ``docs/``): it builds with warnings as errors, the
Python blocks of every page run as a reader would run them, nothing written on a page is lost
on its way to HTML, and what the pages show of the repository's files (the report, its
figures, the measurements, the changelog, the README's sections) is read from those files.

A page's ```` ```python ```` blocks run in order in one namespace. A block may be skipped only
with a reason, written on the line before it: ``<!-- docs-test: skip (needs a GPU) -->``.
"""

import collections
import functools
import html
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import markdown
import numpy as np
import pytest

import fw_optax

from tests import ROOT
from tests.worker import run_worker

DOCS = ROOT / "docs"
PAGES = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
# Pages whose blocks run in a fresh process, as a reader's script would (the mesh page sets
# the number of CPU devices, which JAX reads once, when it starts), and what each reports.
IN_A_FRESH_PROCESS = {
    "howto/mesh.md": '{"devices": len(jax.devices()), "start": float(loss_fn(jnp.zeros(3), batch)),'
    ' "end": float(loss_fn(params, batch)), "count": int(opt_state[0].count)}',
}
SKIP = re.compile(r"<!-- docs-test: skip(?: \((?P<reason>[^)]*)\))? -->")
FENCE = re.compile(r"^```python\n(?P<code>.*?)^```$", re.M | re.S)
# Section titles that mkdocstrings renders in other words ("Parameters:", an example's box).
DOCSTRING_TITLES = {"Args", "Returns", "Raises", "Examples", "Attributes", "References"}


def _expanded(page: str) -> str:
    """The page's markdown with every ``--8<--`` include replaced by what it includes, by the
    same extension the build uses."""
    md = markdown.Markdown(
        extensions=["pymdownx.snippets"],
        extension_configs={"pymdownx.snippets": {"base_path": [str(ROOT)], "check_paths": True}},
    )
    lines = (DOCS / page).read_text().splitlines()
    return "\n".join(md.preprocessors["snippet"].run(lines)) + "\n"


def python_blocks(text: str) -> list[tuple[str, str | None]]:
    """``(code, reason)`` for every ```` ```python ```` block of ``text``: ``reason`` is why it
    is skipped, or ``None``. A skip marker without a reason is an error, and so is an
    indented block (inside an admonition or a list), which this reader would not see."""
    if re.search(r"^[ \t]+```python", text, flags=re.M):
        raise ValueError("a ```python block must start at the beginning of its line")
    blocks = []
    for match in FENCE.finditer(text):
        line_before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = SKIP.search(line_before)
        if marker and not (marker["reason"] or "").strip():
            raise ValueError(f"a skipped block needs a reason: {marker[0]!r}")
        blocks.append((match["code"], marker["reason"] if marker else None))
    return blocks


PAGES_WITH_CODE = [page for page in PAGES if python_blocks(_expanded(page))]


@functools.cache
def run_page(page: str) -> dict:
    """Runs the page's blocks in order in one namespace, here; returns the namespace."""
    namespace: dict = {"__name__": "docs_page"}
    for i, (code, reason) in enumerate(python_blocks(_expanded(page))):
        if reason is None:
            exec(compile(code, f"docs/{page}, block {i + 1}", "exec"), namespace)
    return namespace


@functools.cache
def run_page_in_a_fresh_process(page: str) -> dict:
    """Runs the page's blocks in a new Python process, then its ``IN_A_FRESH_PROCESS``
    expression there; returns that expression's value (through JSON)."""
    code = "\n".join(c for c, reason in python_blocks(_expanded(page)) if reason is None)
    report = IN_A_FRESH_PROCESS[page]
    return run_worker(f"{code}\nimport json\nprint('RESULT ' + json.dumps({report}))", {})


# ------------------------------------------------------------------------------- the build
@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},  # Material's banner, not a warning
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    return out


def _html(site: Path, page: str) -> str:
    """The built HTML of ``docs/<page>`` (``use_directory_urls``: ``a/b.md`` -> ``a/b/``)."""
    stem = page.removesuffix(".md")
    if stem == "index" or stem.endswith("/index"):
        path = site / stem.removesuffix("index") / "index.html"
    else:
        path = site / stem / "index.html"
    return path.read_text()


def _text(page_html: str) -> str:
    """The visible text of a built page's article, an image's text included."""
    article = page_html[page_html.index("<article") : page_html.index("</article>")]
    article = re.sub(r'<img [^>]*alt="([^"]*)"[^>]*>', r" \1 ", article)
    return html.unescape(re.sub(r"<[^>]+>", " ", article))


def _words(text: str) -> collections.Counter:
    return collections.Counter(re.findall(r"[^\W_]+", text))


def test_the_site_builds_every_page_with_warnings_as_errors(site):
    for page in PAGES:
        assert "<article" in _html(site, page), page


@pytest.mark.parametrize("page", PAGES)
def test_no_word_of_a_page_is_lost_on_its_way_to_html(site, page):
    # Markdown that reads as raw HTML (``<g, s>``) or as a stray emphasis swallows text
    # silently; every word of the source, includes expanded, must reach the built page.
    source = _expanded(page)
    source = re.sub(r"<!--.*?-->", " ", source, flags=re.S)
    source = re.sub(r"</?(sub|sup)>", " ", source)
    source = re.sub(r"\]\([^)]*\)", "]", source)  # a link's target is not shown
    source = re.sub(r"^([ \t]*```)\w+", r"\1", source, flags=re.M)  # nor a fence's language
    source = re.sub(r"^\?\?\? \w+", "", source, flags=re.M)  # nor an admonition's kind
    lost = _words(source) - _words(_text(_html(site, page)))
    assert not lost, dict(lost)


# --------------------------------------------------------------------- the pages' code runs
def test_a_skipped_block_must_say_why():
    text = "<!-- docs-test: skip (needs a GPU) -->\n```python\nx = 1\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [("x = 1\n", "needs a GPU"), ("y = 2\n", None)]
    with pytest.raises(ValueError, match="needs a reason"):
        python_blocks("<!-- docs-test: skip -->\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match="beginning of its line"):
        python_blocks('??? note "hidden"\n\n    ```python\n    x = 1\n    ```\n')


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_every_python_block_of_the_page_runs(page):
    if page in IN_A_FRESH_PROCESS:
        assert run_page_in_a_fresh_process(page)
    else:
        assert run_page(page)


def test_getting_started_quick_start_learns():
    ns = run_page("getting-started.md")
    zeros = jax.tree.map(np.zeros_like, ns["params"])
    assert float(ns["loss_fn"](ns["params"], ns["batch"])) < float(
        ns["loss_fn"](zeros, ns["batch"])
    )
    assert int(ns["state"][0].count) == 3


def test_algorithm_page_comparison_tells_algorithm_1_from_the_cumulative_point():
    # The page checks frank_wolfe against Algorithm 1 written out; that check is sharp: the
    # authors' cumulative point, which differs from Algorithm 1 once K >= 3, fails it.
    ns = run_page("algorithm.md")
    F, w, optax = ns["F"], ns["w"], ns["optax"]
    cumulative = optax.chain(
        fw_optax.frank_wolfe(K=4, delta=0.3, cumulative=True), optax.sgd(learning_rate=0.5)
    )
    updates, _ = cumulative.update(jax.grad(F)(w), cumulative.init(w), w, value_fn=F)
    written_out = ns["algorithm_1_step"](w, K=4, delta=0.3, eta=0.5)
    assert not np.allclose(optax.apply_updates(w, updates), written_out, rtol=1e-5)
    # The authors' flavour took one outer step of K gradients, one batch each.
    assert int(ns["authors_state"][0].count) == 1
    assert int(ns["authors_state"][0].inner_steps) == ns["K"]


def test_own_oracle_page_runs_adaptive_k_and_stays_in_the_box():
    ns = run_page("howto/own-oracle.md")
    state, updates = ns["state"][0], ns["updates"]
    assert int(state.count) == 1
    # -Δ is an average of box corners, so it lies in the box of radius δ = 0.1.
    assert float(np.max(np.abs(updates["w"]))) <= 0.1 + 1e-7
    # Adaptive K stopped early, at the first k whose gap fell to gap_tol · gap_1. With Δ_0 = 0
    # and s_1 = -δ·sign(g), gap_1 = <g, Δ_0 - s_1> = δ·|g|_1.
    params, loss_fn = ns["params"], ns["loss_fn"]
    grads = jax.grad(loss_fn)(params)
    threshold = 0.1 * 0.1 * float(np.sum(np.abs(grads["w"])))
    k = int(state.inner_steps)
    assert 2 <= k < 10
    assert 0.0 <= float(state.gap) <= threshold
    fixed = fw_optax.frank_wolfe(K=k - 1, delta=0.1, oracle=ns["box_lmo"])
    _, before = fixed.update(grads, fixed.init(params), params, value_fn=loss_fn)
    assert float(before.gap) > threshold  # k - 1 steps had not got there


def test_own_oracle_page_shipped_oracles_answer_in_their_sets():
    ns = run_page("howto/own-oracle.md")
    assert sum(int(np.count_nonzero(s)) for s in jax.tree.leaves(ns["sparse"])) == 2
    singular = np.linalg.svd(np.asarray(ns["nuclear"]["kernel"]), compute_uv=False)
    np.testing.assert_allclose(singular, [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ns["groups"]["kernel"], axis=0), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.abs(ns["l_inf"]["bias"]), 1.0)


def test_adaptive_k_page_stops_before_the_maximum():
    ns = run_page("howto/adaptive-k.md")
    assert len(ns["used"]) == 5
    assert all(2 <= k <= 50 for k in ns["used"]) and min(ns["used"]) < 50
    assert float(ns["loss_fn"](ns["params"])) < float(ns["loss_fn"](jnp.zeros(8)))


def test_mesh_page_runs_local_frank_wolfe_on_four_devices():
    result = run_page_in_a_fresh_process("howto/mesh.md")
    assert result["devices"] == 4
    assert result["end"] < 0.9 * result["start"]
    assert result["count"] == 3


def test_nnx_page_lowers_the_loss():
    ns = run_page("howto/nnx.md")
    assert ns["losses"][-1] < 0.9 * ns["losses"][0]
    assert int(fw_optax.frank_wolfe_stats(ns["optimizer"].opt_state)["inner_steps"]) == 5


def test_inject_hyperparams_page_makes_delta_injectable_with_an_oracle():
    ns = run_page("howto/inject-hyperparams.md")
    tx, params, loss = ns["tx"], ns["params"], ns["loss_fn"]
    state = tx.init(params)
    for delta in (0.1, 0.02):
        state.hyperparams["delta"] = jnp.asarray(delta)
        updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
        # -Δ averages points of the nuclear-norm ball of the injected radius.
        nuclear = float(np.sum(np.linalg.svd(np.asarray(updates["w"]), compute_uv=False)))
        assert 0.5 * delta < nuclear <= delta * (1 + 1e-5)


# ------------------------------------------------------------- the API reference is complete
def test_the_api_page_documents_every_public_name(site):
    written = re.findall(r"^::: fw_optax\.(\w+)$", (DOCS / "api.md").read_text(), flags=re.M)
    assert sorted(written) == sorted(fw_optax.__all__)
    built = _html(site, "api.md")
    for name in fw_optax.__all__:
        assert f'id="fw_optax.{name}"' in built, name


@pytest.mark.parametrize("name", fw_optax.__all__)
def test_every_word_of_a_docstring_reaches_the_api_page(site, name):
    built = _html(site, "api.md")
    anchors = [m.start() for m in re.finditer(r'<h\d id="fw_optax\.\w+"', built)]
    start = built.index(f'id="fw_optax.{name}"')
    end = min((a for a in anchors if a > start), default=len(built))
    shown = html.unescape(re.sub(r"<[^>]+>", " ", built[start:end]))
    doc = inspect.getdoc(getattr(fw_optax, name))
    doc = re.sub(r"\]\[[\w.]+\]", "]", doc)  # a cross-reference shows its text only
    doc = re.sub(r"^```\w+", "```", doc, flags=re.M)
    lost = _words(doc) - _words(shown)
    for title in DOCSTRING_TITLES:
        lost.pop(title, None)
    assert not lost, dict(lost)
    for rst in (":func:", ":class:", ":meth:", ".. math::"):
        assert rst not in shown, rst


# ------------------------------------------------------ files are read, not copied by hand
def test_the_results_pages_show_the_report_and_its_figures(site):
    report = re.sub(r"\]\([^)]*\)", "]", (ROOT / "results" / "report.md").read_text())
    built = _html(site, "results/report.md")
    numbers = collections.Counter(re.findall(r"\d+(?:\.\d+)?", report))
    assert not numbers - collections.Counter(re.findall(r"\d+(?:\.\d+)?", _text(built)))
    figures = sorted((ROOT / "results" / "figures").glob("*.png"))
    assert figures
    for figure in figures:
        assert f'src="../figures/{figure.name}"' in built, figure.name
        shown = site / "results" / "figures" / figure.name
        assert shown.read_bytes() == figure.read_bytes(), figure.name


def test_the_changelog_page_is_the_changelog(site):
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases and releases[0] == fw_optax.__version__
    shown = _text(_html(site, "changelog.md"))
    for release in releases:
        assert f"[{release}]" in shown


def test_every_included_file_is_a_file_of_the_repository():
    # An include names a file a script writes (or README/CHANGELOG), never a copy under docs/.
    included = {
        name.split(":")[0]
        for page in PAGES
        for name in re.findall(r'^\s*--8<-- "([^"]+)"', (DOCS / page).read_text(), re.M)
    }
    assert {"results/report.md", "CHANGELOG.md", "README.md"} <= included
    for name in included:
        assert (ROOT / name).is_file() and not (ROOT / name).is_relative_to(DOCS), name


def test_the_figures_folder_is_a_link_to_the_results():
    link = DOCS / "results" / "figures"
    assert link.is_symlink()
    assert link.resolve() == (ROOT / "results" / "figures").resolve()


def test_the_quick_start_is_the_readmes():
    (quick_start,) = [c for c, _ in python_blocks(_expanded("getting-started.md"))]
    readme = (ROOT / "README.md").read_text()
    assert quick_start == re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]


def test_the_readme_links_to_every_page():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES:
        if page not in ("index.md", "changelog.md", "results/report.md"):
            assert f"(docs/{page})" in readme, page
