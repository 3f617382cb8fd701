"""One run's settings as plain data: :class:`Config`.

The task and method registries (``benchmarks.registry.tasks``, ``benchmarks.registry.methods``)
take a ``Config`` and this module imports none of them; what follows from a configuration
through the registries (a Frank-Wolfe method or not, the run's name and folder, the settings
that differ from the tables) are functions of ``benchmarks.registry.configs``.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything one run needs; built by ``configs.get_config`` from the registries.

    Budget: ``steps`` outer steps for generated data (adding), else ``epochs`` passes over the
    training set (an FW outer step of the ``authors`` flavour eats K mini-batches, so it has
    K times fewer outer steps per epoch). ``eval_every`` is in outer steps (adding) and
    ``evals_per_epoch`` sets it for datasets: an epoch is then ``evals_per_epoch`` intervals
    of ``floor(steps_per_epoch / evals_per_epoch)`` outer steps, so a run may see up to
    ``evals_per_epoch`` outer steps per epoch fewer than a full pass (the summaries record
    the epochs actually run). ``lr`` is the outer learning rate of every method (Algorithm
    1's η for Frank-Wolfe).
    """

    task: str
    method: str
    preset: str
    seed: int = 0
    # model
    cell: str = "simple"
    hidden: int = 128
    depth: int = 1
    batch_norm: bool = False
    layer_batch_norm: bool = False
    dropout: float = 0.0
    indrnn_gamma: float = 2.0
    unroll: int | None = None  # None: the models' own per-backend default (models.default_unroll)
    # optimizer
    optimizer: str = "adam"
    lr: float = 1e-3
    clip: float | None = None
    grad_clamp: float | None = None
    weight_decay: float = 0.0
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_factor: float = 1.0
    on_nonfinite: str = "stop"  # "skip": optax.apply_if_finite skips non-finite updates
    # Frank-Wolfe
    flavour: str | None = None
    K: int = 1
    delta: float | None = None
    p: float = 2.0
    gap_tol: float | None = None  # adaptive K: stop once the FW gap is below gap_tol * gap_1
    step_rule: str = "average"  # "average" (1/k, the paper) or "open_loop" (2/(k+1))
    fw_mode: str = "sync"  # on several devices: "sync" (every gradient averaged) or "local"
    k1_steps: int | None = None  # the authors' adding protocol: K = 1 for these outer steps
    # truncated BPTT
    chunk_length: int | None = None
    # data and budget
    batch_size: int = 128
    length: int | None = None
    steps: int | None = None
    eval_every: int | None = None
    epochs: int | None = None
    evals_per_epoch: int = 1
    train_size: int | None = None
    test_size: int | None = None
    eval_batch_size: int = 1000
