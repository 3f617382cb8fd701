"""benchmarks/training/stopping.py: signals honoured at the next evaluation point, a second
one at once; divergence found at each seed's first non-finite loss; a diverged seed frozen."""

import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.training.step import TrainState
from benchmarks.training.stopping import Diverged, Stopped, freeze, nonfinite, stop_on_signals

from tests import ROOT


def test_a_second_signal_ends_the_process_at_once():
    """The first SIGINT (Ctrl-C) only asks the loop to save and stop; the second one is not
    waited on: the process ends by the signal."""
    code = (
        "import os, signal, time\n"
        "from benchmarks.training.stopping import stop_on_signals\n"
        "with stop_on_signals(True) as received:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    print(received, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
        "    print('still running', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.stdout.strip() == f"[{int(signal.SIGINT)}]"
    assert done.returncode == -signal.SIGINT


def test_a_signal_inside_the_block_is_only_recorded_and_the_handlers_come_back_after_it():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(True) as received:
        signal.raise_signal(signal.SIGTERM)
        assert received == [int(signal.SIGTERM)]
    assert signal.getsignal(signal.SIGTERM) is before


def test_disabled_signals_keep_their_usual_effect():
    # Python's own SIGINT handler, set here: a suite started in the background (nohup, &)
    # inherits SIGINT ignored, and Python then installs no handler of its own.
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with stop_on_signals(False) as received, pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, outside)
    assert received == []


def test_each_seed_diverges_at_its_own_first_nonfinite_loss():
    losses = np.array([[1.0, 1.0, 1.0], [np.nan, 1.0, 1.0], [np.inf, np.inf, 1.0]])
    params = {"w": jnp.zeros((3, 2))}
    found = nonfinite(losses, TrainState(0, params, {}, (), 0), 10, (7, 8, 9), "run", False, True)
    assert sorted(found) == [0, 1]
    assert (found[0].step, found[0].seed, np.isnan(found[0].loss)) == (12, 7, True)
    assert (found[1].step, found[1].seed, found[1].loss) == (13, 8, float("inf"))
    assert "outer step 13 (seed 8)" in str(found[1])


def test_when_updates_are_skipped_only_nonfinite_parameters_count():
    losses = np.full((2, 2), np.nan)
    params = {"w": jnp.array([[1.0, 2.0], [1.0, jnp.nan]])}
    found = nonfinite(losses, TrainState(0, params, {}, (), 0), 4, (0, 1), "run", True, True)
    assert list(found) == [1]
    assert found[1].step == 6
    assert "parameters are no longer finite" in str(found[1])


def test_a_frozen_seed_keeps_its_state_and_the_live_one_moves_on():
    def state(value):
        return TrainState(jnp.int32(4), {"w": jnp.full((2, 3), value)}, {}, (), jnp.zeros((2, 2)))

    frozen = freeze(state(1.0), state(0.0), [True, False])
    np.testing.assert_array_equal(frozen.params["w"], [[1.0] * 3, [0.0] * 3])


def test_diverged_and_stopped_say_what_happened():
    error = Diverged("loss nan", step=5, loss=float("nan"), seed=2)
    again = Diverged.from_dict(error.as_dict())
    assert (again.step, again.seed, str(again), np.isnan(again.loss)) == (5, 2, "loss nan", True)
    stopped = Stopped(40, signal.SIGINT)
    assert (stopped.step, stopped.signum) == (40, signal.SIGINT)
    assert "stopped by SIGINT at step 40" in str(stopped)
