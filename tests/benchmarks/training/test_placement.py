"""benchmarks/training/placement.py: seeds in one program compute what each seed's own
program computes, and a seed's data and key stay its own."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.training.placement import Placement


def _step(state, xs):
    """Adds the step index and the mean of the host batch to every parameter."""
    index, data = xs
    params = jax.tree.map(lambda p: p + index + data[0].mean(), state.params)
    return state.replace(params=params, step=state.step + 1), data[0].sum()


def test_seeds_in_one_program_equal_each_seed_alone():
    seeds = (3, 4)
    tx = optax.sgd(0.1)
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    together = Placement(runs=2, vmapped=True, mesh=None, generated=False)
    state = together.init_state(tx, params, {}, seeds)
    data = [(np.arange(6.0).reshape(1, 2, 3) * s,) for s in seeds]  # one step's [batches, B, ...]
    both = (np.stack([d[0] for d in data]),)  # the seed axis first within a step
    new, sums = together.per_seed(_step)(state, (jnp.int32(5), both))
    alone = Placement(runs=1, vmapped=False, mesh=None, generated=False)
    for r, seed in enumerate(seeds):
        own = alone.init_state(tx, {"w": params["w"][r]}, {}, (seed,))
        np.testing.assert_array_equal(own.rng, state.rng[r])
        mine, total = alone.per_seed(_step)(own, (jnp.int32(5), data[r]))
        np.testing.assert_allclose(new.params["w"][r], mine.params["w"], rtol=0, atol=0)
        np.testing.assert_allclose(sums[r], total, rtol=0, atol=0)
    assert not np.array_equal(state.rng[0], state.rng[1])


def test_host_data_of_one_call_gets_the_seed_axis_after_the_steps():
    placement = Placement(runs=3, vmapped=True, mesh=None, generated=False)
    per_seed = [(np.full((4, 2, 5, 7), s),) for s in range(3)]  # [steps, batches, B, ...]
    (stacked,) = placement.stack(per_seed)
    assert stacked.shape == (4, 3, 2, 5, 7)
    np.testing.assert_array_equal(stacked[:, 1], per_seed[1][0])
    alone = Placement(runs=1, vmapped=False, mesh=None, generated=False)
    assert alone.stack(per_seed[:1]) is per_seed[0]
