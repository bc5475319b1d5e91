"""Grow a model's embedding and LM head for an expanded tokenizer.

A new row is the mean of the old rows of the old tokens its text splits into (vocab padding:
of all old token rows); old tokens' rows are copied bit for bit, old padding rows past them
re-initialised (new tokens take those ids). See docs/tokenizers.md.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from swallow_jax import tokenizer as tokenizer_lib
from swallow_jax.model import io as model_io
from swallow_jax.parallel import sharding as parallel_sharding
from swallow_jax.tokenizer import Tokenizer
from swallow_jax.vocab import convert


def new_token_pieces(old_tokenizer: Tokenizer, new_tokenizer: Tokenizer,
                     new_size: int) -> list[list[int]]:
  """Old-tokenizer ids of the text of each id in [old vocab_size, new_size) ([] if no token)."""
  texts = (new_tokenizer.token_bytes(i) if i < new_tokenizer.vocab_size else None
           for i in range(old_tokenizer.vocab_size, new_size))
  return [old_tokenizer.encode(data.decode("utf-8", "replace")) if data else [] for data in texts]


@functools.partial(jax.jit, static_argnames=("keep", "num_new", "out_sharding"))
def _grow(table, flat, segment, empty, *, keep, num_new, out_sharding):
  table = table[:keep]
  rows = jnp.take(table, flat, axis=0).astype(jnp.float32)
  sums = jax.ops.segment_sum(rows, segment, num_segments=num_new)
  counts = jax.ops.segment_sum(jnp.ones_like(segment, jnp.float32), segment,
                               num_segments=num_new)
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  means = jnp.where(empty[:, None], table.astype(jnp.float32).mean(0), means)
  out = jnp.concatenate([table, means.astype(table.dtype)], axis=0)
  return out if out_sharding is None else jax.lax.with_sharding_constraint(out, out_sharding)


def grow_rows(table: jax.Array, pieces: Sequence[Sequence[int]], keep: int | None = None
              ) -> jax.Array:
  """``table[:keep]`` followed by one row per entry of ``pieces``: the mean of those rows (of
  all ``keep`` rows if empty), computed in float32. Kept rows are unchanged bit for bit; the
  sharding is kept where the new size fits it."""
  table = jnp.asarray(table)
  keep = table.shape[0] if keep is None else keep
  if not 0 < keep <= table.shape[0]:
    raise ValueError(f"keep={keep} out of range for {table.shape[0]} rows")
  if bad := [list(ids) for ids in pieces if any(not 0 <= i < keep for i in ids)]:
    raise ValueError(f"piece ids {bad[0]} out of range for {keep} rows")
  flat = np.array([i for ids in pieces for i in ids], np.int32)
  segment = np.array([k for k, ids in enumerate(pieces) for _ in ids], np.int32)
  empty = np.array([not ids for ids in pieces], bool)
  sharding, out_sharding = getattr(table, "sharding", None), None
  if isinstance(sharding, NamedSharding):
    shape = (keep + len(pieces),) + table.shape[1:]
    out_sharding = NamedSharding(sharding.mesh, parallel_sharding.fit_spec(
        sharding.spec, shape, sharding.mesh, "the grown embedding"))
  return _grow(table, flat, segment, empty, keep=keep, num_new=len(pieces),
               out_sharding=out_sharding)


def resize_embeddings(params: Mapping[str, Any], old_tokenizer: Tokenizer,
                      new_tokenizer: Tokenizer, *, vocab_size: int | None = None) -> dict:
  """Params with ``embed.embedding`` [V, D] and ``lm_head.kernel`` [D, V] (if untied) grown to
  ``vocab_size`` (default: the new tokenizer's) rows; a pure function, shrinking is an error.
  The new tokenizer must keep the old tokenizer's ids (as ``vocab expand`` does)."""
  table = params["embed"]["embedding"]
  old_size, new_size = table.shape[0], vocab_size or new_tokenizer.vocab_size
  if new_size < old_size:
    raise ValueError(f"cannot shrink the vocabulary from {old_size} to {new_size}")
  if new_tokenizer.vocab_size > new_size:
    raise ValueError(f"vocab_size={new_size} is below the new tokenizer's "
                     f"{new_tokenizer.vocab_size} tokens")
  keep = old_tokenizer.vocab_size
  if keep > old_size:
    raise ValueError(f"the old tokenizer has {keep} tokens but the embedding only {old_size} rows")
  if "lm_head" in params and params["lm_head"]["kernel"].shape[1] != old_size:
    raise ValueError(f"lm_head has {params['lm_head']['kernel'].shape[1]} columns, "
                     f"embedding {old_size} rows")
  pieces = new_token_pieces(old_tokenizer, new_tokenizer, new_size)
  out = {**params, "embed": {**params["embed"], "embedding": grow_rows(table, pieces, keep)}}
  if "lm_head" in params:
    kernel = grow_rows(params["lm_head"]["kernel"].T, pieces, keep).T
    out["lm_head"] = {**params["lm_head"], "kernel": kernel}
  return out


def resize_hf_checkpoint(model: str, old_tokenizer: Tokenizer, new_tokenizer: Tokenizer,
                         output_dir: str, *, dtype: Any = jnp.bfloat16) -> str:
  """Writes `model` (any path `model.io.resolve` accepts) resized for `new_tokenizer` to
  `output_dir` in `dtype` as an HF directory with the new tokenizer's files (its roles and chat
  template included; a tiktoken file also as tokenizer.json, for transformers); the directory
  appears complete or not at all."""
  config, params = model_io.load(model, dtype=dtype, progress=False)
  params = resize_embeddings(params, old_tokenizer, new_tokenizer)
  config = dataclasses.replace(config, vocab_size=params["embed"]["embedding"].shape[0])
  with tempfile.TemporaryDirectory() as tokenizer_dir:
    model_io.copy_side_files(os.path.dirname(os.path.abspath(new_tokenizer.path)), tokenizer_dir)
    if isinstance(new_tokenizer, tokenizer_lib.TiktokenTokenizer):
      convert.tiktoken_to_tokenizer_json(new_tokenizer,
                                         os.path.join(tokenizer_dir, "tokenizer.json"))
    model_io.save_hf(output_dir, config, params, dtype=dtype, tokenizer_dir=tokenizer_dir,
                     overwrite=True, progress=False)
  return output_dir
