"""benchmarks/training/checkpoints.py: when the save action writes, what a checkpoint records
(the stretches of steps and their machines), and what resuming refuses."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.training.checkpoints import Checkpoints, Saver, stretches
from benchmarks.training.step import TrainState

HERE, THERE = {"cpu": "here"}, {"cpu": "there"}


def _state(value: float = 0.0) -> TrainState:
    return TrainState(jnp.int32(0), {"w": jnp.full(3, value)}, {}, (), jnp.zeros(2, jnp.uint32))


def _saved(directory) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


@pytest.mark.parametrize(
    ("every_s", "every_steps", "bad"),
    [(-1.0, None, "every_s=-1.0"), (60.0, 0, "every_steps=0"), (60.0, 2.5, "every_steps=2.5")],
)
def test_bad_checkpoint_intervals_are_refused_by_name(every_s, every_steps, bad, tmp_path):
    with pytest.raises(ValueError, match=re.escape(bad)):
        Checkpoints(tmp_path, every_s=every_s, every_steps=every_steps)


def test_the_save_action_writes_when_due_by_steps_or_when_told_now(tmp_path):
    saver = Saver(Checkpoints(tmp_path / "c", every_s=1e9, every_steps=4, meta={"r": 1}))
    for step in (2, 4, 6):
        saver(_state(step), step, float(step), [None])
    saver(_state(7), 7, 7.0, [None], now=True)
    saver.close()
    assert _saved(tmp_path / "c") == [4, 7]  # every 4 steps from 0, then the one asked for


def test_without_checkpoints_nothing_is_saved_and_one_stretch_is_recorded():
    saver = Saver(None)
    saver(_state(), 4, 1.0, [None], now=True)
    assert not saver.enabled
    assert saver.resume(_state(), 8) is None
    assert saver.trained_on(4) == [{"machine": None, "from_step": 0, "to_step": 4}]


def test_a_resumed_run_restores_the_state_and_extends_its_stretch_on_the_same_machine(tmp_path):
    ckpt = Checkpoints(tmp_path / "c", every_s=0.0, meta={"r": 1}, machine=HERE)
    first = Saver(ckpt)
    first(_state(3.0), 4, 2.5, [None], now=True)
    first.close()
    second = Saver(ckpt)
    resumed = second.resume(_state(), 8)
    np.testing.assert_array_equal(resumed.state.params["w"], [3.0] * 3)
    assert (resumed.step, resumed.wall_time_s, resumed.diverged) == (4, 2.5, [None])
    assert second.trained_on(8) == [{"machine": HERE, "from_step": 0, "to_step": 8}]
    with pytest.raises(ValueError, match=re.escape("at step 4, beyond the 2 steps asked for")):
        Saver(ckpt).resume(_state(), 2)
    other = Checkpoints(tmp_path / "c", every_s=0.0, meta={"r": 2})
    with pytest.raises(ValueError, match="written by another configuration"):
        Saver(other).resume(_state(), 8)


def test_stretches_merge_on_the_same_machine_and_split_on_another():
    one = stretches([], HERE, 0, 4)
    assert one == [{"machine": HERE, "from_step": 0, "to_step": 4}]
    assert stretches(one, HERE, 4, 9) == [{"machine": HERE, "from_step": 0, "to_step": 9}]
    assert stretches(one, THERE, 4, 9) == [*one, {"machine": THERE, "from_step": 4, "to_step": 9}]
