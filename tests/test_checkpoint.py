"""Orbax checkpoints: state + iterator together, other-mesh restore, damaged/partial checkpoints."""

import json
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from swallow_jax import checkpoint, parallel
from swallow_jax.train import metrics as metrics_lib

AXES = {"w": {"kernel": ("embed", "mlp")}, "n": {"scale": ("norm",)}}


def make_state(mesh):
  params = {"w": {"kernel": jnp.arange(64 * 32, dtype=jnp.float32).reshape(64, 32) / 7},
            "n": {"scale": jnp.linspace(0, 1, 32)}}
  tx = optax.adamw(1e-3)
  shapes = jax.eval_shape(lambda: params)
  psh = parallel.param_shardings(shapes, AXES, mesh)
  params = jax.device_put(params, psh)
  opt_state = tx.update(params, tx.init(params), params)[1]  # Non-trivial moments.
  rep = parallel.replicated(mesh)
  state = {"step": jnp.array(5, jnp.int32), "params": params, "opt_state": opt_state,
           "rng": jax.random.PRNGKey(3)}
  shardings = {"step": rep, "rng": rep, "params": psh,
               "opt_state": parallel.opt_state_shardings(tx, jax.eval_shape(lambda: opt_state),
                                                         psh, mesh)}
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          state, shardings)
  return state, abstract


def data_iter():
  return iter(grain.MapDataset.range(1000).shuffle(seed=1).to_iter_dataset())


def assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_restore_onto_another_mesh_with_iterator_position(tmp_path):
  state, _ = make_state(parallel.make_mesh(dict(fsdp=4, tensor=2)))
  it = data_iter()
  for _ in range(5):
    next(it)
  mngr = checkpoint.make_manager(tmp_path / "checkpoints", dict(keep=2, async_save=True))
  checkpoint.save(mngr, 5, state, it)
  expected_next = [next(it) for _ in range(3)]  # Advancing during the async write is safe.
  mngr.close()

  new_mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
  _, abstract = make_state(new_mesh)
  it2 = data_iter()
  mngr = checkpoint.make_manager(tmp_path / "checkpoints", {})
  step, restored = checkpoint.restore_latest(mngr, abstract, it2)
  mngr.close()
  assert step == 5
  assert_trees_equal(restored, state)
  assert restored["params"]["w"]["kernel"].sharding == abstract["params"]["w"]["kernel"].sharding
  assert restored["params"]["w"]["kernel"].sharding.mesh.shape["data"] == 2
  assert [next(it2) for _ in range(3)] == expected_next


# A failed restore leaves TensorStore callbacks aimed at Orbax's closed event loop (harmless).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_latest_is_skipped_and_moved_aside(tmp_path, caplog):
  mesh = parallel.make_mesh(dict(fsdp=8))
  state, abstract = make_state(mesh)
  mngr = checkpoint.make_manager(tmp_path / "checkpoints", dict(keep=3, async_save=False))
  for step in (2, 4):
    checkpoint.save(mngr, step, {**state, "step": jnp.array(step, jnp.int32)}, data_iter())
  mngr.close()
  # Truncate the array data files, as an interrupted copy or a full disk would.
  for root, _, names in os.walk(tmp_path / "checkpoints" / "4" / "state"):
    for name in names:
      if os.path.basename(root) == "d":
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(os.path.getsize(os.path.join(root, name)) // 2)
  # A save killed mid-way leaves only an Orbax temporary directory: never a candidate.
  os.makedirs(tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1234" / "state")

  mngr = checkpoint.make_manager(tmp_path / "checkpoints", {})
  assert mngr.all_steps() == [2, 4]
  step, restored = checkpoint.restore_latest(mngr, abstract, data_iter())
  assert step == 2 and int(restored["step"]) == 2
  assert "checkpoint" in caplog.text and "unreadable" in caplog.text
  assert mngr.all_steps() == [2]
  assert len(os.listdir(tmp_path / "checkpoints_unreadable")) == 1

  # When nothing is readable, the error says so instead of silently starting over.
  os.remove(tmp_path / "checkpoints" / "2" / "state" / "_METADATA")
  with pytest.raises(RuntimeError, match="no readable checkpoint"):
    checkpoint.restore_latest(mngr, abstract, data_iter())
  mngr.close()


def test_save_policy(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(checkpoint.time, "monotonic", lambda: now[0])
  policy = checkpoint.SavePolicy(dict(every_steps=10, every_minutes=2))
  assert policy.due(10) and not policy.due(11)
  now[0] += 119
  assert not policy.due(11)
  now[0] += 1
  assert policy.due(11)
  policy.saved()
  assert not policy.due(12)
  assert not checkpoint.SavePolicy({}).due(7)


def test_metrics_jsonl_truncated_to_restored_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)]
  path.write_text("".join(lines) + '{"step": 6, "lo')  # Killed mid-write.
  metrics_lib.truncate_jsonl(str(path), 3)
  assert path.read_text() == "".join(lines[:3])
  writer = metrics_lib.MetricsWriter(str(tmp_path), 3)
  writer.write(4, {"loss": np.float32(0.1), "mfu": None, "x": float("nan")})
  writer.close()
  last = json.loads(path.read_text().splitlines()[-1])
  assert last == {"step": 4, "loss": float(np.float32(0.1)), "mfu": None, "x": "nan"}
  assert last["loss"] == 0.10000000149011612  # Full precision of the fp32 value.
