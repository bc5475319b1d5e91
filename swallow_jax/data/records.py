"""The on-disk format of a preprocessed dataset: ArrayRecord shards + manifest.json.

A dataset directory holds ``data-00000.array_record``, ... and ``manifest.json`` (counts,
tokenizer identity, inputs with sha256; `swallow_jax.preprocess`). Each record is one document::

    uint32 little-endian  H             length of the metadata header
    H bytes               header        compact UTF-8 JSON object of kept fields ("{}" -> H=0)
    4*N bytes             tokens        uint32 little-endian token ids
    N bytes               loss_mask     uint8, only in chat datasets (manifest format "chat")

Text documents are ``encode(text, add_bos=True) + [eos]``; chat documents are
`swallow_jax.data.chat.encode_chat` ids with their loss mask.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from swallow_jax import fileio

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FORMATS = ("text", "chat")
# group_size:1 is what grain.sources.ArrayRecordDataSource needs for random access.
WRITER_OPTIONS = "group_size:1,zstd:1"

_HEADER = struct.Struct("<I")
_SHARD_NAME = re.compile(r"data-\d{5}\.array_record")


def encode_record(tokens, loss_mask=None, meta: Mapping[str, Any] | None = None) -> bytes:
  """Serializes one document (see the module docstring)."""
  header = json.dumps(dict(meta), ensure_ascii=False, sort_keys=True,
                      separators=(",", ":")).encode() if meta else b""
  parts = [_HEADER.pack(len(header)), header, np.asarray(tokens, "<u4").tobytes()]
  if loss_mask is not None:
    if len(loss_mask) != len(tokens):
      raise ValueError(f"loss_mask has {len(loss_mask)} entries for {len(tokens)} tokens")
    parts.append(np.asarray(loss_mask, np.uint8).tobytes())
  return b"".join(parts)


def read_meta(record: bytes) -> dict[str, Any]:
  """The metadata header of a record ({} when none was stored)."""
  (size,) = _HEADER.unpack_from(record)
  return json.loads(record[4:4 + size]) if size else {}


def decode_record(record: bytes, fmt: str) -> tuple[np.ndarray, np.ndarray | None]:
  """(tokens int32[N], loss_mask int32[N] or None for text) of a record."""
  (size,) = _HEADER.unpack_from(record)
  body = memoryview(record)[4 + size:]
  if fmt == "text":
    return np.frombuffer(body, "<u4").astype(np.int32), None
  n = len(body) // 5
  tokens = np.frombuffer(body[:4 * n], "<u4").astype(np.int32)
  return tokens, np.frombuffer(body[4 * n:], np.uint8).astype(np.int32)


def shard_name(index: int) -> str:
  """File name of shard `index`."""
  return f"data-{index:05d}.array_record"


class ShardWriter:
  """Writes records into numbered shards of at most `records_per_shard` records."""

  def __init__(self, directory: str, records_per_shard: int):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    if records_per_shard < 1:
      raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    self._module, self._dir, self._per_shard = array_record_module, directory, records_per_shard
    self._writer = None
    self.shards: list[dict[str, Any]] = []  # {"file", "documents", "tokens"}

  def write(self, record: bytes, num_tokens: int) -> None:
    """Appends a record of `num_tokens` tokens (to a new shard once the current one is full)."""
    if self._writer is None or self.shards[-1]["documents"] == self._per_shard:
      self.close()
      name = shard_name(len(self.shards))
      self._writer = self._module.ArrayRecordWriter(os.path.join(self._dir, name), WRITER_OPTIONS)
      self.shards.append({"file": name, "documents": 0, "tokens": 0})
    self._writer.write(record)
    self.shards[-1]["documents"] += 1
    self.shards[-1]["tokens"] += int(num_tokens)

  def close(self) -> list[dict[str, Any]]:
    """Closes the open shard; returns the shards written."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    return self.shards


def write_manifest(directory: str, manifest: Mapping[str, Any]) -> None:
  """Writes ``DIR/manifest.json`` (atomically)."""
  fileio.write_json(os.path.join(directory, MANIFEST), manifest, sort_keys=True)


def read_manifest(directory: str) -> dict[str, Any]:
  """Loads and checks ``DIR/manifest.json``; ValueError naming the problem."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise ValueError(f"{directory}: no {MANIFEST}; is it a preprocessed dataset "
                     "(python -m swallow_jax.preprocess)?")
  manifest = fileio.read_json(path)
  if manifest.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path}: format_version {manifest.get('format_version')!r}, "
                     f"this code reads {FORMAT_VERSION}")
  return manifest


def shard_paths(directory: str, manifest: Mapping[str, Any]) -> list[str]:
  """The dataset's shard files, in record order."""
  return [os.path.join(directory, s["file"]) for s in manifest["shards"]]


def is_dataset_file(name: str) -> bool:
  """Whether a file name is one preprocess writes into a dataset directory."""
  return name == MANIFEST or bool(_SHARD_NAME.fullmatch(name))


class ShardSource:
  """Random access to a dataset's records (a Grain data source) whose read errors name the
  shard and the record: ``{shard}: record {i}: corrupt ArrayRecord shard ({why})``."""

  def __init__(self, directory: str, manifest: Mapping[str, Any]):
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    self._paths = shard_paths(directory, manifest)
    self._ends = np.cumsum([s["documents"] for s in manifest["shards"]])
    self._readers = [None] * len(self._paths)
    self._module = array_record_data_source

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, index: int) -> bytes:
    shard = int(np.searchsorted(self._ends, index, side="right"))
    local = index - (int(self._ends[shard - 1]) if shard else 0)
    try:
      if self._readers[shard] is None:
        self._readers[shard] = self._module.ArrayRecordDataSource([self._paths[shard]])
      return self._readers[shard][local]
    except Exception as e:  # array_record raises bare RuntimeErrors with C++ status text.
      raise ValueError(f"{self._paths[shard]}: record {local}: corrupt ArrayRecord shard "
                       f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None

  def __repr__(self) -> str:
    return f"ShardSource({len(self._paths)} shards)"
