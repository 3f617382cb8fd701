"""One flat buffer for a pytree, and reductions over its leaves as segments of that buffer.

The inner loop of :func:`fw_optax.frank_wolfe` touches every parameter a few times per inner
step (the oracle, the FW gap, the running average). Done leaf by leaf, each of those operations
is one small kernel per tensor, so the optimizer's own cost grows with the number of tensors.
On one buffer each is a single kernel whatever the number of tensors. The buffer has rows of
``BLOCK`` entries and every leaf starts on a new row, so a per-tensor reduction (a norm per
leaf) is a dense reduction per row followed by a tiny one over each leaf's rows: no scatter
over all n entries, which XLA:CPU runs one element at a time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def compute_dtype(dtypes: list[jnp.dtype]) -> jnp.dtype:
    """The dtype the oracle and the running average use: the leaves' common type, >= float32.

    Half-precision powers, sums and running averages lose too much, so bf16/fp16 leaves are
    promoted; a float64 leaf (with ``jax_enable_x64``) keeps float64 for all.
    """
    return jnp.promote_types(jnp.result_type(*dtypes, jnp.float32), jnp.float32)


# jax.tree_util.PyTreeDef, which mypy cannot resolve: jaxlib ships no type stubs for it.
TreeDef = Any

BLOCK = 128  # entries per row of the buffer; every leaf starts on a new row


@dataclasses.dataclass(frozen=True)
class Segments:
    """Contiguous runs of rows of a ``[rows, BLOCK]`` buffer: reductions per segment.

    A reduction is two dense steps: one over each row (a single kernel for the whole buffer),
    then one over the few row results of each segment (a sorted segment reduction of ``rows``
    values, ``BLOCK`` times fewer than entries). With one segment (a single ball over the
    whole pytree) it is a plain ``jnp.sum``/``jnp.max``. Padding entries must be 0.

    Attributes:
      rows: the number of rows of each segment, in order.
    """

    rows: tuple[int, ...]

    @property
    def count(self) -> int:
        """The number of segments L."""
        return len(self.rows)

    @property
    def row_ids(self) -> np.ndarray:
        """The segment of every row, shape ``[rows]`` (a compile-time constant)."""
        return np.repeat(np.arange(self.count, dtype=np.int32), self.rows)

    def _reduce_rows(self, per_row: jax.Array, op: Callable[..., jax.Array]) -> jax.Array:
        return op(per_row, jnp.asarray(self.row_ids), self.count, indices_are_sorted=True)

    def sum(self, x: jax.Array) -> jax.Array:
        """Per-segment sums of a buffer ``x``: shape ``[L]``."""
        if self.count == 1:
            return jnp.sum(x).reshape(1)
        return self._reduce_rows(jnp.sum(x, axis=1), jax.ops.segment_sum)

    def max(self, x: jax.Array) -> jax.Array:
        """Per-segment maxima of a buffer ``x >= 0``: shape ``[L]``; 0 for an empty segment."""
        if self.count == 1:
            return jnp.max(x, initial=0).reshape(1)
        return jnp.maximum(self._reduce_rows(jnp.max(x, axis=1), jax.ops.segment_max), 0)

    def first(self, mask: jax.Array) -> jax.Array:
        """Per segment, the flat index of the first ``True`` entry of ``mask`` (``n`` if none)."""
        n = mask.size
        index = jnp.where(mask, jnp.arange(n, dtype=jnp.int32).reshape(mask.shape), n)
        if self.count == 1:
            return jnp.min(index).reshape(1)
        return self._reduce_rows(jnp.min(index, axis=1), jax.ops.segment_min)

    def expand(self, values: jax.Array) -> jax.Array:
        """Per-segment ``values`` (shape ``[L]``) broadcastable against the buffer."""
        if self.count == 1:
            return values[0]
        return jnp.take(values, jnp.asarray(self.row_ids))[:, None]


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a pytree of arrays lies in one ``[rows, BLOCK]`` buffer of a single floating dtype.

    Built at trace time from the leaves' static shapes and dtypes. ``ravel`` concatenates the
    leaves (cast to ``dtype``), each padded with zeros to whole rows so that per-leaf
    reductions are row reductions; ``unravel`` slices them back, each in its own dtype, so
    mixed bf16/f32 (or f32/f64) pytrees round-trip.

    Attributes:
      treedef: the pytree structure.
      shapes: the leaves' shapes.
      dtypes: the leaves' dtypes.
      dtype: the buffer's dtype, :func:`compute_dtype` of the leaves.
      specs: per leaf, its ``PartitionSpec`` if it is sharded over an explicit mesh axis, else
        None. Such leaves join the buffer replicated and leave it with their own sharding
        again (an explicit mesh refuses to concatenate differently sharded operands).
    """

    treedef: TreeDef
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[jnp.dtype, ...]
    dtype: jnp.dtype
    specs: tuple[Any, ...] = ()

    @classmethod
    def of(cls, tree: Any) -> Layout:
        """The layout of ``tree``; raises ``ValueError`` naming a non-floating leaf."""
        leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
        for path, leaf in leaves_with_path:
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise ValueError(
                    "frank_wolfe and its oracles need floating-point arrays, got dtype "
                    f"{jnp.result_type(leaf)} at {jax.tree_util.keystr(path) or 'the root'}."
                )
        leaves = [leaf for _, leaf in leaves_with_path]
        dtypes = tuple(jnp.result_type(leaf) for leaf in leaves)
        return cls(
            treedef=treedef,
            shapes=tuple(tuple(jnp.shape(leaf)) for leaf in leaves),
            dtypes=dtypes,
            dtype=compute_dtype(list(dtypes)) if dtypes else jnp.dtype(jnp.float32),
            specs=tuple(_explicit_spec(leaf) for leaf in leaves),
        )

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def size(self) -> int:
        """The number of parameters n (padding excluded)."""
        return sum(self.sizes)

    @property
    def rows(self) -> tuple[int, ...]:
        """The rows each leaf occupies (at least one, so an empty leaf keeps its segment)."""
        return tuple(max(1, -(-size // BLOCK)) for size in self.sizes)

    @property
    def leaf_segments(self) -> Segments:
        """One segment per leaf."""
        return Segments(self.rows)

    @property
    def one_segment(self) -> Segments:
        """The whole buffer as a single segment."""
        return Segments((sum(self.rows),))

    def ravel(self, tree: Any) -> jax.Array:
        """The leaves of ``tree`` (this layout's structure) as one zero-padded buffer."""
        parts = []
        for leaf, size, rows, spec in zip(
            self.treedef.flatten_up_to(tree), self.sizes, self.rows, self.specs, strict=True
        ):
            if spec is not None:
                leaf = jax.sharding.reshard(leaf, jax.sharding.PartitionSpec())
            parts.append(jnp.ravel(leaf).astype(self.dtype))
            if rows * BLOCK > size:
                parts.append(jnp.zeros([rows * BLOCK - size], self.dtype))
        if not parts:
            return jnp.zeros([0, BLOCK], self.dtype)
        return jnp.concatenate(parts).reshape(-1, BLOCK)

    def unravel(self, buffer: jax.Array, *, cast: bool = True) -> Any:
        """The inverse of :meth:`ravel`: each leaf sliced out, reshaped and cast to its dtype.

        ``cast=False`` keeps the buffer's dtype (e.g. to add a float32 step to bf16 weights
        before rounding once).
        """
        flat, leaves, start = buffer.reshape(-1), [], 0
        for shape, dtype, size, rows, spec in zip(
            self.shapes, self.dtypes, self.sizes, self.rows, self.specs, strict=True
        ):
            leaf = flat[start : start + size].reshape(shape)
            if spec is not None:
                leaf = jax.sharding.reshard(leaf, spec)
            leaves.append(leaf.astype(dtype) if cast else leaf)
            start += rows * BLOCK
        return self.treedef.unflatten(leaves)


def _explicit_spec(leaf: Any) -> Any:
    """The leaf's ``PartitionSpec`` if it is sharded over an explicit mesh axis, else None."""
    sharding = getattr(jax.typeof(leaf), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if (
        sharding is None
        or mesh is None
        or jax.sharding.AxisType.Explicit not in getattr(mesh, "axis_types", ())
    ):
        return None
    return sharding.spec if any(axis is not None for axis in sharding.spec) else None
