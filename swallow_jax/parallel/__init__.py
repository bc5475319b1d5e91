"""Mesh, logical-axis sharding rules and multi-host initialization."""

from swallow_jax.parallel.distributed import HEARTBEAT_TIMEOUT_S, any_process, initialize
from swallow_jax.parallel.mesh import AXES, describe, make_mesh, required_devices, resolve_shape
from swallow_jax.parallel.sharding import (BATCH_AXES, LOGICAL_AXIS_RULES, batch_sharding,
                                           check_sharded, local_batch_shards, logical_sharding,
                                           mesh_context, opt_state_shardings, param_shardings,
                                           replicated, shard_fraction)

__all__ = ["AXES", "BATCH_AXES", "HEARTBEAT_TIMEOUT_S", "LOGICAL_AXIS_RULES", "any_process",
           "batch_sharding", "check_sharded", "describe", "initialize", "local_batch_shards",
           "logical_sharding", "make_mesh", "mesh_context", "opt_state_shardings",
           "param_shardings", "replicated", "required_devices", "resolve_shape", "shard_fraction"]
