"""benchmarks.compare_torch: the float64 equality check holds, can fail, and the timing runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import compare_torch as ct  # noqa: E402

# One tiny size for every test: the compiled fw-optax steps are cached and shared between them.
TINY = ct.Problem(length=10, batch=4, hidden=8)
VARIANTS = ct.variants()


def test_weights_copied_into_torch_give_the_flax_outputs():
    params = ct.init_params(TINY, seed=3)
    x, _ = ct.make_batches(TINY, 1, seed=4)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        apply = jax.jit(ct.flax_model(TINY).apply)
        carry = (jnp.zeros((TINY.batch, TINY.hidden)),)
        flax_out = np.asarray(apply(p64, jnp.asarray(x[0], jnp.float64), initial_carry=carry))
    torch_out = ct.torch_model(params, torch.float64)(torch.from_numpy(x[0]).double())
    np.testing.assert_allclose(torch_out.detach().numpy(), flax_out, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["alg1", "authors"])
def test_both_sides_take_the_same_first_step_in_float64(name):
    check = ct.check_first_step(TINY, VARIANTS[name])
    assert check.ok, check.line()
    assert max(check.direction, check.step, check.params) < 1e-10


@pytest.mark.parametrize("name", ["alg1", "authors"])
def test_check_fails_when_one_torch_weight_is_perturbed(name):
    def nudge(model):
        model.rnn.weight_hh_l0[0, 1] += 1e-3

    check = ct.check_first_step(TINY, VARIANTS[name], perturb=nudge)
    assert not check.ok
    assert check.direction > ct.TOLERANCE and check.step > ct.TOLERANCE


@pytest.mark.parametrize("name", ["alg1", "authors"])
def test_check_fails_when_torch_uses_another_radius(name):
    variant = VARIANTS[name]
    check = ct.check_first_step(TINY, variant, torch_delta=variant.delta * (1 + 1e-4))
    assert not check.ok
    # Δ_K is proportional to δ to first order: the direction is off by about 1e-4.
    assert 2e-5 < check.direction < 1e-3


def test_torch_frank_wolfe_rejects_bad_settings():
    model = ct.TorchRNN(4)
    outer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="K=0"):
        ct.FrankWolfe(outer, K=0, delta=0.1)
    with pytest.raises(ValueError, match="scope='tensor'"):
        ct.FrankWolfe(outer, K=2, delta=0.1, scope="tensor")


def test_interleaved_timing_rotates_and_drops_a_setup_far_slower_than_the_fastest():
    clock, order = [0.0], []

    def contender(name, seconds_per_step):
        def run(steps):
            order.append(name)
            clock[0] += seconds_per_step * steps

        return run

    runners = {"jax": contender("jax", 10.0), "fast": contender("fast", 1.0)}
    runners["slow"] = contender("slow", 3.5)
    timing = ct.time_interleaved(
        runners, repeats=3, steps=2, keep=("jax",), pause=0, clock=lambda: clock[0]
    )
    assert timing.dropped == {"slow": 1}
    assert timing.times == {"jax": [10.0] * 3, "fast": [1.0] * 3, "slow": [3.5]}
    assert timing.warmup == {"jax": 10.0, "fast": 1.0, "slow": 3.5}
    # The warm-up in order, then rounds that start one contender later each time.
    warmup, first, second, third = (
        ["jax", "fast", "slow"],
        ["jax", "fast", "slow"],
        ["fast", "jax"],
        ["jax", "fast"],
    )
    assert order == warmup + first + second + third


def test_quick_run_checks_then_times_every_setup():
    lines = []
    argv = ["--quick", "--hidden", "8", "--batch", "4", "--variants", "alg1", "--threads", "1"]
    result = ct.main(argv, print_fn=lines.append)
    assert [c.ok for c in result["checks"]] == [True]
    ((key, ratio),) = result["ratios"].items()
    assert key == ("alg1", 10) and ratio > 0
    text = "\n".join(lines)
    for setup in ct.torch_setups(threads=[1]):
        assert setup.name in text
    assert "fastest torch" in text and "Machine:" in text


def test_bad_command_line_is_rejected():
    with pytest.raises(SystemExit):
        ct.parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        ct.parse_args(["--lengths", "1"])
    with pytest.raises(SystemExit):
        ct.parse_args(["--threads", "0"])
