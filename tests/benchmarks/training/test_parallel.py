"""benchmarks.training.parallel: the batch split over CPU devices computes the single-device step.

Several CPU devices exist only if JAX is told before it starts, so the multi-device checks
run in one fresh Python process (``_WORKER``) that reports its measurements as JSON; the
tests below assert on them.
"""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from benchmarks.training import parallel

from tests.worker import host_devices, run_worker

RTOL = 1e-5  # float32 after 2 outer steps; the sums over the batch are split differently

_WORKER = textwrap.dedent(
    """
    import functools, json
    from benchmarks.training import parallel
    count = parallel.use_cpu_devices()  # 2, from XLA_FLAGS: see the fixture


    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import PartitionSpec as P
    import fw_optax
    from benchmarks.perf import perf_cores
    from benchmarks.training.data.adding import adding_batch
    from models import RNNModel, mse_loss

    out = {"count": count, "devices": len(jax.devices())}
    mesh = parallel.data_mesh()
    model = RNNModel(hidden_size=8, output_size=1, cell="simple")
    keys = jax.random.split(jax.random.key(0), 2)
    batches = jax.vmap(lambda k: adding_batch(k, 4, 6))(keys)  # 2 steps of batch 4, T=6
    params = model.init(jax.random.key(1), batches[0][0])

    def loss(params, batch):
        return mse_loss(model.apply(params, batch[0]), batch[1])

    def train(loss, tx, params, batches):
        tx = optax.with_extra_args_support(tx)
        def step(carry, batch):
            p, s = carry
            g = jax.grad(loss)(p, batch)
            u, s = tx.update(g, s, p, value_fn=lambda w: loss(w, batch))
            return (optax.apply_updates(p, u), s), None
        (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), batches)
        return p

    def rel_diff(a, b):
        return max(float(np.max(np.abs(x - y)) / np.max(np.abs(x)))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    sharded = parallel.shard_batch(batches, mesh, batch_axis=1)
    specs = dict(in_specs=(P(), parallel.batch_spec(1)), out_specs=P())
    for K in (1, 3):
        tx = optax.chain(fw_optax.frank_wolfe(K, 0.5), optax.sgd(1.0))
        one = jax.jit(functools.partial(train, loss, tx))(params, batches)
        dp_loss = parallel.data_parallel_loss(loss)
        two = parallel.data_parallel(functools.partial(train, dp_loss, tx), mesh, **specs)
        no_mean = parallel.data_parallel(functools.partial(train, loss, tx), mesh, **specs)
        out[f"K{K}"] = rel_diff(one, two(params, sharded))
        hlo = two.lower(params, sharded).compile().as_text()
        out[f"K{K}_collectives"] = parallel.collectives(hlo)
        out[f"K{K}_without_mean"] = rel_diff(one, no_mean(params, sharded))

    def with_aux(params, batch):
        return loss(params, batch), {"x_mean": jnp.mean(batch[0]), "count": jnp.int32(1)}

    aux_fn = parallel.data_parallel(
        lambda p, b: parallel.data_parallel_loss(with_aux, has_aux=True)(p, b),
        mesh, in_specs=(P(), P("data")), out_specs=P())
    value, aux = aux_fn(params, parallel.shard_batch(jax.tree.map(lambda a: a[0], batches), mesh))
    out["loss_value"] = [float(value), float(loss(params, jax.tree.map(lambda a: a[0], batches)))]
    out["aux_mean"] = [float(aux["x_mean"]), float(jnp.mean(batches[0][0]))]

    rows = parallel.data_parallel(
        lambda x: parallel.local_shard(x), mesh, in_specs=P(), out_specs=P("data"))
    out["local_shard"] = np.asarray(rows(jnp.arange(8))).tolist()

    def error(fn):
        try:
            fn()
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None

    out["odd_batch"] = error(lambda: parallel.shard_batch((np.zeros((5, 3)),), mesh))
    out["odd_local"] = error(lambda: rows(jnp.arange(7)))
    out["restart"] = error(lambda: parallel.use_cpu_devices(3))
    out["same_count"] = error(lambda: parallel.use_cpu_devices(2))
    out["perf_rows"] = perf_cores.main(["--quick"])
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def two_devices() -> dict:
    flags = host_devices(2)
    return run_worker(_WORKER, flags, drop=("JAX_NUM_CPU_DEVICES",))


def test_the_device_count_set_in_the_environment_is_kept(two_devices):
    assert two_devices["count"] == two_devices["devices"] == 2


@pytest.mark.parametrize("K", [1, 3])
def test_two_device_step_equals_one_device_step(two_devices, K):
    assert two_devices[f"K{K}"] < RTOL


@pytest.mark.parametrize("K", [1, 3])
def test_one_gradient_mean_per_gradient_evaluation(two_devices, K):
    count, size = two_devices[f"K{K}_collectives"]
    assert count == 2 * K  # 2 outer steps of K gradients, none inside the time loop
    assert size > 0


@pytest.mark.parametrize("K", [1, 3])
def test_without_the_gradient_mean_the_steps_differ(two_devices, K):
    # The check above can fail: per-device gradients alone move the weights elsewhere.
    assert two_devices[f"K{K}_without_mean"] > 100 * RTOL


def test_loss_value_and_aux_are_global_means(two_devices):
    np.testing.assert_allclose(*two_devices["loss_value"], rtol=RTOL)
    np.testing.assert_allclose(*two_devices["aux_mean"], rtol=RTOL)


def test_local_shard_gives_each_device_its_rows(two_devices):
    assert two_devices["local_shard"] == list(range(8))


def test_batch_not_divisible_by_devices_is_a_clear_error(two_devices):
    for key in ("odd_batch", "odd_local"):
        message = two_devices[key]
        assert message is not None and message.startswith("ValueError")
        assert "not divisible by the 2 devices" in message


def test_device_count_cannot_change_after_jax_started(two_devices):
    assert two_devices["restart"].startswith("RuntimeError")
    assert "2 CPU device(s); 3 were asked for" in two_devices["restart"]
    assert two_devices["same_count"] is None


def test_perf_cores_quick_runs_every_variant_and_checks_them(two_devices):
    rows = two_devices["perf_rows"]
    assert {r["variant"] for r in rows} == {"1 device", "jit+sharding", "shard_map"}
    assert len(rows) == 9
    for row in rows:
        assert row["max_rel_diff"] < RTOL
        assert row["ms_per_step"] > 0 and row["cores"] > 0


_HLO = """HloModule m

%body (p: (s32[], f32[4,4])) -> (s32[], f32[4,4]) {
  %p = (s32[], f32[4,4]{1,0}) parameter(0)
  %x = f32[4,4]{1,0} get-tuple-element(%p), index=1
  %ar = f32[4,4]{1,0} all-reduce(%x), channel_id=1, to_apply=%add
  ROOT %t = (s32[], f32[4,4]{1,0}) tuple(%i, %ar)
}

ENTRY %main (a: f32[8]) -> f32[16] {
  %w = (s32[], f32[4,4]{1,0}) while(%init), condition=%cond, body=%body, \
backend_config={"known_trip_count":{"n":"7"}}
  ROOT %ag = f32[16]{0} all-gather(%a), channel_id=2, dimensions={0}
}
"""


def test_collectives_count_loop_trips():
    assert parallel.collectives(_HLO) == (7 + 1, 7 * 16 * 4 + 16 * 4)
    with pytest.raises(ValueError, match="no ENTRY computation"):
        parallel.collectives("not hlo")


def test_per_device_batch():
    assert parallel.per_device_batch(50, 2) == 25
    with pytest.raises(ValueError, match="batch size 7 is not divisible by the 2 devices"):
        parallel.per_device_batch(7, 2)


@pytest.mark.parametrize("count", [0, -1, 1.5, True])
def test_bad_device_count(count):
    with pytest.raises(ValueError, match="count must be an int >= 1"):
        parallel.use_cpu_devices(count)


def test_requested_device_count_reads_xla_flags(monkeypatch):
    if jax.config.jax_num_cpu_devices > 0:
        pytest.skip("JAX_NUM_CPU_DEVICES is set: it takes precedence over XLA_FLAGS")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert parallel.requested_device_count() is None
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert parallel.requested_device_count() == 3


def test_batch_spec_splits_the_named_axis():
    assert parallel.batch_spec() == P("data")
    assert parallel.batch_spec(batch_axis=2) == P(None, None, "data")


def test_one_device_mesh_is_the_plain_gradient():
    mesh = parallel.data_mesh(jax.devices()[:1])
    w, x = jnp.arange(3.0), jnp.arange(12.0).reshape(4, 3)

    def loss(w, x):
        return jnp.mean((x @ w) ** 2)

    grad = parallel.data_parallel(
        jax.grad(parallel.data_parallel_loss(loss)), mesh, in_specs=(P(), P("data")), out_specs=P()
    )
    np.testing.assert_allclose(grad(w, x), jax.grad(loss)(w, x), rtol=1e-6)
