"""Host-local training batches, independent of how many processes share the work.

Data shard k of `config.data.num_shards` (S; default one per process) feeds rows
[k*B/S, (k+1)*B/S) of every global batch of B rows; a process reads the shards whose rows its
devices hold and checkpoints their positions (docs/multihost.md, "The batches do not depend...").
"""

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from swallow_jax import checkpoint


def num_shards(requested: int, process_count: int) -> int:
  """config.data.num_shards (`requested`), or one shard per process when it is 0."""
  shards = requested or process_count
  if shards % process_count:
    raise ValueError(f"data.num_shards={shards} must be a multiple of the number of processes "
                     f"({process_count})")
  return shards


class ShardedBatches(grain.DatasetIterator):
  """Concatenates one batch of each of this process's data shards (`shards`: {k: iterator}), in
  shard order."""

  def __init__(self, shards: Mapping[int, grain.DatasetIterator]):
    self.shards = dict(sorted(shards.items()))
    super().__init__(list(self.shards.values()))  # Grain's prefetch and close reach them all.

  def __next__(self) -> dict[str, np.ndarray]:
    batches = [next(it) for it in self.shards.values()]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def get_state(self) -> dict[str, Any]:
    return {"shards": {str(k): it.get_state() for k, it in self.shards.items()}}

  def set_state(self, state: dict[str, Any]) -> None:
    saved = sorted(int(k) for k in state["shards"])
    if saved != list(self.shards):
      raise checkpoint.IncompatibleCheckpointError(
          f"the checkpoint's data-iterator state of process {jax.process_index()} holds data "
          f"shards {saved}, this process reads {list(self.shards)}: resume with the same "
          "number of processes and data.num_shards as the run that saved it")
    for k, it in self.shards.items():
      it.set_state(state["shards"][str(k)])


def make_iterator(data_cfg: Any, *, seq_len: int, global_batch: int, shards: int,
                  local_shards: Sequence[int], seed: int) -> ShardedBatches:
  """One Grain pipeline per local shard (see swallow_jax.data.pipeline), each B/S rows a step."""
  from swallow_jax.data.pipeline import make_train_iterator  # pylint: disable=g-import-not-at-top
  return ShardedBatches({
      k: make_train_iterator(data_cfg, seq_len=seq_len, process_index=k, process_count=shards,
                             batch_size_per_process=global_batch // shards, seed=seed)
      for k in local_shards})


def source_tokens(data_iter: ShardedBatches, shards: int) -> dict[str, int]:
  """Tokens read so far per source over all shards of all processes (each shard counted once)."""
  names = sorted({n for it in data_iter.shards.values() for n in it.source_tokens})  # never empty
  table = np.zeros((shards, len(names)), np.int64)
  for k, it in data_iter.shards.items():
    table[k] = [it.source_tokens.get(n, 0) for n in names]
  if jax.process_count() > 1:  # Processes holding the same rows read the same shard: max, not sum.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    # As int32 pairs: JAX arrays are 32-bit by default and counts pass 2^31 in real runs.
    gathered = np.asarray(multihost_utils.process_allgather(table.view(np.int32)))
    table = np.ascontiguousarray(gathered).view(np.int64).max(axis=0)
  return dict(zip(names, table.sum(axis=0).tolist()))
