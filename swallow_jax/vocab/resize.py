"""Grow a model's embedding and LM head for an expanded tokenizer.

Each new row starts as the mean of the old rows of the tokens the old tokenizer splits the new
token's text into (the LM head likewise, column-wise); rows with no token behind them (vocab
padding) start as the mean of all old rows. Old rows are copied bit for bit and each array keeps
its sharding (a dimension the mesh no longer divides is replicated).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from swallow_jax.tokenizer import Tokenizer


def new_token_pieces(old_tokenizer: Tokenizer, new_tokenizer: Tokenizer, old_size: int,
                     new_size: int) -> list[list[int]]:
  """Old-tokenizer ids of the text of each new id in [old_size, new_size) ([] if no token)."""
  if old_tokenizer.vocab_size > old_size:
    raise ValueError(f"the old tokenizer has {old_tokenizer.vocab_size} tokens but the "
                     f"embedding only {old_size} rows")
  pieces = []
  for i in range(old_size, new_size):
    data = new_tokenizer.token_bytes(i) if i < new_tokenizer.vocab_size else None
    pieces.append(old_tokenizer.encode(data.decode("utf-8", "replace")) if data else [])
  return pieces


def _fit(sharding: Any, shape: tuple[int, ...]) -> Any:
  if not isinstance(sharding, NamedSharding):
    return None
  mesh, spec = sharding.mesh, tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
  def size(axes):
    return int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))
  spec = tuple(a if a is None or dim % size(a) == 0 else None for dim, a in zip(shape, spec))
  return NamedSharding(mesh, PartitionSpec(*spec))


def grow_rows(table: jax.Array, pieces: Sequence[Sequence[int]]) -> jax.Array:
  """Appends one row per entry of ``pieces``: the mean of those rows of ``table`` (all rows if
  empty), computed in float32. Old rows are unchanged; the sharding is kept where it fits."""
  table = jnp.asarray(table)
  num_old = table.shape[0]
  for ids in pieces:
    if any(not 0 <= i < num_old for i in ids):
      raise ValueError(f"piece ids {list(ids)} out of range for {num_old} rows")
  flat = np.array([i for ids in pieces for i in ids], np.int32)
  segment = np.array([k for k, ids in enumerate(pieces) for _ in ids], np.int32)
  empty = np.array([not ids for ids in pieces])
  out_sharding = _fit(getattr(table, "sharding", None), (num_old + len(pieces),) + table.shape[1:])

  def grow(table, flat, segment, empty):
    rows = jnp.take(table, flat, axis=0).astype(jnp.float32)
    sums = jax.ops.segment_sum(rows, segment, num_segments=len(pieces))
    counts = jax.ops.segment_sum(jnp.ones_like(segment, jnp.float32), segment,
                                 num_segments=len(pieces))
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    means = jnp.where(empty[:, None], table.astype(jnp.float32).mean(0), means)
    return jnp.concatenate([table, means.astype(table.dtype)], axis=0)

  return jax.jit(grow, out_shardings=out_sharding)(table, flat, segment, empty)


def resize_embeddings(params: Mapping[str, Any], old_tokenizer: Tokenizer,
                      new_tokenizer: Tokenizer, *, vocab_size: int | None = None) -> dict:
  """Params with ``embed.embedding`` [V, D] and ``lm_head.kernel`` [D, V] (if untied) grown to
  ``vocab_size`` (default: the new tokenizer's) rows; a pure function, shrinking is an error."""
  table = params["embed"]["embedding"]
  old_size, new_size = table.shape[0], vocab_size or new_tokenizer.vocab_size
  if new_size < old_size:
    raise ValueError(f"cannot shrink the vocabulary from {old_size} to {new_size}")
  if "lm_head" in params and params["lm_head"]["kernel"].shape[1] != old_size:
    raise ValueError(f"lm_head has {params['lm_head']['kernel'].shape[1]} columns, "
                     f"embedding {old_size} rows")
  pieces = new_token_pieces(old_tokenizer, new_tokenizer, old_size, new_size)
  if not pieces:
    return dict(params)
  out = dict(params)
  out["embed"] = {**params["embed"], "embedding": grow_rows(table, pieces)}
  if "lm_head" in params:
    kernel = grow_rows(params["lm_head"]["kernel"].T, pieces).T
    out["lm_head"] = {**params["lm_head"], "kernel": kernel}
  return out
