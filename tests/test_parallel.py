"""Mesh construction, logical-axis shardings, the large-parameter check, multi-host start-up."""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from swallow_jax import parallel
from swallow_jax.model import param_logical_axes, presets
from swallow_jax.model import llama
from swallow_jax.model.llama import init_params
from swallow_jax.train import optimizer as optimizer_lib


def test_resolve_shape():
  assert parallel.resolve_shape([1, -1, 2], 8) == (1, 4, 2)
  assert parallel.resolve_shape([2, 2, 2], 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="at most one"):
    parallel.resolve_shape([-1, -1, 1], 8)
  with pytest.raises(ValueError, match="not divisible"):
    parallel.resolve_shape([3, -1, 1], 8)
  with pytest.raises(ValueError, match="need 4 devices, have 8"):
    parallel.resolve_shape([2, 2, 1], 8)


def test_make_mesh_is_auto_typed_with_rest_axis():
  mesh = parallel.make_mesh(dict(data=2, fsdp=-1, tensor=2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
  with pytest.raises(ValueError, match="unknown keys"):
    parallel.make_mesh(dict(fsdp=-1, model=2))
  # DCN axes need that many slices/processes; this test runs one process.
  with pytest.raises(ValueError, match="span 1 slices/processes"):
    parallel.make_mesh(dict(fsdp=-1, dcn_data=2))


def test_llama3_8b_shardings_fsdp_tensor():
  cfg = presets.get("llama3_8b")
  shapes = jax.eval_shape(init_params, cfg, jax.random.PRNGKey(0))
  mesh = parallel.make_mesh(dict(data=1, fsdp=4, tensor=2))
  sh = parallel.param_shardings(shapes, param_logical_axes(cfg), mesh)
  assert sh["embed"]["embedding"].spec == P("tensor", "fsdp")
  assert sh["lm_head"]["kernel"].spec == P("fsdp", "tensor")
  assert sh["layers"]["attn"]["q_proj"]["kernel"].spec == P(None, "fsdp", "tensor")
  assert sh["layers"]["attn"]["o_proj"]["kernel"].spec == P(None, "tensor", "fsdp")
  assert sh["layers"]["mlp"]["down_proj"]["kernel"].spec == P(None, "tensor", "fsdp")
  assert sh["layers"]["attn_norm"]["scale"].spec == P(None, None)
  parallel.check_sharded(shapes, sh, mesh)
  # Every large matrix is split 8 ways; only the norms (0.003% of bytes) are replicated.
  assert parallel.shard_fraction(shapes, sh) == pytest.approx(1 / 8, rel=1e-3)
  assert parallel.batch_sharding(mesh).spec == P(("data", "fsdp"), None)


def test_check_sharded_catches_replicated_large_params():
  cfg = presets.get("llama3_8b", num_layers=2)
  shapes = jax.eval_shape(init_params, cfg, jax.random.PRNGKey(0))
  mesh = parallel.make_mesh(dict(fsdp=-1))
  no_axes = jax.tree.map(lambda s: (None,) * len(s.shape), shapes)
  with pytest.raises(ValueError, match=r"not sharded.*\['embed'\]\['embedding'\]"):
    parallel.check_sharded(shapes, parallel.param_shardings(shapes, no_axes, mesh), mesh)
  # Pure data parallelism replicates by design: nothing to check.
  dp = parallel.make_mesh(dict(data=-1, fsdp=1))
  parallel.check_sharded(shapes, parallel.param_shardings(shapes, no_axes, dp), dp)


def test_indivisible_dims_fall_back_to_replicated():
  mesh = parallel.make_mesh(dict(fsdp=8))
  assert parallel.logical_sharding(("embed", "mlp"), (12, 16), mesh).spec == P(None, "tensor")
  assert parallel.logical_sharding(("embed", "mlp"), (16, 12), mesh).spec == P("fsdp", "tensor")


def test_opt_state_sharded_like_params():
  cfg = presets.get("tiny")
  shapes = jax.eval_shape(init_params, cfg, jax.random.PRNGKey(0))
  mesh = parallel.make_mesh(dict(fsdp=4, tensor=2))
  psh = parallel.param_shardings(shapes, param_logical_axes(cfg), mesh)
  tx, _ = optimizer_lib.make_optimizer(dict(peak_lr=1e-3, warmup_steps=1, decay_steps=10))
  osh = parallel.opt_state_shardings(tx, jax.eval_shape(tx.init, shapes), psh, mesh)
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  [adam] = [x for x in jax.tree.leaves(osh, is_leaf=is_adam) if is_adam(x)]
  assert adam.mu == psh and adam.nu == psh
  assert adam.count.spec == P()


def test_distributed_initialize_is_off_on_one_host(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
               "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(name, raising=False)
  assert parallel.initialize() is False
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert parallel.initialize() is False
  assert parallel.initialize(mode="off") is False
  with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
    parallel.initialize(mode="yes")
  assert np.prod(list(parallel.make_mesh({}).shape.values())) == jax.device_count()


def test_residual_stream_is_sequence_parallel_where_the_length_divides():
  """Between layers the residual's length is split over `tensor` (what lets remat's saved layer
  inputs shrink by the tensor size); a length that `tensor` does not divide stays whole."""
  mesh = parallel.make_mesh(dict(data=1, fsdp=2, tensor=4))
  with parallel.mesh_context(mesh):
    split = jax.jit(llama._residual)(jnp.ones((2, 8, 16)))  # pylint: disable=protected-access
    whole = jax.jit(llama._residual)(jnp.ones((2, 3, 16)))  # pylint: disable=protected-access
  assert split.sharding.spec[1] == "tensor"
  assert "tensor" not in jax.tree.leaves(tuple(whole.sharding.spec))
