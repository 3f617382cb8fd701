"""The hyper-parameter tables (benchmarks/configs.py): every row resolves, flavours, errors."""

import pytest

from benchmarks import configs
from benchmarks.configs import get_config, table_for

PAIRS = [(task, method) for task in configs.TASKS for method in configs.TASK_METHODS[task]]


@pytest.mark.parametrize("preset", configs.PRESETS)
@pytest.mark.parametrize(("task", "method"), PAIRS)
def test_every_pair_resolves_under_every_preset(task, method, preset):
    config = get_config(task, method, preset)
    assert (config.task, config.method, config.preset) == (task, method, preset)
    assert config.lr > 0 and config.hidden >= 1 and config.batch_size >= 1
    if task == "adding":
        assert config.steps % config.eval_every == 0
    else:
        assert config.epochs >= 1
    assert (config.flavour is not None) == (method in configs.FW_METHODS)


@pytest.mark.parametrize("K", [1, 5, 10])
def test_authors_flavour_is_adam_with_delta_equal_to_lr_and_fresh_batches(K):
    config = get_config("har2", "fw", "paper", K=K, flavour="authors")
    assert config.optimizer == "adam"
    assert config.delta == config.eta == config.lr
    assert config.batches_per_step == K
    # The authors' K=10 runs used lr 6e-4 and batch 32, K=1 and K=5 lr 1e-3 and batch 128.
    assert (config.lr, config.batch_size) == ((6e-4, 32) if K == 10 else (1e-3, 128))


def test_alg1_flavour_is_sgd_on_one_batch_per_step():
    config = get_config("adding", "fw", "cpu", K=5, flavour="alg1")
    assert config.optimizer == "sgd" and config.lr == config.eta
    assert config.batches_per_step == 1 and (config.delta, config.eta) == (0.1, 1.0)


def test_tbptt_fw_takes_its_inner_steps_from_chunks_not_batches():
    config = get_config("pixel_mnist", "tbptt_fw", "paper", K=5, flavour="authors")
    assert config.batches_per_step == 1 and config.chunk_length == 196


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
    for task in configs.TASKS:
        cpu, paper = get_config(task, "sgd", "cpu"), get_config(task, "sgd", "paper")
        if task == "adding":
            assert cpu.steps < paper.steps
        else:
            assert cpu.epochs < paper.epochs
    assert get_config("pixel_mnist", "adam", "cpu").train_size == 20000
    assert get_config("adding", "sgd", "cpu", length=400).steps == 1000


@pytest.mark.parametrize("preset", configs.PRESETS)
@pytest.mark.parametrize("task", configs.TASKS)
def test_table_runs_have_distinct_names(task, preset):
    runs = table_for(task, preset)
    names = [run.run_name for run in runs]
    assert len(names) == len(set(names))
    fw = [run for run in runs if run.is_fw]
    assert {run.flavour for run in fw} == set(configs.FLAVOURS)


def test_paper_tables_have_every_row():
    assert list(configs.PAPER_TABLE2) == list(configs.TABLE2_ROWS)
    assert len(configs.PAPER_TABLE2) == 12
    assert configs.PAPER_TABLE2["IndRNN+Ours"] == (96.55, 0.13, 92.15)
    assert configs.PAPER_TABLE1["pixel_mnist"]["Baseline"] == (98.88, 4.84)
    for method, _ in configs.TABLE2_ROWS.values():
        assert method in configs.TASK_METHODS["har2"]


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
        (("har2", "fw", "cpu"), {"epochs": 0}, "epochs must be an int >= 1"),
        (("har2", "fw", "cpu"), {"hiden": 3}, "unknown config field"),
        (("adding", "sgd", "cpu"), {"steps": 150}, "multiple of eval_every"),
    ],
)
def test_bad_input_raises_value_error_naming_it(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_config(*args, **kwargs)
