"""Orbax checkpoints of the train state and the data-iterator state, saved together.

Layout: DIR/checkpoints/<step>/{state, data}/  ('state' = StandardSave of the train-state dict,
'data' = the Grain iterator state, one file per process). Orbax writes each step into a temporary
directory and renames it when complete, so a killed save never looks like a checkpoint. A
finalized checkpoint that cannot be read (e.g. truncated files) is moved to
DIR/checkpoints_unreadable/ with a warning, and the previous one is used.

Resume restores everything; `restore_params` (init_from) takes only the parameters onto given
shardings; `load_params` reads a workdir's model config and parameters (for generation/eval).
Restoring onto another mesh works: pass abstract arrays (ShapeDtypeStruct) carrying the new shardings.

Multi-host: every process calls save and restore (Orbax writes and reads each process's array
shards and coordinates the commit); each process's iterator state goes to its own file
data/process_<i>-of-<n>.json and comes back to the same process, so a resume needs the same
process count. The processes agree on whether a checkpoint was readable before using it.
"""

from collections.abc import Mapping
import json
import logging
import os
import shutil
import time
from typing import Any

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from swallow_jax import parallel


def make_manager(directory: str | epath.Path, ckpt_cfg: Mapping[str, Any]) -> ocp.CheckpointManager:
  """CheckpointManager keeping the newest `keep` steps; saving is asynchronous by default."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(ckpt_cfg.get("keep", 3)) or None,
      enable_async_checkpointing=bool(ckpt_cfg.get("async_save", True)),
      cleanup_tmp_directories=True, create=True)
  return ocp.CheckpointManager(_absolute(directory), options=options,
                               item_names=("state", "data"))


def _absolute(path: str | epath.Path) -> epath.Path:
  """Orbax refuses relative paths; `--workdir=runs/x` is what people type."""
  path = epath.Path(path)
  return path if "://" in str(path) else epath.Path(os.path.abspath(path))


class SavePolicy:
  """Save every `every_steps` steps and whenever `every_minutes` passed since the last save."""

  def __init__(self, ckpt_cfg: Mapping[str, Any]):
    self.every_steps = int(ckpt_cfg.get("every_steps", 0))
    self.every_seconds = 60.0 * float(ckpt_cfg.get("every_minutes", 0))
    self.last_save = time.monotonic()

  def due(self, step: int) -> bool:
    if self.every_steps and step % self.every_steps == 0:
      return True
    return bool(self.every_seconds) and time.monotonic() - self.last_save >= self.every_seconds

  def saved(self) -> None:
    self.last_save = time.monotonic()


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter: Any = None) -> None:
  """Starts saving `state` (and the iterator position) as `step`; returns once arrays are copied."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)


class IncompatibleCheckpointError(ValueError):
  """A checkpoint this run cannot continue as configured (e.g. another process count)."""


def _check_process_count(step_dir: epath.Path) -> None:
  """Iterator states are per process: a resume with another process count cannot use them."""
  n = jax.process_count()
  names = [p.name for p in (step_dir / "data").glob("process_*-of-*.json")]
  if names and not any(name.endswith(f"-of-{n}.json") for name in names):
    counts = sorted({name.rsplit("-of-", 1)[1].removesuffix(".json") for name in names})
    raise IncompatibleCheckpointError(
        f"checkpoint {step_dir} was written by {' or '.join(counts)} processes, this run has {n}: "
        "the data-iterator positions are saved per process, so resume with the same number")


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any,
                   data_iter: Any = None) -> tuple[int, Any] | None:
  """Restores the newest readable checkpoint into `abstract_state`'s shapes/shardings.

  Sets `data_iter` to the saved position. Returns (step, state), or None when there is no
  checkpoint. Unreadable checkpoints (on any process) are moved aside with a warning; if none is
  readable, raises. Raises IncompatibleCheckpointError, moving nothing, when the checkpoint is
  fine but this run cannot continue it.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    return None
  for step in steps:
    if data_iter is not None:
      _check_process_count(epath.Path(mngr.directory) / str(step))
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    error = None
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except IncompatibleCheckpointError:
      raise
    except Exception as e:  # Orbax raises many types for damaged files. pylint: disable=broad-except
      error = e
    (failed,) = parallel.any_process(error is not None)
    if not failed:  # All processes must continue from the same step.
      return step, restored["state"]
    _set_aside(mngr, step, error or RuntimeError("unreadable on another process"))
  raise RuntimeError(f"no readable checkpoint in {mngr.directory} (tried steps {steps}); "
                     "see the warnings above, or start a new workdir")


def _set_aside(mngr: ocp.CheckpointManager, step: int, error: Exception) -> None:
  src = epath.Path(mngr.directory) / str(step)
  dst = epath.Path(mngr.directory).parent / "checkpoints_unreadable" / f"{step}-{int(time.time())}"
  logging.warning("checkpoint %s is unreadable (%s: %s); moving it to %s and trying the "
                  "previous one", src, type(error).__name__, str(error).splitlines()[0][:300], dst)
  if jax.process_index() == 0:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))
  ocp.multihost.sync_global_processes(f"swallow_jax_set_aside_{step}")
  mngr.reload()


def resolve(path: str | epath.Path) -> epath.Path:
  """A step directory from: a step dir, a checkpoints dir or a workdir (-> its newest step)."""
  path = _absolute(path)
  if (path / "state").exists():
    return path
  for root in (path, path / "checkpoints"):
    if root.is_dir():
      steps = [int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "state").exists()]
      if steps:
        return root / str(max(steps))
  raise FileNotFoundError(f"no Orbax checkpoint at {path} (expected <step>/state/ inside it, "
                          "its checkpoints/ folder, or the step directory itself)")


def restore_params(path: str | epath.Path, abstract_params: Any) -> Any:
  """Parameters only (no optimizer state) from a train checkpoint, onto the given shardings."""
  step_dir = resolve(path)
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_params)
  with ocp.PyTreeCheckpointer() as ckptr:
    restored = ckptr.restore(
        step_dir / "state",
        args=ocp.args.PyTreeRestore(item={"params": abstract_params},
                                    restore_args={"params": restore_args}, partial_restore=True))
  logging.info("loaded parameters from %s", step_dir)
  return restored["params"]


def load_params(path: str | epath.Path) -> tuple[Any, Any]:
  """(LlamaConfig, params) of a training workdir, its checkpoints/ or one step directory.

  The model config comes from the workdir's config.json; arrays land on the default device.
  """
  from swallow_jax import config_utils  # pylint: disable=g-import-not-at-top
  from swallow_jax.model import init_params  # pylint: disable=g-import-not-at-top
  step_dir = resolve(path)
  config_json = step_dir.parent.parent / "config.json"
  if not config_json.exists():
    raise FileNotFoundError(f"{config_json} not found: cannot tell the model config of {step_dir}")
  model_cfg = config_utils.model_config_from_resolved(json.loads(config_json.read_text()))
  abstract = jax.eval_shape(init_params, model_cfg, jax.random.PRNGKey(0))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          abstract)
  return model_cfg, restore_params(step_dir, abstract)
