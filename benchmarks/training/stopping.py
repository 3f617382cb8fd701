"""When a run stops early: a signal (SIGTERM from a scheduler or ``timeout``, SIGINT from
Ctrl-C), honoured at the next evaluation point after a save, and divergence, a non-finite
training loss (or, where the optimizer skips non-finite updates, non-finite parameters).
Under ``train_seeds`` a diverged seed is frozen at its last finite evaluation while the
others train on (:func:`freeze`)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class Diverged(RuntimeError):
    """Training produced a non-finite loss (or, when updates are skipped, parameters)."""

    def __init__(self, message: str, *, step: int, loss: float, seed: int | None = None):
        super().__init__(message)
        self.step, self.loss, self.seed = step, loss, seed

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "loss": str(self.loss), "seed": self.seed, "message": str(self)}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Diverged:
        return cls(saved["message"], step=saved["step"], loss=float(saved["loss"]),
                   seed=saved["seed"])  # fmt: skip


class Stopped(Exception):
    """SIGTERM (a job scheduler, ``timeout``, ``kill``) or SIGINT (Ctrl-C) stopped a
    checkpointed run at its next evaluation point, after saving that step: the same command
    continues from it. ``signum`` is the signal."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at step {step}, which is saved: run the same command again "
            "to continue"
        )
        self.step = step
        self.signum = signum


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(enabled: bool) -> Iterator[list[int]]:
    """Within the block (if ``enabled``), SIGTERM and SIGINT (Ctrl-C) only append their number
    to the list it yields, which the loop honours at its next evaluation point by saving and
    stopping; a second signal ends the process at once. Python runs signal handlers in the
    main thread only, so elsewhere both signals keep their usual effect."""
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received:  # the second one: the default action, now
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)


def nonfinite(losses, state, interval, seeds, desc, skip_nonfinite, vmapped) -> dict[int, Diverged]:
    """The runs whose training went non-finite in this interval, each with its
    :class:`Diverged`: at its first non-finite training loss, or, when the optimizer skips
    non-finite updates, once its parameters themselves are no longer finite."""
    if skip_nonfinite:
        step = interval + losses.shape[0]
        return {
            int(r): Diverged(
                f"{desc}: the parameters are no longer finite at outer step {step} (seed "
                f"{seeds[r]}), although non-finite updates are skipped",
                step=step,
                loss=float("nan"),
                seed=seeds[r],
            )
            for r in np.flatnonzero(~params_finite(state.params, vmapped))
        }
    found: dict[int, Diverged] = {}
    for i, r in np.argwhere(~np.isfinite(losses)):  # row-major: each run's earliest step first
        if int(r) in found:
            continue
        step = interval + int(i) + 1
        loss = float(losses[i, r])
        found[int(r)] = Diverged(
            f"{desc}: the training loss is {loss} at outer step {step} (seed {seeds[r]}); the "
            "run stopped there. Lower the learning rate, clip the gradients, or skip such "
            "updates (--on-nonfinite skip)",
            step=step,
            loss=loss,
            seed=seeds[r],
        )
    return found


def freeze(state: Any, before: Any, live: list[bool]) -> Any:
    """``state`` for the live seeds, ``before`` (their last finite state) for the others."""
    keep = np.asarray(live)

    def pick(new, old):
        return jnp.where(keep.reshape(-1, *(1,) * (np.ndim(new) - 1)), new, old)

    fields = ("params", "model_state", "opt_state", "rng")
    return state.replace(
        **{f: jax.tree.map(pick, getattr(state, f), getattr(before, f)) for f in fields}
    )


def params_finite(params: Any, vmapped: bool) -> np.ndarray:
    """Per run (one entry, or one per seed under vmap): are all parameters finite?"""

    def per_run(x):
        ok = jnp.isfinite(x)
        return ok.reshape(ok.shape[0], -1).all(axis=1) if vmapped else ok.all()[None]

    return np.logical_and.reduce([np.asarray(per_run(x)) for x in jax.tree.leaves(params)])
