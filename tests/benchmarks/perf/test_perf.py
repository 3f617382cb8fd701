"""The perf script runs end to end at toy size and reports every ratio it promises."""

import argparse
import math

import jax
import numpy as np
import pytest

from benchmarks.perf import fw_suite as perf


def test_fw_suite_reports_all_ratios(capsys):
    args = argparse.Namespace(
        length=4,
        batch=2,
        hidden=3,
        gru_length=3,
        gru_batch=2,
        gru_hidden=3,
        many_tensors=4,
        steps_per_call=2,
        repeats=1,
        compile_repeats=1,
    )
    rows = perf.fw_benchmarks(args)
    assert [r["metric"][:3] for r in rows] == ["(a)"] * 4 + ["(b)", "(c)", "(d)"]
    assert "GRU step FW K=5" in rows[3]["metric"]
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "Machine:" in out and "K=64 / K=2" in out


def test_perf_models_reports_every_section_at_toy_size(capsys):
    from benchmarks.perf import perf_models

    args = perf_models.parse_args(["--quick", "--table"])
    args.sections = perf_models.SECTIONS  # --table alone runs sections 3 and 7
    rows = perf_models.run(args)
    flop_rows = rows["flop_rate"]
    # Off a GPU the persistent kernels run interpreted: --quick covers them, nothing times them.
    assert {r["impl"] for r in flop_rows} == set(perf_models.IMPLS) | {"pallas"}
    for r in flop_rows:
        assert r["flops"] == 3 * 2 * 3 * 8**2 * r["seq_len"]
        assert 0 < r["fraction_of_peak"] and math.isfinite(r["gflops_per_s"])
    assert [r["cell"] for r in rows["cells"]] == ["lstm", "indrnn"]
    assert all(r["pallas_ms"] > 0 for r in rows["cells"])
    assert [r["setting"] for r in rows["precision"]] == ["default", "tensorfloat32", "float32"]
    assert all(0 < r["pallas_forward"] < 1e-5 for r in rows["precision"])  # float32 on a CPU
    writes = {r["impl"]: r["stacked_writes_per_loop"] for r in rows["anatomy"]}
    # The fused recurrence stores one state per step forward and one cotangent backward.
    assert writes["fused"] == [1, 1]
    assert sum(writes["flax"]) > sum(writes["fused"])
    epoch = rows["indrnn_epoch"]
    assert epoch["steps"] == 3 and set(epoch["seconds"]) >= {"landed", "now, 1 device"}
    assert all(r > 0 for r in epoch["speedup"].values())
    out = capsys.readouterr().out
    breakdown = rows["indrnn_breakdown"]
    assert set(breakdown) == {"full", "no dropout", "no dropout, no BN"}
    assert all(set(r) == {"landed", "now"} for r in breakdown.values())
    assert [set(r["ms_by_unroll"]) for r in rows["unroll"]] == [{3}]
    assert "Machine:" in out and "of peak" in out and "landed / now" in out
    assert "pallas, 1 device" in epoch["seconds"]
    (launch,) = rows["launch"]
    assert (launch["block_rows"], launch["num_warps"]) == (16, 4)
    assert all(us > 0 for us in launch["us_per_step"].values())
    # The printed MEASURED entry is Python that rebuilds the section-3 numbers and choices.
    from models.rnn import Recurrence

    literal = out[out.index("Recurrence(") : out.index("Load average at end")]
    table = eval(literal, {"Recurrence": Recurrence})
    assert table.unroll == 3
    for row in rows["cells"]:
        assert table.ranking(row["cell"], row["seq_len"])[0] == row["fastest"]


def test_the_landed_deep_indrnn_baseline_is_the_same_function_as_rnn_model():
    """Section 5's baseline differs from the model the runner trains only in how it is
    computed: the same parameter tree and, at evaluation, the same outputs."""
    from benchmarks.perf import perf_models

    args = perf_models.parse_args(["--quick"])
    args.har_depth = 2
    x = jax.random.normal(jax.random.key(0), (3, args.har_length, 9))
    landed = perf_models.deep_indrnn_model(args, "landed")
    now = perf_models.deep_indrnn_model(args, "now")
    variables = now.init(jax.random.key(1), x)
    assert jax.tree.structure(landed.init(jax.random.key(1), x)) == jax.tree.structure(variables)
    stats = jax.tree.map(lambda a: a + 0.3, variables["batch_stats"])  # not the identity
    variables = {**variables, "batch_stats": stats}
    np.testing.assert_allclose(
        landed.apply(variables, x), now.apply(variables, x), rtol=1e-5, atol=1e-6
    )


def test_the_deep_indrnn_sections_train_the_registrys_model():
    """Sections 5 and 6 train HAR-2's ``indrnn`` row as the registry builds it, and each
    breakdown row's model is the one its configuration names, batch norm off included."""
    from benchmarks.perf import perf_models
    from benchmarks.registry.tasks import build_model, init_variables

    args = perf_models.parse_args(["--quick"])
    config, data = perf_models.har2_run(args)
    assert (config.task, config.method, config.weight_decay, config.dropout) == (
        "har2", "indrnn", 1e-4, 0.1,
    )  # fmt: skip
    params, _ = init_variables(config, build_model(config, data), data)
    now = perf_models.deep_indrnn_model(args, "now")
    assert jax.tree.structure(init_variables(config, now, data)[0]) == jax.tree.structure(params)
    bare = perf_models.deep_indrnn_model(args, "now", dropout=0.0, layer_batch_norm=False)
    assert (bare.dropout_rate, bare.layer_batch_norm) == (0.0, False)
    assert init_variables(config, bare, data)[1] == {}  # no batch statistics
    step, state = perf_models.indrnn_train_step(args, "now")
    trained = step(state, 0)
    assert int(trained.step) == 1
    pairs = zip(jax.tree.leaves(trained.params), jax.tree.leaves(state.params), strict=True)
    assert not any(np.allclose(a, b) for a, b in pairs)  # every tensor took the step


def test_the_one_timer_interleaves_the_variants_round_after_round():
    from benchmarks.perf import timing

    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = timing.rounds(fns, 3, warm_up=True)
    # One untimed call of each, then three rounds of one call each, in turn.
    assert calls == ["a", "b", "c"] * 4
    assert all(len(ts) == 3 and all(t.wall >= 0 and t.cpu >= 0 for t in ts)
               for ts in times.values())  # fmt: skip
    assert set(timing.median_wall(times)) == {"a", "b", "c"}
    assert timing.load_average().startswith("load average ")
    with pytest.raises(ValueError, match="repeats=0"):
        timing.rounds(fns, 0)


def test_tee_prints_each_line_and_writes_it_as_it_goes(tmp_path):
    from benchmarks.perf import timing

    printed, path = [], tmp_path / "new folder" / "report.txt"
    with timing.tee(printed.append, path) as print_fn:
        print_fn("first")
        assert path.read_text() == "first\n"  # a long run's file holds what it has so far
        print_fn("second")
    assert printed == ["first", "second"] and path.read_text() == "first\nsecond\n"
    with timing.tee(printed.append, None) as print_fn:
        assert print_fn == printed.append  # no file: the printer itself


def test_the_scripts_adding_problem_is_the_runners_task():
    """``adding_problem``, which every perf script builds its set-up with, computes what the
    runner trains: the registry's model and initial weights, its batches and its loss."""
    from benchmarks.registry.configs import get_config
    from benchmarks.registry.tasks import (
        adding_problem,
        build_model,
        init_variables,
        load_task_data,
        make_objective,
    )
    from benchmarks.training.data.adding import adding_batch

    problem = adding_problem(length=6, batch_size=4, hidden=5, cell="gru", impl="fused", seed=2)
    config = get_config("adding", "sgd", "cpu", seed=2, length=6, batch_size=4, hidden=5,
                        cell="gru", test_size=4)  # fmt: skip
    data = load_task_data(config)
    model = build_model(config, data)
    params, state = init_variables(config, model, data)
    batch = problem.make_batch(jax.random.key(7))
    for got, want in zip(batch, adding_batch(jax.random.key(7), 4, 6), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(jax.tree.leaves(problem.init()), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(got, want)
    other = zip(jax.tree.leaves(problem.init(3)), jax.tree.leaves(params), strict=True)
    assert not all(np.allclose(a, b) for a, b in other)  # a seed of its own
    runner_loss, _ = make_objective(config, model, data).loss(params, state, batch, None)
    np.testing.assert_allclose(problem.loss(params, batch), runner_loss, rtol=1e-5)
    assert problem.model.impl == "fused" and model.impl == "auto"
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        b64 = jax.tree.map(lambda a: np.asarray(a, np.float64), batch)
        assert problem.loss(p64, b64).dtype == np.float64
    with pytest.raises(ValueError, match="impl"):
        adding_problem(length=6, batch_size=4, hidden=5, impl="no-such-impl")
