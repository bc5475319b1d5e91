"""Logical axis rules (the one place that maps model axis names to mesh axes) and the shardings
of parameters, optimizer state and batches derived from them (docs/training.md, "Sharding").
Between layers the residual stream's length is split over `tensor` too (sequence parallelism).
"""

from collections.abc import Iterator
import contextlib
import logging
import math
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

# Logical axis name -> mesh axis (or axes, or None = replicated). Model and trainer use only these.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Parameters.
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
    # Activations.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_length", "tensor"),  # the residual stream between layers (model/llama.py)
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

BATCH_AXES = ("batch", "length")


@contextlib.contextmanager
def mesh_context(mesh: jax.sharding.Mesh) -> Iterator[None]:
  """The mesh and the logical rules in scope: trace and run sharded code inside this."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    yield


def axes_size(axes: str | tuple[str, ...] | None, mesh: Any) -> int:
  """How many shards mesh axes `axes` (one name, several, or None) split a dimension into."""
  group = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return math.prod(mesh.shape[a] for a in group)


def fit_spec(spec: P, shape: tuple[int, ...], mesh: jax.sharding.Mesh, name: str) -> P:
  """Replicates dimensions that the mesh axes do not divide (small test models on 8 devices)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    size = axes_size(axes, mesh)
    if dim % size:
      logging.warning("sharding: %s dim %d not divisible by %s=%d; replicating that dim",
                      name, dim, axes, size)
      axes = None
    out.append(axes)
  return P(*out)


def logical_sharding(logical_axes: tuple[str | None, ...], shape: tuple[int, ...],
                     mesh: jax.sharding.Mesh, name: str = "array") -> NamedSharding:
  """NamedSharding for an array with these logical axis names under LOGICAL_AXIS_RULES."""
  spec = nn.logical_to_mesh_sharding(P(*logical_axes), mesh, LOGICAL_AXIS_RULES).spec
  return NamedSharding(mesh, fit_spec(spec, tuple(shape), mesh, name))


def param_shardings(param_shapes: Any, logical_axes: Any, mesh: jax.sharding.Mesh) -> Any:
  """Tree of NamedShardings for parameters, given their shapes and logical axis names."""
  def one(path, shape, axes):
    return logical_sharding(axes, shape.shape, mesh, jax.tree_util.keystr(path))
  return jax.tree_util.tree_map_with_path(one, param_shapes, logical_axes)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A full copy on every device of `mesh`."""
  return NamedSharding(mesh, P())


def opt_state_shardings(tx: optax.GradientTransformation, opt_state_shapes: Any,
                        param_shards: Any, mesh: jax.sharding.Mesh) -> Any:
  """Optimizer moments sharded like their parameters; counters and other scalars replicated."""
  return optax.tree_map_params(
      tx, lambda _, s: s, opt_state_shapes, param_shards,
      transform_non_params=lambda _: replicated(mesh),
      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of [batch, length] input arrays."""
  return nn.logical_to_mesh_sharding(P(*BATCH_AXES), mesh, LOGICAL_AXIS_RULES)


def check_sharded(shapes: Any, shardings: Any, mesh: jax.sharding.Mesh,
                  min_elements: int = 1 << 20) -> None:
  """Raises if a parameter with >= `min_elements` is fully replicated over fsdp x tensor (a rule
  or annotation mistake: OOM at 8B+ scale); skipped when fsdp x tensor is 1."""
  if mesh.shape["fsdp"] * mesh.shape["tensor"] == 1:
    return
  bad = []
  def check(path, shape, sharding):
    if math.prod(shape.shape) >= min_elements and sharding.shard_shape(shape.shape) == shape.shape:
      bad.append(f"{jax.tree_util.keystr(path)} {tuple(shape.shape)}")
  jax.tree_util.tree_map_with_path(check, shapes, shardings)
  if bad:
    raise ValueError(f"large parameters are not sharded on mesh {dict(mesh.shape)}: "
                     + ", ".join(bad))


def shard_fraction(shapes: Any, shardings: Any) -> float:
  """Bytes held per device / total parameter bytes (1.0 = fully replicated)."""
  total = per_device = 0
  for shape, sharding in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
    total += math.prod(shape.shape) * shape.dtype.itemsize
    per_device += math.prod(sharding.shard_shape(shape.shape)) * shape.dtype.itemsize
  return per_device / max(total, 1)


def local_batch_shards(sharding: jax.sharding.Sharding, global_batch: int,
                       shards: int) -> list[int]:
  """Which of `shards` equal row blocks of a [global_batch, length] array this process holds (the
  rows of its addressable devices, in increasing order); each block must lie wholly on or off it.
  """
  if global_batch % shards:
    raise ValueError(f"global batch {global_batch} is not divisible into {shards} data shards")
  held = np.zeros(global_batch, bool)
  for index in sharding.addressable_devices_indices_map((global_batch, 1)).values():
    held[index[0]] = True
  blocks = held.reshape(shards, global_batch // shards)
  if not np.all(blocks.all(axis=1) | ~blocks.any(axis=1)):
    raise ValueError(f"{shards} data shards of {global_batch} rows do not align with the rows "
                     f"process {jax.process_index()} holds; use a multiple of the process count")
  return np.flatnonzero(blocks.all(axis=1)).tolist()
