"""frank_wolfe on several devices (``batch_axis_name``, ``local``) and benchmarks.perf.distributed.

Several CPU devices exist only if JAX is told before it starts, so the multi-device checks
run in one fresh Python process (``_WORKER``, 4 CPU devices) that reports its measurements
as JSON; the tests below assert on them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

import fw_optax

from tests.worker import host_devices, run_worker

RTOL = 1e-5  # float32 after 2 outer steps; the sums over the batch are split differently
KS = (1, 3)
PS = ("2", "inf")
SCOPES = ("global", "leaf")
VMAS = (True, False)

_WORKER = textwrap.dedent(
    """
    import json
    from benchmarks.training import parallel
    count = parallel.use_cpu_devices()  # 4, from XLA_FLAGS: see the fixture

    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    import fw_optax
    from benchmarks.perf import distributed

    AXIS, STEPS, LR = "data", 2, 0.5
    out = {"devices": len(jax.devices())}
    mesh = parallel.data_mesh()
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.normal(size=(3, 5)).astype(np.float32),
        "b1": rng.normal(size=(5,)).astype(np.float32),
        "w2": rng.normal(size=(5,)).astype(np.float32),
    }
    xs = rng.normal(size=(STEPS, 8, 3)).astype(np.float32)  # 2 outer steps of batch 8
    ys = rng.normal(size=(STEPS, 8)).astype(np.float32)

    def loss(p, x, y):
        return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)

    def fw(K, p, scope, **kw):
        return fw_optax.frank_wolfe(K, 0.3, float(p), scope=scope, **kw)

    def steps(tx, params, xs, ys, axis=None):
        # STEPS outer steps of chain(tx, sgd(LR)); the parameters and each step's gap.
        tx = optax.chain(tx, optax.sgd(LR))
        def step(carry, batch):
            w, s = carry
            own = lambda v: loss(v, *batch)
            g = jax.grad(own)(w if axis is None else fw_optax.per_device(w, axis))
            u, s = tx.update(g, s, w, value_fn=own)
            return (optax.apply_updates(w, u), s), s[0].gap
        (w, _), gaps = jax.lax.scan(step, (params, tx.init(params)), (xs, ys))
        return w, gaps

    def on_mesh(run, check_vma, mesh=mesh):
        specs = (P(), P(None, AXIS), P(None, AXIS))
        return jax.jit(jax.shard_map(run, mesh=mesh, in_specs=specs, out_specs=P(),
                                     check_vma=check_vma))

    def one_tx(tx):
        return lambda *a: steps(tx, *a, axis=AXIS)

    def rel_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) /
                         np.max(np.abs(np.asarray(x))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    split = NamedSharding(mesh, P(None, AXIS))
    xs_d, ys_d = jax.device_put(xs, split), jax.device_put(ys, split)
    params_d = jax.device_put(params, NamedSharding(mesh, P()))

    # Every (K, p, scope) in one program per way of running it: one compilation each.
    CONFIGS = [(K, p, scope) for K in (1, 3) for p in ("2", "inf") for scope in ("global", "leaf")]

    def all_configs(axis=None, **kw):
        def run(*a):
            return {f"K={K} p={p} {scope}": steps(fw(K, p, scope, batch_axis_name=axis, **kw),
                                                   *a, axis=axis)
                    for K, p, scope in CONFIGS}
        return run

    # Synchronous: single-device FW on the global batch, three ways on 4 devices.
    one = jax.jit(all_configs())(params, xs, ys)
    runs = {"jit": jax.jit(all_configs())(params_d, xs_d, ys_d)}
    for vma in (True, False):
        runs[f"shard_map vma={vma}"] = on_mesh(all_configs(AXIS), vma)(params, xs_d, ys_d)
    for name, run in runs.items():
        for config in one:
            out[f"sync {config} {name}"] = [rel_diff(one[config][0], run[config][0]),
                                            rel_diff(one[config][1], run[config][1])]

    # Local: against Algorithm 1 in NumPy on each shard, then the mean of the Δ's.
    grad_np = jax.jit(jax.grad(loss))
    def lmo_np(g, p, scope):
        if p == "inf":
            return {k: -0.3 * np.sign(v) for k, v in g.items()}
        if scope == "leaf":
            return {k: -0.3 * v / np.linalg.norm(v) for k, v in g.items()}
        norm = np.sqrt(sum(np.sum(v * v) for v in g.values()))
        return {k: -0.3 * v / norm for k, v in g.items()}

    def local_reference(K, p, scope):
        w, gaps = {k: v.astype(np.float64) for k, v in params.items()}, []
        for t in range(STEPS):
            deltas, device_gaps = [], []
            for x, y in zip(np.split(xs[t], 4), np.split(ys[t], 4)):
                avg = {k: np.zeros_like(v) for k, v in w.items()}
                for k in range(1, K + 1):
                    point = {n: (w[n] + avg[n]).astype(np.float32) for n in w}
                    g = {n: np.asarray(v, np.float64) for n, v in grad_np(point, x, y).items()}
                    s = lmo_np(g, p, scope)
                    gap = sum(np.vdot(g[n], avg[n] - s[n]) for n in w)
                    avg = {n: avg[n] + (s[n] - avg[n]) / k for n in w}
                deltas.append(avg)
                device_gaps.append(gap)
            w = {n: w[n] + LR * np.mean([d[n] for d in deltas], axis=0) for n in w}
            gaps.append(np.mean(device_gaps))
        return w, np.array(gaps)

    for vma in (True, False):
        local = on_mesh(all_configs(AXIS, local=True), vma)(params, xs_d, ys_d)
        for K, p, scope in CONFIGS:
            ref, run = local_reference(K, p, scope), local[f"K={K} p={p} {scope}"]
            out[f"local K={K} p={p} {scope} vma={vma}"] = [
                rel_diff(ref[0], run[0]), rel_diff(ref[1], run[1])]

    # Without per_device under check_vma=True the first gradient is JAX's sum over devices.
    def steps_summed(tx, params, xs, ys):
        tx = optax.chain(tx, optax.sgd(LR))
        def step(carry, batch):
            w, s = carry
            own = lambda v: loss(v, *batch)
            u, s = tx.update(jax.grad(own)(w), s, w, value_fn=own)
            return (optax.apply_updates(w, u), s), s[0].gap
        (w, _), gaps = jax.lax.scan(step, (params, tx.init(params)), (xs, ys))
        return w, gaps
    summed = on_mesh(lambda *a: steps_summed(fw(1, "2", "global", batch_axis_name=AXIS), *a),
                     True)(params, xs_d, ys_d)
    out["summed first gradient gap"] = rel_diff(one["K=1 p=2 global"][1], summed[1])

    # Under jax.pmap (the batch reshaped to [devices, steps, per device, ...]).
    def per_device_rows(a):
        return np.stack(np.split(a, 4, axis=1))
    for local in (False, True):
        tx = fw(3, "2", "global", batch_axis_name=AXIS, local=local)
        run = jax.pmap(lambda x, y: steps(tx, params, x, y, axis=AXIS), axis_name=AXIS)(
            per_device_rows(xs), per_device_rows(ys))
        ref = local_reference(3, "2", "global") if local else one["K=3 p=2 global"]
        out[f"pmap local={local}"] = [rel_diff(ref[0], jax.tree.map(lambda a: a[0], run[0])),
                                      rel_diff(ref[1], run[1][0])]

    # One device: local is synchronous.
    one_mesh = parallel.data_mesh(jax.devices()[:1])
    for vma in (True, False):
        both = lambda *a: [steps(fw(3, "2", "leaf", batch_axis_name=AXIS, local=local), *a,
                                 axis=AXIS) for local in (False, True)]
        runs = on_mesh(both, vma, one_mesh)(params, xs, ys)
        out[f"one device vma={vma}"] = [rel_diff(runs[0][0], runs[1][0]),
                                         rel_diff(runs[0][1], runs[1][1])]

    # All-reduces of one compiled outer step.
    for K in (1, 3):
        for local in (False, True):
            for vma in (True, False):
                step = on_mesh(one_tx(fw(K, "2", "global", batch_axis_name=AXIS, local=local)),
                               vma)
                hlo = step.lower(params, xs_d[:1], ys_d[:1]).compile().as_text()
                out[f"all-reduces K={K} local={local} vma={vma}"] = parallel.collectives(hlo)

    def error(fn):
        try:
            fn()
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    wrong_axis = fw(3, "2", "global", batch_axis_name="model")
    out["unknown axis shard_map"] = error(
        lambda: on_mesh(one_tx(wrong_axis), True)(params, xs_d, ys_d))
    out["unknown axis jit"] = error(
        lambda: jax.jit(lambda *a: steps(wrong_axis, *a))(params, xs, ys))
    out["odd batch"] = error(lambda: distributed.shard_steps((xs[:, :6],), mesh))

    # benchmarks.perf.distributed at toy size: both tasks, every mode.
    out["quick"] = distributed.main(["--quick", "--devices", "4", "--out", OUT])
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("distributed")
    flags = host_devices(4)
    code = f"OUT = {str(out)!r}\n" + _WORKER
    result = run_worker(code, flags, drop=("JAX_NUM_CPU_DEVICES",))
    result["out"] = str(out)
    return result


def test_the_worker_has_four_devices(four_devices):
    assert four_devices["devices"] == 4


@pytest.mark.parametrize("mode", ["jit", "shard_map vma=True", "shard_map vma=False"])
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("K", KS)
def test_synchronous_equals_one_device_on_the_global_batch(four_devices, K, p, scope, mode):
    params_diff, gap_diff = four_devices[f"sync K={K} p={p} {scope} {mode}"]
    assert params_diff < RTOL
    assert gap_diff < RTOL


@pytest.mark.parametrize("vma", VMAS)
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("K", KS)
def test_local_equals_per_shard_algorithm_1_then_the_mean(four_devices, K, p, scope, vma):
    params_diff, gap_diff = four_devices[f"local K={K} p={p} {scope} vma={vma}"]
    assert params_diff < RTOL
    assert gap_diff < RTOL


def test_a_gradient_not_taken_per_device_gives_a_wrong_gap(four_devices):
    # The checks above can fail: with check_vma=True, jax.grad at the replicated parameters
    # is the sum over the 4 devices, and with K=1 the synchronous gap comes out 4 times too
    # large (Δ does not show it: the oracle's answer does not depend on the gradient's scale).
    assert four_devices["summed first gradient gap"] > 1.0


@pytest.mark.parametrize("local", [False, True])
def test_pmap_gives_the_shard_map_steps(four_devices, local):
    params_diff, gap_diff = four_devices[f"pmap local={local}"]
    assert params_diff < RTOL
    assert gap_diff < RTOL


@pytest.mark.parametrize("vma", VMAS)
def test_on_one_device_local_is_synchronous(four_devices, vma):
    params_diff, gap_diff = four_devices[f"one device vma={vma}"]
    assert params_diff < RTOL
    assert gap_diff < RTOL


@pytest.mark.parametrize("vma", VMAS)
@pytest.mark.parametrize("K", KS)
def test_all_reduces_per_outer_step(four_devices, K, vma):
    sync_count, sync_bytes = four_devices[f"all-reduces K={K} local=False vma={vma}"]
    local_count, local_bytes = four_devices[f"all-reduces K={K} local=True vma={vma}"]
    assert sync_count == K  # the incoming gradient and the K-1 inner ones (loop trips)
    assert local_count == 1  # Δ_K (with the gap in the same all-reduce)
    assert sync_bytes == pytest.approx(K * (local_bytes - 4))


@pytest.mark.parametrize("where", ["shard_map", "jit"])
def test_unknown_axis_name_is_a_clear_error(four_devices, where):
    message = four_devices[f"unknown axis {where}"]
    assert message is not None and message.startswith("ValueError")
    assert "batch_axis_name='model'" in message


def test_batch_not_divisible_by_the_devices_is_a_clear_error(four_devices):
    message = four_devices["odd batch"]
    assert message is not None and message.startswith("ValueError")
    assert "batch size 6 is not divisible by the 4 devices" in message


def test_benchmark_quick_measures_and_writes_its_tables(four_devices):
    summary = four_devices["quick"]
    counts = {(r["mode"], r["K"]): r["all_reduces"] for r in summary["communication"]["rows"]}
    assert counts[("sync", 5)] == 5 and counts[("local", 5)] == 1
    assert counts[("sync", 1)] == counts[("local", 1)] == 1
    # The runner's loop trained both: 4 outer steps, and one pass of 64 windows in batches of 8.
    steps = {r["task"]: r["outer_steps"] for r in summary["accuracy"]}
    assert steps == {"adding T=8": 4, "HAR-2": 8}
    assert {(r["task"], r["mode"]) for r in summary["runs"]} == {
        (task, mode) for task in steps for mode in ("sync", "local")
    }
    for row in summary["accuracy"]:
        for mode in ("sync", "local"):
            assert np.isfinite(row[mode]["mean"])
    markdown = (Path(four_devices["out"]) / "summary.md").read_text()
    assert "| local | 5 | 1 |" in markdown and "Machine:" in markdown


def test_local_needs_an_axis():
    with pytest.raises(ValueError, match="local=True .* batch_axis_name=None"):
        fw_optax.frank_wolfe(3, 0.1, local=True)


def test_local_does_not_take_gap_tol():
    with pytest.raises(ValueError, match="gap_tol=0.1"):
        fw_optax.frank_wolfe(3, 0.1, batch_axis_name="data", local=True, gap_tol=0.1)


@pytest.mark.parametrize("bad", [3, ("data",)], ids=["int", "tuple"])
def test_bad_batch_axis_name(bad):
    with pytest.raises(ValueError, match="batch_axis_name must be None or"):
        fw_optax.frank_wolfe(3, 0.1, batch_axis_name=bad)


def test_unbound_axis_outside_any_mapping():
    tx = fw_optax.frank_wolfe(1, 0.1, batch_axis_name="data")
    g = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="batch_axis_name='data' is not a mesh axis"):
        tx.update(g, tx.init(g), g)
