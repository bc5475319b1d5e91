"""Grain input pipelines: a weighted mixture of preprocessed sources, packed to seq_len.

Pretraining packs each source on its own, then mixes rows (weights are shares of tokens); SFT
mixes whole conversations and packs them first-fit (zero-padded). Batches (host-local numpy):
``inputs``, ``targets``, ``positions``, ``segment_ids`` (0 = padding) int32[b, T], ``loss_weights``
float32[b, T] (0 where the target is another document's; SFT: times the chat mask). The
iterator's ``source_tokens`` (non-padding input tokens per source, this process) is in its state.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from swallow_jax.data import filters
from swallow_jax.data import records

KINDS = {"pretrain": "text", "sft": "chat"}
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=256)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  """cfg[key] of a dict or ConfigDict; `default` when missing or None."""
  value = cfg.get(key)
  return default if value is None else value


def _kept_documents(flt: filters.Filter, manifest: Mapping[str, Any]) -> int | None:
  """Documents a one-field filter keeps, from the manifest's value counts (else None)."""
  if len(flt.fields) != 1:
    return None
  (field,) = flt.fields
  values = manifest.get("fields", {}).get(field, {})
  missing = manifest["documents"] - sum(v["documents"] for v in values.values())
  return (sum(v["documents"] for k, v in values.items() if flt({field: k}))
          + (missing if flt({}) else 0))


def _decode(fmt: str, source_id: int, seq_len: int, record: bytes) -> dict[str, np.ndarray]:
  tokens, mask = records.decode_record(record, fmt)
  if fmt == "text":
    return {"tokens": tokens}
  n = min(len(tokens), seq_len + 1)  # FirstFit needs whole conversations to fit a row
  return {"tokens": tokens[:n], "loss_mask": mask[:n],
          "source": np.full(n, source_id + 1, np.int32)}


def source_documents(source: Mapping[str, Any], *, index: int, kind: str, seq_len: int,
                     process_index: int, process_count: int, seed: int,
                     repeat: bool = True) -> grain.MapDataset:
  """One source's documents for this process: sliced, shuffled, repeated, filtered, decoded."""
  name, path = _get(source, "name"), _get(source, "path")
  manifest = records.read_manifest(path)
  fmt = KINDS[kind]
  if manifest["format"] != fmt:
    raise ValueError(f"source {name!r} ({path}) holds {manifest['format']} records; "
                     f"data.kind={kind!r} needs {fmt} (preprocess --format={fmt})")
  ds = grain.MapDataset.source(records.ShardSource(path, manifest))[process_index::process_count]
  if not len(ds):
    raise ValueError(f"source {name!r} has {manifest['documents']} documents, none for "
                     f"process {process_index} of {process_count}")
  ds = ds.shuffle(seed=int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))
  if repeat:
    ds = ds.repeat()
  flt = filters.parse_filter(_get(source, "filter"))
  if flt is not None:
    stored = set(manifest["options"]["keep_fields"]) | {manifest["options"]["path_field"]}
    if missing := sorted(flt.fields - stored):
      raise ValueError(f"source {name!r}: filter {flt.text!r} uses fields {missing} not "
                       f"stored in {path} (preprocess with --keep-fields)")
    if _kept_documents(flt, manifest) == 0:
      raise ValueError(f"source {name!r}: filter {flt.text!r} keeps no document of {path}")
    ds = ds.filter(lambda record: flt(records.read_meta(record)))
  return ds.map(functools.partial(_decode, fmt, index, seq_len))


def _tag_source(source_id: int, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {**row, "source": np.int32(source_id)}


def make_batch_row(row: Mapping[str, np.ndarray], num_sources: int) -> dict[str, np.ndarray]:
  """A packed row of seq_len + 1 tokens -> one example of the batch format (+ counts)."""
  tokens, seg, pos = row["tokens"], row["tokens_segment_ids"], row["tokens_positions"]
  seg_in = seg[:-1].astype(np.int32)
  same = (seg[1:] == seg_in) & (seg_in > 0)
  weights = same.astype(np.float32)
  if "loss_mask" in row:
    weights *= row["loss_mask"][1:]
    counts = np.bincount(row["source"][:-1][seg_in > 0] - 1, minlength=num_sources)
  else:
    counts = np.zeros(num_sources, np.int64)
    counts[int(row["source"])] = np.count_nonzero(seg_in)
  return {
      "inputs": tokens[:-1].astype(np.int32),
      "targets": np.where(same, tokens[1:], 0).astype(np.int32),
      "positions": pos[:-1].astype(np.int32),
      "segment_ids": seg_in,
      "loss_weights": weights,
      "source_counts": counts.astype(np.int64),
  }


class _SourceCountsIterator(grain.DatasetIterator):
  """Pops 'source_counts' off each batch and keeps running totals in the state."""

  def __init__(self, parent: grain.DatasetIterator, names: Sequence[str]):
    super().__init__(parent)
    self._names = tuple(names)
    self._totals = np.zeros(len(names), np.int64)

  @property
  def source_tokens(self) -> dict[str, int]:
    return {n: int(t) for n, t in zip(self._names, self._totals)}

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._parent))
    self._totals += batch.pop("source_counts").sum(axis=0)
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "source_tokens": self.source_tokens}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(_untangle_json(state["parent"]))
    self._totals = np.array([state["source_tokens"].get(n, 0) for n in self._names], np.int64)


def _untangle_json(state: Any) -> Any:
  """Gives back the tuples that a JSON round trip (a checkpoint file) turned into lists: Grain
  0.2.18's ConcatThenSplit compares `remainder_slices` with the tuple (-1, -1), which a list
  never equals, so a state saved with no remainder would restore one and skip a document."""
  if isinstance(state, dict):
    return {k: ({f: tuple(v) for f, v in x.items()} if k == "remainder_slices"
                else _untangle_json(x)) for k, x in state.items()}
  if isinstance(state, list):
    return [_untangle_json(x) for x in state]
  return state


def make_train_iterator(data_cfg: Any, *, seq_len: int, batch_size_per_process: int,
                        process_index: int, process_count: int, seed: int
                        ) -> _SourceCountsIterator:
  """A checkpointable iterator of host-local batches (see the module docstring).

  `data_cfg`: ``sources`` (list of dict(name, path, weight, filter=None)), ``kind`` ('pretrain'
  | 'sft'), ``shuffle_seed`` (overrides `seed` when set), optional ``packing_bins`` (SFT
  first-fit bins, default 64). Checkpoint it with ``grain.checkpoint.CheckpointSave/Restore``.
  """
  kind = _get(data_cfg, "kind", "pretrain")
  if kind not in KINDS:
    raise ValueError(f"data.kind must be one of {sorted(KINDS)}, got {kind!r}")
  srcs = list(_get(data_cfg, "sources", []))
  if not srcs:
    raise ValueError("data.sources is empty")
  names = [_get(s, "name") or f"source{i}" for i, s in enumerate(srcs)]
  if len(set(names)) != len(names):
    raise ValueError(f"data.sources names must be unique: {names}")
  weights = [float(_get(s, "weight", 1.0)) for s in srcs]
  if any(w <= 0 for w in weights):
    raise ValueError(f"data.sources weights must be > 0: {dict(zip(names, weights))}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  seed = int(_get(data_cfg, "shuffle_seed", seed))
  docs = {
      name: source_documents(s, index=i, kind=kind, seq_len=seq_len,
                             process_index=process_index, process_count=process_count,
                             seed=seed).to_iter_dataset(_READ_OPTIONS)
      for i, (name, s) in enumerate(zip(names, srcs))
  }
  weight_of, length = dict(zip(names, weights)), seq_len + 1
  if kind == "pretrain":
    split = grain.experimental.ConcatThenSplitIterDataset
    rows = grain.IterDataset.mix(
        {n: split(d, length_struct={"tokens": length}).map(functools.partial(_tag_source, i))
         for i, (n, d) in enumerate(docs.items())}, weight_of)
  else:
    rows = grain.experimental.FirstFitPackIterDataset(
        grain.IterDataset.mix(docs, weight_of),
        length_struct={"tokens": length, "loss_mask": length, "source": length},
        num_packing_bins=int(_get(data_cfg, "packing_bins", 64)), seed=seed, shuffle_bins=True)
  ds = rows.map(functools.partial(make_batch_row, num_sources=len(names)))
  ds = ds.batch(batch_size_per_process, drop_remainder=True)
  return _SourceCountsIterator(iter(ds), names)
