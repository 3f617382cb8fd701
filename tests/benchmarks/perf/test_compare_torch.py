"""benchmarks.perf.compare_torch: the float64 equality check holds, can fail, and the timing runs;
the CUDA-graph step replays the eager one (its data path on the CPU, the capture on a GPU)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.perf import compare_torch as ct  # noqa: E402

# One tiny size for every test: the compiled fw-optax steps are cached and shared between them.
TINY = ct.Problem(length=10, batch=4, hidden=8)
VARIANTS = ct.variants()
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def step_batches(variant, steps, device="cpu"):
    """``steps`` outer steps' stacked batches, as ``torch_runner`` holds them."""
    per_step = variant.batches_per_step
    x, y = ct.make_batches(TINY, steps * per_step, seed=1)
    xs = [torch.from_numpy(x[i : i + per_step]).to(device) for i in range(0, len(x), per_step)]
    ys = [torch.from_numpy(y[i : i + per_step]).to(device) for i in range(0, len(y), per_step)]
    return xs, ys


def assert_same_parameters(a, b, rtol, atol=0.0):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        np.testing.assert_allclose(
            p.detach().cpu().numpy(), q.detach().cpu().numpy(), rtol=rtol, atol=atol, err_msg=name
        )


def test_weights_copied_into_torch_give_the_flax_outputs():
    params = ct.init_params(TINY, seed=3)
    x, _ = ct.make_batches(TINY, 1, seed=4)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        apply = jax.jit(TINY.task().model.apply)
        carry = (jnp.zeros((TINY.batch, TINY.hidden)),)
        x64 = jnp.asarray(x[0], jnp.float64)
        flax_out = np.asarray(apply({"params": p64}, x64, initial_carry=carry))
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


def test_quick_run_checks_then_times_every_setup_and_impl(tmp_path):
    lines = []
    out = tmp_path / "results" / "compare.txt"
    argv = ["--quick", "--hidden", "8", "--batch", "4", "--variants", "alg1", "--threads", "1"]
    argv += ["--impls", "flax", "fused", "--out", str(out)]
    result = ct.main(argv, print_fn=lines.append)
    assert [c.ok for c in result["checks"]] == [True]
    ((key, ratio),) = result["ratios"].items()
    assert key == ("alg1", 10, 4, 8) and ratio > 0
    text = "\n".join(lines)
    for setup in ct.torch_setups(threads=[1]):
        assert setup.name in text
    for name in ("fw-optax[flax]", "fw-optax[fused]"):
        assert f"  {name} " in text
        assert f"/ {name} = " in text  # its own ratio
    assert "fastest torch" in text and "Machine:" in text and "precision float32" in text
    assert out.read_text() == text + "\n"


def test_contenders_are_named_by_impl_except_the_cpu_default():
    assert ct.jax_name("auto", ["auto"]) == "fw-optax"
    assert ct.jax_name("auto", ["auto"], "cuda") == "fw-optax[auto]"
    assert ct.jax_name("fused", ["flax", "fused"]) == "fw-optax[fused]"
    names = [s.name for s in ct.torch_setups([1, 2], device="cuda", precision="tf32")]
    assert names == ["torch cuda eager", "torch cuda graph"]


def test_cuda_on_a_machine_without_a_gpu_stops_naming_the_backend():
    if jax.default_backend() == "gpu":
        pytest.skip("JAX runs on a GPU here")
    with pytest.raises(SystemExit, match=f"default backend is '{jax.default_backend()}'"):
        ct.main(["--device", "cuda", "--quick"], print_fn=lambda line: None)


def test_cuda_setup_without_a_cuda_device_fails_clearly_and_changes_nothing():
    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device here")
    before = torch.backends.cudnn.allow_tf32
    with pytest.raises(RuntimeError, match="sees no CUDA device"):
        ct.TorchSetup(device="cuda", precision="float32").apply()
    assert torch.backends.cudnn.allow_tf32 == before


@pytest.mark.parametrize("name", ["alg1", "authors"])
def test_static_input_steps_take_the_eager_steps(name):
    # The CUDA-graph set-up's data path, run eagerly: every step's batches (all K of them for
    # the authors' variant) copied into the captured inputs.
    variant = VARIANTS[name]
    params0 = ct.init_params(TINY)
    xs, ys = step_batches(variant, steps=2)
    static, eager = ct.torch_model(params0), ct.torch_model(params0)
    static_opt, eager_opt = ct.torch_optimizer(static, variant), ct.torch_optimizer(eager, variant)
    step = ct.static_steps(
        functools.partial(ct.torch_step, static, static_opt), xs, ys, capture=lambda f: f
    )
    for i in (1, 0, 1):
        step(i)
        ct.torch_step(eager, eager_opt, xs[i], ys[i])
    assert_same_parameters(static, eager, rtol=1e-6)
    start = ct.torch_model(params0).rnn.weight_hh_l0.detach().numpy()
    assert not np.allclose(static.rnn.weight_hh_l0.detach().numpy(), start)  # it trained


class FakeWorker:
    """A torch set-up's process stand-in: loads (or fails to) and takes no time."""

    def __init__(self, setup, error=None):
        self.setup, self.error = setup, error

    def load(self, *args):
        if self.error is not None:
            raise RuntimeError(self.error)

    def __call__(self, steps):
        pass


def test_a_graph_that_fails_to_load_is_reported_in_one_line_not_timed():
    eager = FakeWorker(ct.TorchSetup(device="cuda"))
    error = "torch cuda graph: RuntimeError: operation not permitted when stream is capturing\nmore"
    graph = FakeWorker(ct.TorchSetup(device="cuda", graph=True), error)
    timing = ct.benchmark(TINY, VARIANTS["alg1"], [eager, graph], repeats=1, steps=1, device="cuda")
    assert set(timing.times) == {"fw-optax[auto]", "torch cuda eager"}
    assert timing.failed == {"torch cuda graph": error.splitlines()[0]}
    lines = []
    ct.report(TINY, VARIANTS["alg1"], timing, lines.append)
    (line,) = [line for line in lines if "torch cuda graph" in line]
    assert "not timed" in line and "stream is capturing" in line
    # Any other set-up that fails to load stops the benchmark.
    broken = FakeWorker(ct.TorchSetup(device="cuda"), "torch cuda eager: out of memory")
    with pytest.raises(RuntimeError, match="out of memory"):
        ct.benchmark(TINY, VARIANTS["alg1"], [broken], repeats=1, steps=1, device="cuda")


@needs_cuda
@pytest.mark.parametrize("name", ["alg1", "authors"])
def test_cuda_graph_replays_the_eager_step(name):
    variant = VARIANTS[name]
    params0 = ct.init_params(TINY)
    xs, ys = step_batches(variant, steps=2, device="cuda")
    graphed, eager = ct.torch_model(params0).cuda(), ct.torch_model(params0).cuda()
    graphed_opt = ct.torch_optimizer(graphed, variant, capturable=True)
    eager_opt = ct.torch_optimizer(eager, variant)
    step = ct.static_steps(functools.partial(ct.torch_step, graphed, graphed_opt), xs, ys)
    for _ in range(ct.WARMUP + 1):  # what cuda_graph ran: the warm-up and one checking replay
        ct.torch_step(eager, eager_opt, xs[0], ys[0])
    for i in (1, 0, 1):
        step(i)
        ct.torch_step(eager, eager_opt, xs[i], ys[i])
    torch.cuda.synchronize()
    assert_same_parameters(graphed, eager, rtol=1e-5, atol=1e-7)


@needs_cuda
def test_quick_cuda_run_times_eager_and_graph():
    if jax.default_backend() != "gpu":
        pytest.skip("JAX does not run on a GPU here")
    lines = []
    argv = ["--device", "cuda", "--quick", "--hidden", "8", "--batch", "4", "--variants"]
    argv += ["authors", "--impls", "auto", "fused", "--precision", "tf32"]
    result = ct.main(argv, print_fn=lines.append)
    assert result["ratios"][("authors", 10, 4, 8)] > 0
    text = "\n".join(lines)
    assert "torch cuda eager" in text and "torch cuda graph" in text
    assert "not timed" not in text, text  # the capture worked
    assert torch.cuda.get_device_name() in text and "precision tf32" in text


def test_bad_command_line_is_rejected():
    with pytest.raises(SystemExit):
        ct.parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        ct.parse_args(["--lengths", "1"])
    with pytest.raises(SystemExit):
        ct.parse_args(["--threads", "0"])
    with pytest.raises(SystemExit):
        ct.parse_args(["--device", "cpu", "--precision", "tf32"])  # no TF32 on a CPU
    with pytest.raises(SystemExit):
        ct.parse_args(["--device", "cuda", "--compile"])
    with pytest.raises(SystemExit):
        ct.parse_args(["--impls", "fused", "no-such-impl"])  # models.RNNModel rejects it


def test_gpu_command_line_is_accepted():
    args = ct.parse_args(["--device", "cuda", "--precision", "tf32", "--impls", "fused", "pallas"])
    assert (args.device, args.precision, args.impls) == ("cuda", "tf32", ["fused", "pallas"])
    args = ct.parse_args([])
    assert (args.device, args.precision, args.impls, args.out) == ("cpu", "float32", ["auto"], None)
