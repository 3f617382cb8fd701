"""Data parallelism over the host's CPU cores (or any devices): one training run, every core.

XLA:CPU runs one device's program on about one core: the recurrence is a chain of small
matmuls (``[B, H] x [H, H]`` per time step) too small to split across threads. Splitting
the host into one JAX device per core and the batch over them gives each core its own
``B / n`` rows of every step. What a user sets, before JAX starts (``use_cpu_devices()``
does it, one device per core, unless the environment already says how many)::

    JAX_NUM_CPU_DEVICES=2 python ...            # or, first thing after `import jax`:
    jax.config.update("jax_num_cpu_devices", 2)  # what `use_cpu_devices(2)` does

Why ``jax.shard_map`` and not ``jax.jit`` with a sharded batch: under ``jit`` the SPMD
partitioner does split the recurrence over the batch, but it all-reduces the weight
gradient *inside* the backward time loop, once per time step (T all-reduces of the
``H x H`` kernel per gradient, K·T per Frank-Wolfe step), and every all-reduce is a
rendezvous of the device threads. That step ran slower than one device on one core.
Inside ``shard_map`` each device runs the single-device program on its shard and the
gradient is averaged once per gradient evaluation (:func:`mean_gradient`): K all-reduces
per outer step, each outside every loop over time.

The pieces, in the order a training loop uses them::

    use_cpu_devices()                             # before any JAX computation
    mesh = data_mesh()                            # 1-D mesh, axis "data"
    loss = data_parallel_loss(loss_fn)            # value and gradient: means over devices
    step = data_parallel(step_fn, mesh, in_specs=(P(), P(), batch_spec()), out_specs=P())
    params, opt_state, l = step(params, opt_state, shard_batch(batch, mesh))

``step_fn`` is the single-device step, written against ``loss``: every gradient it takes,
including the ones ``fw_optax.frank_wolfe`` takes inside its inner loop through
``value_fn``, is the gradient of the global batch, so the step equals the single-device
step on the whole batch (to float rounding).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def default_device_count() -> int:
    """The number of CPU cores this process may run on: one JAX CPU device per core."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def requested_device_count() -> int | None:
    """The CPU device count the user asked for, if any.

    ``JAX_NUM_CPU_DEVICES`` (or an earlier ``jax_num_cpu_devices`` update) first, then
    ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``.
    """
    configured = jax.config.jax_num_cpu_devices
    if configured > 0:
        return configured
    flag = re.search(
        r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", "")
    )
    return int(flag.group(1)) if flag else None


def use_cpu_devices(count: int | None = None) -> int:
    """Split the host CPU into ``count`` JAX devices.

    Sets ``jax_num_cpu_devices``, which JAX reads when it starts its backends: call this
    before any JAX computation. ``count=None`` keeps what the user asked for in the
    environment (:func:`requested_device_count`), else one device per core. Calling it
    again once JAX has started is fine if the count already matches.

    Returns:
      The number of CPU devices JAX will use.

    Raises:
      ValueError: ``count < 1``.
      RuntimeError: JAX already started with a different number of CPU devices.
    """
    if count is None:
        count = requested_device_count() or default_device_count()
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an int >= 1, got count={count!r}.")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        started = len(jax.devices("cpu"))
        if started != count:
            raise RuntimeError(
                f"JAX already started with {started} CPU device(s); {count} were asked for. "
                "Call use_cpu_devices before any JAX computation, or set "
                f"JAX_NUM_CPU_DEVICES={count} in the environment."
            ) from None
    return count


def start_cpu_devices(devices: int | None) -> None:
    """What a command-line entry point calls first: :func:`use_cpu_devices` for a run.

    ``devices=None`` asks for the default (the environment's count, else one device per
    core) and accepts whatever JAX already started with, e.g. when the entry point's
    ``main`` is called from Python; an explicit count that JAX cannot give is an error.
    """
    try:
        use_cpu_devices(devices)
    except RuntimeError:
        if devices is not None:
            raise


def data_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of the default backend)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device.")
    return Mesh(np.array(devices), (axis_name,))


def training_mesh(devices: int | None, batch_size: int) -> Mesh | None:
    """The data mesh a training run uses, or ``None`` to run on one device.

    ``devices``: how many local devices to split each batch over (``None``: all). A batch
    that they cannot split evenly runs on one device.

    Raises:
      ValueError: ``devices`` is not in ``1..len(jax.local_devices())``.
    """
    available = jax.local_devices()
    count = len(available) if devices is None else devices
    if isinstance(count, bool) or not 1 <= count <= len(available):
        raise ValueError(f"devices must be in 1..{len(available)}, got devices={devices!r}.")
    if count == 1 or batch_size % count:
        return None
    return data_mesh(available[:count])


def per_device_batch(batch_size: int, num_devices: int) -> int:
    """``batch_size / num_devices``; a clear error when the batch does not split evenly.

    Equal shards make the mean of the per-device mean losses the global mean loss.
    """
    if batch_size % num_devices:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {num_devices} devices of the "
            f"data axis; use a batch size that is a multiple of {num_devices}."
        )
    return batch_size // num_devices


def batch_spec(batch_axis: int = 0, axis_name: str = DATA_AXIS) -> PartitionSpec:
    """The ``PartitionSpec`` that splits array axis ``batch_axis`` over the data axis."""
    return PartitionSpec(*([None] * batch_axis), axis_name)


def shard_batch(batch: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """Put every leaf of ``batch`` on ``mesh``, split along ``batch_axis``.

    Raises:
      ValueError: a leaf's ``batch_axis`` is not divisible by the number of devices.
    """
    (axis_name,) = mesh.axis_names
    n = mesh.shape[axis_name]
    for leaf in jax.tree.leaves(batch):
        per_device_batch(np.shape(leaf)[batch_axis], n)
    sharding = NamedSharding(mesh, batch_spec(batch_axis, axis_name))
    return jax.device_put(batch, sharding)


def local_shard(batch: Any, axis_name: str = DATA_AXIS, batch_axis: int = 0) -> Any:
    """Inside ``shard_map``: this device's slice of a batch every device holds whole.

    For data made inside the step (e.g. the adding problem, generated from a key): every
    device generates the same global batch and keeps its own rows, so the data equal the
    single-device run's.
    """
    n = jax.lax.axis_size(axis_name)
    index = jax.lax.axis_index(axis_name)

    def take(leaf: jax.Array) -> jax.Array:
        size = per_device_batch(leaf.shape[batch_axis], n)
        return jax.lax.dynamic_slice_in_dim(leaf, index * size, size, axis=batch_axis)

    return jax.tree.map(take, batch)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def mean_gradient(params: Any, axis_name: str = DATA_AXIS) -> Any:
    r"""The identity on ``params``, whose cotangent is averaged over ``axis_name``.

    Inside ``shard_map`` (with ``check_vma=False``), for a loss ``L_d`` of device d's shard,

    .. math::  \nabla_\omega L_d(\mathrm{mean\_gradient}(\omega)) = \frac1n \sum_{d'}
        \nabla L_{d'}(\omega),

    the gradient of the global-batch loss when the shards have equal size: one all-reduce
    per gradient evaluation, placed after the backward pass.
    """
    del axis_name
    return params


def _mean_gradient_fwd(params: Any, axis_name: str) -> tuple[Any, None]:
    del axis_name
    return params, None


def _mean_gradient_bwd(axis_name: str, residual: None, cotangent: Any) -> tuple[Any]:
    del residual
    return (jax.lax.pmean(cotangent, axis_name),)


mean_gradient.defvjp(_mean_gradient_fwd, _mean_gradient_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def mean_value(value: Any, axis_name: str = DATA_AXIS) -> Any:
    """``pmean(value)`` whose cotangent passes through unchanged (to each device's own loss).

    The averaging of the gradient is :func:`mean_gradient`'s job; this one only makes the
    reported value the global one without averaging the gradient twice.
    """
    return jax.lax.pmean(value, axis_name)


def _mean_value_fwd(value: Any, axis_name: str) -> tuple[Any, None]:
    return jax.lax.pmean(value, axis_name), None


def _mean_value_bwd(axis_name: str, residual: None, cotangent: Any) -> tuple[Any]:
    del axis_name, residual
    return (cotangent,)


mean_value.defvjp(_mean_value_fwd, _mean_value_bwd)


def mean_floats(tree: Any, axis_name: str = DATA_AXIS) -> Any:
    """Every floating leaf of ``tree`` averaged over ``axis_name`` (others kept)."""

    def mean(leaf: Any) -> Any:
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            return jax.lax.pmean(leaf, axis_name)
        return leaf

    return jax.tree.map(mean, tree)


def data_parallel_loss(
    loss: Callable[..., Any], axis_name: str = DATA_AXIS, *, has_aux: bool = False
) -> Callable[..., Any]:
    """``loss(params, *args)`` of this device's shard -> the global-batch loss, inside shard_map.

    The returned function has ``loss``'s signature. Its value is the mean over ``axis_name``
    of the per-device values and its gradient with respect to ``params`` (the first
    argument) the mean of the per-device gradients. With ``has_aux``, ``loss`` returns
    ``(value, aux)`` and the floating leaves of ``aux`` (e.g. batch-norm running statistics)
    are averaged too; a batch norm still normalizes with its own shard's statistics.
    """

    def wrapped(params: Any, *args: Any, **kwargs: Any) -> Any:
        out = loss(mean_gradient(params, axis_name), *args, **kwargs)
        if not has_aux:
            return mean_value(out, axis_name)
        value, aux = out
        return mean_value(value, axis_name), mean_floats(aux, axis_name)

    return wrapped


def data_parallel(
    fn: Callable[..., Any], mesh: Mesh, *, in_specs: Any, out_specs: Any
) -> Callable[..., Any]:
    """``jax.jit(jax.shard_map(fn, ...))``: ``fn`` runs on every device on its shard.

    ``fn`` must take its gradients through :func:`data_parallel_loss`; then everything it
    computes from them (the optimizer update, the new parameters) is the same on every
    device and is returned once (``PartitionSpec()`` in ``out_specs``).

    The replication check is off (``check_vma=False``). With it on, a Flax RNN does not
    trace (a scan whose carry starts replicated, the zero state, and turns per-device is
    rejected), and where it does (a hand-written scan with a per-device initial state) JAX
    differentiates the replicated weights by summing their gradient over the devices where
    they meet per-device values: inside the time loop, T all-reduces per gradient, and a
    sum where the global-batch loss needs a mean. :func:`mean_gradient` places the one
    average itself.
    """
    return jax.jit(
        jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    )


_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) ")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%\S+ = (.+?) ([\w\-]+)\(")
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_BITS = {"pred": 8, "bf16": 16}
_COLLECTIVES = frozenset(
    {"all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute"}
)


def _bytes(shape_text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(shape_text):
        bits = _BITS.get(dtype) or int(dtype[1:])
        total += math.prod(int(d) for d in dims.split(",") if d) * bits // 8
    return total


def collectives(hlo_text: str) -> tuple[int, int]:
    """``(count, bytes)`` of the collectives one run of a compiled program executes.

    Read from ``jax.jit(...).lower(...).compile().as_text()``: every all-reduce,
    all-gather, reduce-scatter, all-to-all and collective-permute counts once per trip of
    each ``while`` loop around it (XLA's ``known_trip_count``; a loop without one counts
    once), so an all-reduce inside the backward pass over T time steps counts T times.
    ``bytes`` is the size of their results on one device. Branches of a ``conditional``
    are not followed.
    """
    own: dict[str, list[int]] = {}
    callees: dict[str, list[tuple[str, int]]] = {}
    entry, name = None, None
    for line in hlo_text.splitlines():
        match = _COMPUTATION.match(line)
        if match:
            name = match.group(1)
            entry = name if line.startswith("ENTRY") else entry
            own[name], callees[name] = [], []
            continue
        instruction = _INSTRUCTION.match(line)
        if name is None or instruction is None:
            continue
        if instruction.group(2).removesuffix("-start") in _COLLECTIVES:
            own[name].append(_bytes(instruction.group(1)))
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        for callee in re.findall(r"(?:body|calls|to_apply)=%([\w.\-]+)", line):
            callees[name].append((callee, int(trips.group(1)) if trips else 1))

    @functools.cache
    def executed(comp: str) -> tuple[int, int]:
        count, size = len(own.get(comp, ())), sum(own.get(comp, ()))
        for callee, trips in callees.get(comp, ()):
            sub_count, sub_size = executed(callee)
            count, size = count + trips * sub_count, size + trips * sub_size
        return count, size

    if entry is None:
        raise ValueError("not the text of a compiled HLO module: no ENTRY computation found")
    return executed(entry)
