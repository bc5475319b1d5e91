"""Orbax checkpoints of the train state and the data-iterator state, saved together.

Layout: DIR/checkpoints/<step>/{state, data/process_<i>-of-<n>.json} (docs/training.md,
"Checkpoints"). Every process calls save and restore; restoring onto another mesh works with
abstract arrays carrying the new shardings (weights only: swallow_jax.model.io).
"""

from collections.abc import Mapping
import logging
import os
import shutil
import time
from typing import Any

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from swallow_jax import cli
from swallow_jax import parallel
from swallow_jax.config_utils import CheckpointSpec, as_section


def make_manager(directory: str | epath.Path,
                 ckpt_cfg: CheckpointSpec | Mapping[str, Any]) -> ocp.CheckpointManager:
  """CheckpointManager keeping the newest `keep` steps; saving is asynchronous by default."""
  spec = as_section(CheckpointSpec, ckpt_cfg, "checkpoint")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=spec.keep or None, enable_async_checkpointing=spec.async_save,
      cleanup_tmp_directories=True, create=True)
  if "://" not in str(directory):  # Orbax refuses relative paths: `--workdir=runs/x` is typed
    directory = os.path.abspath(directory)
  return ocp.CheckpointManager(epath.Path(directory), options=options, item_names=("state", "data"))


class SavePolicy:
  """Save every `every_steps` steps and whenever `every_minutes` passed since the last save.

  Not Orbax's save_decision_policy: the loop must agree on the decision across processes
  (`parallel.any_process`) before calling save, and Orbax's time policy
  (ContinuousCheckpointingPolicy) skips a due save while the previous one is still writing.
  """

  def __init__(self, ckpt_cfg: CheckpointSpec | Mapping[str, Any]):
    spec = as_section(CheckpointSpec, ckpt_cfg, "checkpoint")
    self.every_steps, self.every_seconds = spec.every_steps, 60.0 * spec.every_minutes
    self.last_save = time.monotonic()

  def due(self, step: int) -> bool:
    """Whether a save is due after `step` (by step count or elapsed time)."""
    if self.every_steps and step % self.every_steps == 0:
      return True
    return bool(self.every_seconds) and time.monotonic() - self.last_save >= self.every_seconds

  def saved(self) -> None:
    """Restarts the time interval."""
    self.last_save = time.monotonic()


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iter: Any = None) -> None:
  """Starts saving `state` (and the iterator position) as `step`; returns once arrays are copied."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)


class IncompatibleCheckpointError(ValueError):
  """A checkpoint this run cannot continue as configured (e.g. another process count)."""


class CheckpointSaveError(cli.Failure):
  """An asynchronous checkpoint save failed; the run stops before doing more work."""


def check_save(mngr: ocp.CheckpointManager) -> None:
  """Raises CheckpointSaveError if a finished asynchronous save failed."""
  try:
    mngr.check_for_errors()
  except Exception as e:  # pylint: disable=broad-except  (whatever the writer thread raised)
    good = mngr.latest_step()
    first = (str(e).splitlines() or [type(e).__name__])[0][:300]
    raise CheckpointSaveError(
        f"saving a checkpoint to {mngr.directory} failed ({type(e).__name__}: {first}); last "
        f"good checkpoint: {'none' if good is None else f'step {good}'}") from e


def _flat_names(tree: Any) -> dict[str, Any]:
  """{'params.layers.q.kernel': leaf}: one naming for abstract states and Orbax metadata trees
  (Orbax stores tuples as lists and named tuples as dicts, so only the key names are compared)."""
  return {jax.tree_util.keystr(path, simple=True, separator="."): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_compatible(step_dir: epath.Path, abstract_state: Any) -> None:
  """Raises IncompatibleCheckpointError when the saved state's structure, shapes or dtypes differ
  from `abstract_state`; an unreadable metadata file is left to the restore (set aside there)."""
  try:
    meta = ocp.StandardCheckpointer().metadata(step_dir / "state")
    saved = _flat_names(getattr(meta, "item_metadata", meta).tree)
  except Exception:  # pylint: disable=broad-except  (damaged files: not a mismatch)
    return
  wanted = _flat_names(abstract_state)
  fix = ("start a new workdir, or set config.init_from to this workdir to take its weights only")
  if set(saved) != set(wanted):
    only_saved = sorted(set(saved) - set(wanted))[:3]
    only_wanted = sorted(set(wanted) - set(saved))[:3]
    raise IncompatibleCheckpointError(
        f"checkpoint {step_dir} holds another train-state structure (only in the checkpoint: "
        f"{only_saved}; only in this config: {only_wanted}): {fix}")
  for key, want in wanted.items():
    got = saved[key]
    if tuple(got.shape) != tuple(want.shape) or str(got.dtype) != str(want.dtype):
      raise IncompatibleCheckpointError(
          f"{key}: checkpoint {got.dtype}{list(got.shape)}, config {want.dtype}"
          f"{list(want.shape)} ({step_dir}): {fix}")


def _check_process_count(step_dir: epath.Path) -> None:
  """Iterator states are per process: a resume with another process count cannot use them."""
  n = jax.process_count()
  names = [p.name for p in (step_dir / "data").glob("process_*-of-*.json")]
  if names and not any(name.endswith(f"-of-{n}.json") for name in names):
    counts = sorted({name.rsplit("-of-", 1)[1].removesuffix(".json") for name in names})
    raise IncompatibleCheckpointError(
        f"checkpoint {step_dir} was written by {' or '.join(counts)} processes, this run has {n}: "
        "the data-iterator positions are saved per process; resume with the same launch "
        f"(`python -m swallow_jax.train ... --num_processes={counts[0]}` or as many hosts), or "
        "start a new workdir with `--config.init_from=` this workdir (weights only)")


def restore_latest(mngr: ocp.CheckpointManager, abstract_state: Any,
                   data_iter: Any = None) -> tuple[int, Any] | None:
  """Restores the newest readable checkpoint into `abstract_state`'s shapes/shardings (and
  `data_iter`'s position); returns (step, state), or None without a checkpoint.

  Unreadable checkpoints (on any process) are moved to DIR/checkpoints_unreadable/ with a warning
  (none readable: RuntimeError). IncompatibleCheckpointError, moving nothing, when this run cannot
  continue the checkpoint (other shapes/dtypes/structure, other process count).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    return None
  for step in steps:
    step_dir = epath.Path(mngr.directory) / str(step)
    check_compatible(step_dir, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      _check_process_count(step_dir)
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    error = None
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except IncompatibleCheckpointError:  # a user's mistake (train.data): refuse, never set aside
      raise
    except Exception as e:  # pylint: disable=broad-except  (damaged files: many kinds)
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
