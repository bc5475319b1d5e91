"""Device mesh from config: axes ('data', 'fsdp', 'tensor'), ICI within a slice/node, DCN across.

    config.mesh = dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1)

Sizes are per slice (TPU) or per node (GPU); -1 takes the rest (a missing `fsdp` means -1, other
missing sizes 1). The `dcn_*` sizes split the axes across slices/nodes (slower network: keep
`tensor` inside). The mesh is Auto-typed so that linen's logical constraints apply.
"""

from collections.abc import Mapping, Sequence
import math
from typing import Any

import jax
from jax.experimental import mesh_utils
import numpy as np

AXES = ("data", "fsdp", "tensor")
DEFAULTS = {"data": 1, "fsdp": -1, "tensor": 1}  # Missing keys: FSDP over everything.


def resolve_shape(sizes: Sequence[int], total: int, what: str = "mesh") -> tuple[int, ...]:
  """Replaces at most one -1 in `sizes` so that their product is `total`."""
  sizes = [int(s) for s in sizes]
  if sizes.count(-1) > 1:
    raise ValueError(f"{what}: at most one axis may be -1, got {dict(zip(AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"{what}: axis sizes must be positive or -1, got {dict(zip(AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if total % known:
      raise ValueError(f"{what}: {total} devices are not divisible by the fixed axes "
                       f"{dict(zip(AXES, sizes))} (product {known})")
    sizes[sizes.index(-1)] = total // known
  if math.prod(sizes) != total:
    raise ValueError(f"{what}: axes {dict(zip(AXES, sizes))} need {math.prod(sizes)} devices, "
                     f"have {total}")
  return tuple(sizes)


def make_mesh(mesh_cfg: Mapping[str, int],
              devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh described by `mesh_cfg` over `devices` (all)."""
  devices = list(jax.devices() if devices is None else devices)
  if unknown := set(mesh_cfg) - set(AXES) - {f"dcn_{a}" for a in AXES}:
    raise ValueError(f"mesh: unknown keys {sorted(unknown)}; known: {AXES} and dcn_<axis>")
  dcn = tuple(int(mesh_cfg.get(f"dcn_{a}", 1)) for a in AXES)
  if any(s < 1 for s in dcn):
    raise ValueError(f"mesh: dcn_* sizes must be >= 1, got {dict(zip(AXES, dcn))}")
  num_dcn = math.prod(dcn)
  if len(devices) % num_dcn:
    raise ValueError(f"mesh: {len(devices)} devices are not divisible into {num_dcn} DCN groups")
  ici = resolve_shape([mesh_cfg.get(a, DEFAULTS[a]) for a in AXES], len(devices) // num_dcn,
                      "mesh (ICI)")
  if num_dcn > 1:  # DCN axes run across TPU slices (`slice_index`), else across processes.
    by_process = not hasattr(devices[0], "slice_index")
    granules = len({d.process_index if by_process else d.slice_index for d in devices})
    if granules != num_dcn:
      raise ValueError(f"mesh: dcn_* sizes multiply to {num_dcn} but the devices span {granules} "
                       "slices/processes")
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=by_process)
  else:
    try:  # Physical-topology-aware order on TPU; plain order elsewhere.
      grid = mesh_utils.create_device_mesh(ici, devices)
    except (ValueError, NotImplementedError, AssertionError):
      grid = np.array(devices).reshape(ici)
  return jax.sharding.Mesh(grid, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def required_devices(mesh_cfg: Mapping[str, int]) -> int | None:
  """Global device count the mesh asks for (ICI x DCN sizes); None when an axis is -1 (any)."""
  sizes = [int(mesh_cfg.get(a, DEFAULTS[a])) for a in AXES]
  if -1 in sizes:
    return None
  return math.prod(sizes) * math.prod(int(mesh_cfg.get(f"dcn_{a}", 1)) for a in AXES)


def describe(mesh: jax.sharding.Mesh) -> str:
  """'data=1 fsdp=8 tensor=1 (8 devices, cpu)' for logs."""
  axes = " ".join(f"{k}={v}" for k, v in mesh.shape.items())
  return f"{axes} ({mesh.size} devices, {mesh.devices.flat[0].platform})"
