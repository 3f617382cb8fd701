"""One run's settings (benchmarks/registry/configs.py on the task and method registries): every row
resolves, flavours, overrides by name and type, run names, errors."""

import dataclasses
import json
import subprocess
import sys

import pytest

from benchmarks.registry import config, configs
from benchmarks.registry.configs import get_config, parse_setting, parse_settings, table_for
from benchmarks.registry.methods import METHODS
from benchmarks.registry.tasks import TASKS
from benchmarks.report import PAPER_TABLE1, PAPER_TABLE2, TABLE2_ROWS
from benchmarks.training.summaries import is_summary

from tests import ROOT

PAIRS = [(task, method) for task in TASKS for method in configs.task_methods(task)]


@pytest.mark.parametrize("preset", configs.PRESETS)
@pytest.mark.parametrize(("task", "method"), PAIRS)
def test_every_pair_resolves_under_every_preset(task, method, preset):
    config = get_config(task, method, preset)
    assert (config.flavour is not None) == METHODS[method].frank_wolfe


# Rows of the authors' run scripts (../shared/REFERENCE.md, "Settings read from their run
# scripts"): task, method, K, then the settings the paper preset must carry.
PAPER_SETTINGS = [
    ("adding", "fw", 1, {"hidden": 128, "batch_size": 50, "lr": 1e-3}),
    ("har2", "adam", None, {"hidden": 80, "batch_size": 128, "lr": 1e-3, "epochs": 300}),
    ("har2", "fw", 5, {"hidden": 80, "batch_size": 128, "lr": 1e-3, "delta": 1e-3}),
    ("har2", "tbptt", None, {"chunk_length": 16}),
    ("pixel_mnist", "adam", None, {"hidden": 128, "batch_size": 512, "lr": 1e-3}),
    ("pixel_mnist", "fw", 1, {"batch_size": 512, "lr": 2e-4, "delta": 2e-4}),
    ("pixel_mnist", "tbptt_fw", 5, {"batch_size": 64, "lr": 2e-4, "chunk_length": 196}),
    ("permuted_mnist", "adam", None, {"batch_size": 128, "lr": 1e-3}),
    ("permuted_mnist", "fw", 1, {"batch_size": 512, "lr": 1e-3}),
    ("permuted_mnist", "tbptt_fw", 1, {"batch_size": 32, "lr": 6e-4, "chunk_length": 196}),
    ("permuted_mnist", "tbptt_fw", 5, {"batch_size": 64, "lr": 1e-3}),
    ("pixel_mnist", "indrnn", None,
     {"depth": 6, "hidden": 128, "dropout": 0.1, "batch_size": 32, "lr": 2e-4,
      "weight_decay": 1e-4}),
    ("permuted_mnist", "indrnn_fw", 5, {"depth": 6, "batch_size": 64, "lr": 1e-3}),
    ("pixel_mnist", "indrnn_fw", 5, {"batch_size": 64, "lr": 6e-4}),
]  # fmt: skip


@pytest.mark.parametrize(("task", "method", "K", "want"), PAPER_SETTINGS)
def test_paper_preset_carries_the_authors_settings(task, method, K, want):
    kwargs = {} if K is None else {"K": K, "flavour": "authors"}
    config = get_config(task, method, "paper", **kwargs)
    assert {name: getattr(config, name) for name in want} == pytest.approx(want)


@pytest.mark.parametrize("K", [1, 5, 10])
def test_authors_flavour_is_adam_with_delta_equal_to_lr_and_fresh_batches(K):
    config = get_config("har2", "fw", "paper", K=K, flavour="authors")
    assert config.optimizer == "adam"
    assert config.delta == config.lr
    assert configs.batches_per_step(config) == K
    # The authors' K=10 runs used lr 6e-4 and batch 32, K=1 and K=5 lr 1e-3 and batch 128.
    assert (config.lr, config.batch_size) == ((6e-4, 32) if K == 10 else (1e-3, 128))


def test_alg1_flavour_is_sgd_on_one_batch_per_step():
    config = get_config("adding", "fw", "cpu", K=5, flavour="alg1")
    assert config.optimizer == "sgd"
    assert configs.batches_per_step(config) == 1 and (config.delta, config.lr) == (0.1, 1.0)


def test_tbptt_fw_takes_its_inner_steps_from_chunks_not_batches():
    config = get_config("pixel_mnist", "tbptt_fw", "paper", K=5, flavour="authors")
    assert configs.batches_per_step(config) == 1 and config.chunk_length == 196


def test_paper_preset_follows_the_authors_scripts():
    har = get_config("har2", "adam", "paper")
    assert (har.hidden, har.batch_size, har.lr, har.epochs) == (80, 128, 1e-3, 300)
    assert har.lr_decay_epochs == (100, 200) and har.lr_decay_factor == 0.1
    indrnn = get_config("pixel_mnist", "indrnn", "paper")
    assert (indrnn.cell, indrnn.depth, indrnn.hidden, indrnn.dropout) == ("indrnn", 6, 128, 0.1)
    assert (indrnn.lr, indrnn.batch_size, indrnn.weight_decay) == (2e-4, 32, 1e-4)
    assert get_config("permuted_mnist", "adam", "paper").batch_size == 128
    assert get_config("pixel_mnist", "fw", "paper", K=1).lr == 2e-4


def test_cpu_preset_is_a_smaller_budget_than_paper():
    for task in TASKS:
        cpu, paper = get_config(task, "sgd", "cpu"), get_config(task, "sgd", "paper")
        if task == "adding":
            assert cpu.steps < paper.steps
        else:
            assert cpu.epochs < paper.epochs
    assert get_config("pixel_mnist", "adam", "cpu").train_size == 20000
    assert get_config("adding", "sgd", "cpu", length=400).steps == 2000


@pytest.mark.parametrize("preset", configs.PRESETS)
@pytest.mark.parametrize("task", list(TASKS))
def test_table_runs_have_distinct_names(task, preset):
    runs = table_for(task, preset)
    names = [configs.run_name(run) for run in runs]
    assert len(names) == len(set(names))
    fw = [run for run in runs if configs.is_fw(run)]
    assert {run.flavour for run in fw} == set(configs.FLAVOURS)


def test_paper_tables_have_every_row():
    assert list(PAPER_TABLE2) == list(TABLE2_ROWS)
    assert len(PAPER_TABLE2) == 12
    assert PAPER_TABLE2["IndRNN+Ours"] == (96.55, 0.13, 92.15)
    assert PAPER_TABLE1["pixel_mnist"]["Baseline"] == (98.88, 4.84)
    for method, _ in TABLE2_ROWS.values():
        assert method in TASKS["har2"].methods


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("mnist", "sgd", "cpu"), {}, "unknown task 'mnist'"),
        (("har2", "rmsprop", "cpu"), {}, "unknown method 'rmsprop'"),
        (("har2", "sgd", "gpu"), {}, "unknown preset 'gpu'"),
        (("adding", "indrnn", "cpu"), {}, "does not fit task 'adding'"),
        (("har2", "fw", "cpu"), {"flavour": "torch"}, "unknown flavour 'torch'"),
        (("har2", "sgd", "cpu"), {"K": 5}, "Frank-Wolfe methods only"),
        (("har2", "fw", "cpu"), {"K": 0}, "K must be an int >= 1"),
        (("har2", "fw", "cpu"), {"epochs": 0}, "epochs must be >= 1, got epochs=0"),
        (("har2", "fw", "cpu"), {"epochs": 1.5}, "epochs must be int | None, got epochs=1.5"),
        (("har2", "fw", "cpu"), {"hiden": 3}, "unknown config field"),
        (("har2", "sgd", "cpu"), {"seed": -1}, "seed must be >= 0, got seed=-1"),
        (("har2", "sgd", "cpu"), {"lr": float("nan")}, "lr must be a finite number > 0"),
        (("har2", "sgd", "cpu"), {"dropout": 1.0}, "dropout must be in"),
        (("har2", "sgd", "cpu"), {"cell": "rnn"}, "unknown cell 'rnn'"),
        (("har2", "sgd", "cpu"), {"optimizer": "lion"}, "unknown optimizer 'lion'"),
        (("har2", "fw", "cpu"), {"p": 0.5}, "p must be >= 1"),
        (("adding", "sgd", "cpu"), {"steps": 150}, "multiple of eval_every"),
    ],
)
def test_bad_input_raises_value_error_naming_it(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_config(*args, **kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lr=3e-4", ("lr", 3e-4)),
        ("hidden=64", ("hidden", 64)),
        ("clip=none", ("clip", None)),
        ("clip=0.5", ("clip", 0.5)),
        ("batch_norm=true", ("batch_norm", True)),
        ("lr_decay_epochs=100,200", ("lr_decay_epochs", (100, 200))),
        ("lr_decay_epochs=", ("lr_decay_epochs", ())),
        ("p=inf", ("p", float("inf"))),
        ("cell=gru", ("cell", "gru")),
        ("unroll=none", ("unroll", None)),
    ],
)
def test_set_reads_each_value_as_its_fields_type(text, expected):
    assert parse_setting(text) == expected


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        (["hiden=3"], "unknown field 'hiden'"),
        (["hidden=3.5"], "hidden must be int, got '3.5'"),
        (["lr=fast"], "lr must be float, got 'fast'"),
        (["batch_norm=yes"], "batch_norm must be bool"),
        (["hidden"], "takes field=value"),
        (["K=5"], "use --K"),
        (["seed=1"], "use --seed"),
        (["lr=1", "lr=2"], "gives lr twice"),
        (["lr=none"], "lr must be float, got 'none'"),
    ],
)
def test_set_refuses_unknown_fields_and_bad_values_naming_them(texts, match):
    with pytest.raises(ValueError, match=match):
        parse_settings(texts)


def test_an_override_changes_the_config_and_its_run_name_but_the_budget_does_not():
    plain = get_config("har2", "sgd", "cpu")
    changed = get_config("har2", "sgd", "cpu", **parse_settings(["lr=0.05", "hidden=64"]))
    assert (changed.lr, changed.hidden) == (0.05, 64)
    assert configs.overrides(changed) == {"lr": 0.05, "hidden": 64}
    assert configs.run_name(changed) == "sgd_hidden64_lr0.05_cpu_seed0" != configs.run_name(plain)
    longer = get_config("har2", "sgd", "cpu", epochs=50)
    assert configs.overrides(longer) == {"epochs": 50}
    assert configs.run_name(longer) == configs.run_name(plain)
    # Setting a field to its table value is no override.
    same = get_config("har2", "sgd", "cpu", lr=plain.lr)
    assert configs.run_name(same) == configs.run_name(plain)


def test_fw_names_keep_k_flavour_and_adaptive_k_tags():
    config = get_config("adding", "fw", "cpu", K=5, flavour="alg1", gap_tol=0.3, length=200)
    assert configs.run_name(config) == "fw_K5_alg1_gaptol0.3_cpu_seed0"
    assert configs.task_dir(config) == "adding_T200"
    open_loop = get_config("har2", "fw", "cpu", K=5, flavour="alg1", step_rule="open_loop")
    assert configs.run_name(open_loop) == "fw_K5_alg1_open_loop_cpu_seed0"


def test_every_committed_summary_is_named_and_filed_as_its_configuration_says():
    """The committed runs keep their files: each summary's recorded configuration (fields it
    predates at their defaults, fields since removed dropped) gives its name and folder."""
    fields = {f.name for f in dataclasses.fields(configs.Config)}
    summaries = [p for p in sorted((ROOT / "results").rglob("*.json"))
                 if is_summary(json.loads(p.read_text()))]  # fmt: skip
    assert len(summaries) > 100
    for path in summaries:
        summary = json.loads(path.read_text())
        recorded = configs.recorded_config(summary["config"])
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()}
        run = configs.Config(**{k: v for k, v in values.items() if k in fields})
        assert configs.run_name(run) == summary["run"] == path.stem, path
        assert configs.task_dir(run) == path.parent.name, path


def test_overrides_hold_the_configs_own_values_though_equal_configs_share_the_cache():
    as_int = get_config("har2", "sgd", "cpu", lr=1)
    as_float = get_config("har2", "sgd", "cpu", lr=1.0)
    assert as_int == as_float and hash(as_int) == hash(as_float)
    assert json.dumps(configs.overrides(as_int)) == '{"lr": 1}'
    assert json.dumps(configs.overrides(as_float)) == '{"lr": 1.0}'
    configs.overrides(as_int)["hidden"] = 3  # a copy: the next caller's is untouched
    assert configs.overrides(as_int) == {"lr": 1}


def test_config_is_plain_data_that_imports_no_registry():
    assert configs.Config is config.Config  # configs re-exports it
    code = (
        "import sys, benchmarks.registry.config\n"
        "print(*sorted(m for m in sys.modules if m.startswith('benchmarks')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["benchmarks", "benchmarks.registry", "benchmarks.registry.config"]
