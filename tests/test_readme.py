"""README.md's promises: the quick-start snippet runs, and CI runs README's test command."""

import re
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _python_block(marker: str) -> str:
    """The one ```python block of README.md that contains ``marker``."""
    (block,) = [b for b in _blocks("python") if marker in b]
    return block


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
    assert any("python -m benchmarks.adding" in c for c in commands)


def test_own_oracle_snippet_runs_adaptive_k_and_stays_in_the_box():
    namespace: dict = {}
    exec(compile(_python_block("def box_lmo"), "README.md", "exec"), namespace)
    state, updates = namespace["state"][0], namespace["updates"]
    assert int(state.count) == 1
    # -Δ is an average of box corners, so it lies in the box of radius δ = 0.1.
    assert float(np.max(np.abs(updates["w"]))) <= 0.1 + 1e-7
    # Adaptive K stopped early, at the first k whose gap fell to gap_tol · gap_1. With Δ_0 = 0
    # and s_1 = -δ·sign(g), gap_1 = <g, Δ_0 - s_1> = δ·|g|_1.
    fw, params, loss_fn = namespace["fw_optax"], namespace["params"], namespace["loss_fn"]
    grads = jax.grad(loss_fn)(params)
    threshold = 0.1 * 0.1 * float(np.sum(np.abs(grads["w"])))
    k = int(state.inner_steps)
    assert 2 <= k < 10
    assert 0.0 <= float(state.gap) <= threshold
    fixed = fw.frank_wolfe(K=k - 1, delta=0.1, oracle=namespace["box_lmo"])
    _, before = fixed.update(grads, fixed.init(params), params, value_fn=loss_fn)
    assert float(before.gap) > threshold  # k - 1 steps had not got there


def test_the_api_signature_names_every_parameter_in_order():
    match = re.search(r"`fw_optax\.frank_wolfe\((.*?)\)`\s*returns", README, flags=re.S)
    written = [part.split("=")[0].strip() for part in match.group(1).split(",")]
    written = [name for name in written if name != "*"]
    import inspect

    import fw_optax

    assert written == list(inspect.signature(fw_optax.frank_wolfe).parameters)


def test_inject_hyperparams_snippet_makes_delta_injectable_with_an_oracle():
    namespace: dict = {}
    exec(compile(_python_block("inject_hyperparams("), "README.md", "exec"), namespace)
    tx = namespace["tx"]
    params = {"w": jax.numpy.arange(12.0).reshape(3, 4) / 10}
    loss = lambda p: jax.numpy.sum(jax.numpy.sin(p["w"]))  # noqa: E731
    state = tx.init(params)
    for delta in (0.1, 0.02):
        state.hyperparams["delta"] = jax.numpy.asarray(delta)
        updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
        # -Δ averages points of the nuclear-norm ball of the injected radius.
        nuclear = float(np.sum(np.linalg.svd(np.asarray(updates["w"]), compute_uv=False)))
        assert 0.5 * delta < nuclear <= delta * (1 + 1e-5)


def test_shard_map_snippet_runs_complete_and_lowers_the_loss():
    namespace: dict = {}
    exec(compile(_python_block("jax.shard_map("), "README.md", "exec"), namespace)
    loss_fn, batch = namespace["loss_fn"], namespace["batch"]
    start = loss_fn(jax.numpy.zeros(3), batch)
    assert float(loss_fn(namespace["params"], batch)) < 0.9 * float(start)
    assert int(namespace["opt_state"][0].count) == 3
