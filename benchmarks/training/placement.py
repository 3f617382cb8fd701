"""Where the loop's steps run: two ways of placing the same step, which compose.

* **Seeds in one program** (``vmapped``): the train state, the host data and the test set
  carry a leading axis, one entry per seed, and the step is ``jax.vmap``-ed over it.
* **Data-parallel devices** (``mesh``): the compiled call runs under ``shard_map`` on a 1-D
  data mesh; every mini-batch is split over the devices and every gradient is their mean
  (or, for local Frank-Wolfe, each device's own), so a step equals the one-device step on
  the whole batch, batch norm aside: each device normalizes with its own shard's statistics.

The loop asks a :class:`Placement` for the pieces that differ (the step's axes, the compiled
call, where arrays go) and is otherwise the same for one run on one device and for several
seeds on several devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from benchmarks.training import parallel
from benchmarks.training.step import Objective, Stream, TrainState


@dataclasses.dataclass(frozen=True)
class Placement:
    """How the steps of ``runs`` seeds are placed.

    Attributes:
      runs: the seeds trained (1 unless ``vmapped``).
      vmapped: the seeds share one program (a leading seed axis everywhere but the step).
      mesh: a data mesh of more than one device, or ``None`` for one device.
      generated: the data is generated inside the step from keys (else read on the host).
    """

    runs: int
    vmapped: bool
    mesh: jax.sharding.Mesh | None
    generated: bool

    @property
    def state_axes(self) -> TrainState:
        """``vmap`` axes of the state: every field but the step has the seed axis."""
        return TrainState(step=None, params=0, model_state=0, opt_state=0, rng=0)

    def per_seed(self, step: Callable[..., Any]) -> Callable[..., Any]:
        """``step(state, (index, data)) -> (state, outputs)`` over the seed axis, if any."""
        if not self.vmapped:
            return step
        data_axes = (None, None if self.generated else 0)
        return jax.vmap(step, in_axes=(self.state_axes, data_axes), out_axes=(self.state_axes, 0))

    def init_state(self, tx: Any, params: Any, model_state: Any, seeds: tuple[int, ...]):
        """The initial :class:`TrainState`, each seed's base key its own."""

        def init(params, model_state, rng):
            return TrainState(jnp.zeros([], jnp.int32), params, model_state, tx.init(params), rng)

        rngs = jnp.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
        if self.vmapped:
            return jax.jit(jax.vmap(init, out_axes=self.state_axes))(params, model_state, rngs)
        return init(params, model_state, rngs[0])

    def evaluate(self, objective: Objective) -> Callable[..., dict[str, Any]]:
        """``objective.evaluate`` compiled, over the seed axis if any."""
        return jax.jit(jax.vmap(objective.evaluate) if self.vmapped else objective.evaluate)

    def compile(self, scan_steps: Callable[..., Any]) -> Any:
        """The jitted call of ``scan_steps(state, (indices, data))``, on the mesh if any."""
        if self.mesh is None:
            return jax.jit(scan_steps)
        data_spec = P() if self.generated else parallel.batch_spec(self._batch_axis)
        return parallel.data_parallel(
            scan_steps, self.mesh, in_specs=(P(), (P(), data_spec)), out_specs=P()
        )

    def place(self, tree: Any) -> Any:
        """``tree`` replicated on the mesh (as it is on one device)."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, jax.sharding.NamedSharding(self.mesh, P()))

    def place_inputs(self, inputs: tuple[Any, Any]) -> tuple[Any, Any]:
        """A call's ``(indices, host data)``: the data split over the mesh's devices."""
        if self.mesh is None:
            return inputs
        indices, data = inputs
        if self.generated:
            return self.place(indices), self.place(data)
        return self.place(indices), parallel.shard_batch(data, self.mesh, self._batch_axis)

    @property
    def _batch_axis(self) -> int:
        """The batch axis of a call's host data: ``[steps, (seeds,) batches, B, ...]``."""
        return 3 if self.vmapped else 2

    def stack(self, per_seed: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        """One call's host data from each seed's ``[steps, batches, B, ...]`` arrays."""
        if not self.vmapped:
            return per_seed[0]
        return tuple(np.stack(parts, axis=1) for parts in zip(*per_seed, strict=True))

    def split(
        self, objective: Objective, stream: Stream, local_gradients: bool
    ) -> tuple[Objective, Callable[[Any], Any]]:
        """The objective and the batch source of one device's shard inside ``shard_map``
        (as they are on one device).

        The loss's value and auxiliary state are the means over the devices; its gradient
        is the mean too, or with ``local_gradients`` the device's own (for local
        Frank-Wolfe, whose transform averages Δ_K itself). Generated batches: every device
        generates the whole step's batch from the same key and keeps its rows.
        """
        if self.mesh is None:
            return objective, lambda to_batches: to_batches
        mesh = self.mesh
        if objective.tbptt is not None:
            raise ValueError(
                "truncated BPTT differentiates its chunk losses inside "
                "benchmarks.training.tbptt, so its gradients would stay per-device: run it on "
                f"one device, not on a mesh of {mesh.size}"
            )
        if stream.generate is None:
            parallel.per_device_batch(stream.batch_size, mesh.size)
        axis = mesh.axis_names[0]
        own_loss = objective.loss
        if local_gradients:

            def loss(params, *args):
                value, aux = own_loss(params, *args)
                return parallel.mean_value(value, axis), parallel.mean_floats(aux, axis)
        else:
            loss = parallel.data_parallel_loss(own_loss, axis, has_aux=True)

        def shard_loss(params, model_state, batch, key):
            # Each device draws its own dropout masks for its own rows.
            key = jax.random.fold_in(key, jax.lax.axis_index(axis))
            return loss(params, model_state, batch, key)

        def shard_batches(to_batches):
            if to_batches is None:  # host data arrives split
                return None
            return lambda key, data: parallel.local_shard(to_batches(key, data), axis, batch_axis=1)

        return dataclasses.replace(objective, loss=shard_loss), shard_batches
