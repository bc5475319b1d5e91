"""Raw inputs for preprocessing: JSONL (plain or gzip) and Parquet, record by record.

JSONL payloads are raw lines (parsed, errors and all, by the workers); blank lines are skipped.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

# Reasons a record is skipped (or, with --strict, rejected).
TEXT_REASONS = ("invalid_json", "invalid_utf8", "missing_field", "empty_text", "truncated_file")
CHAT_REASONS = TEXT_REASONS + ("unknown_role", "empty_conversation", "no_assistant_turn",
                               "invalid_conversation")


class InvalidRecord(ValueError):
  """A bad input record; `reason` is one of CHAT_REASONS."""

  reason = "invalid_json"

  def __init__(self, message: str, reason: str | None = None):
    super().__init__(message)
    self.reason = reason or self.reason


class TruncatedFile(ValueError):
  """A compressed input that ends early or is corrupt; the lines before it were read."""


def expand_inputs(pattern: str) -> list[str]:
  """Files matching a comma-separated list of globs, sorted; ValueError if none."""
  files: set[str] = set()
  for part in filter(None, (p.strip() for p in pattern.split(","))):
    matches = [m for m in glob.glob(part, recursive=True) if os.path.isfile(m)]
    if not matches:
      raise ValueError(f"--input {part!r} matches no files")
    files.update(matches)
  if not files:
    raise ValueError("--input is empty")
  return sorted(files)


def file_kind(path: str) -> str:
  """'parquet' or 'jsonl' by the file name; ValueError for anything else."""
  name = path.lower()
  if name.endswith(".parquet"):
    return "parquet"
  if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")):
    return "jsonl"
  raise ValueError(f"{path}: unknown input type (want .jsonl[.gz], .json[.gz] or .parquet)")


def iter_records(path: str, columns: Sequence[str] | None = None
                 ) -> Iterator[tuple[int, bytes | dict[str, Any]]]:
  """(line number, raw line bytes or Parquet row dict) for every record of `path`; a gzip file
  that ends early or is corrupt raises TruncatedFile after the lines it could read."""
  if file_kind(path) == "parquet":
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    pf = pq.ParquetFile(path)
    cols = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
    batches = pf.iter_batches(batch_size=1024, columns=cols)
    yield from enumerate((item for batch in batches for item in batch.to_pylist()), 1)
    return
  opener = gzip.open if path.lower().endswith(".gz") else open
  number = 0
  with opener(path, "rb") as f:
    try:
      for number, line in enumerate(f, 1):
        if line.strip():
          yield number, line.rstrip(b"\r\n")
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
      raise TruncatedFile(f"{path}: truncated gzip stream after {number} lines ({e})") from None


def parse_json_object(payload: bytes | dict[str, Any]) -> dict[str, Any]:
  """A JSON object from a raw JSONL line (dicts pass through); InvalidRecord otherwise."""
  if isinstance(payload, dict):
    return payload
  try:
    text = payload.decode("utf-8")
  except UnicodeDecodeError as e:
    raise InvalidRecord(f"invalid UTF-8 at byte {e.start}", "invalid_utf8") from None
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise InvalidRecord(f"invalid JSON: {e.msg} (column {e.colno})", "invalid_json") from None
  if not isinstance(obj, dict):
    raise InvalidRecord(f"expected a JSON object, got {type(obj).__name__}", "invalid_json")
  return obj


def require_utf8(text: str) -> str:
  """Rejects strings with lone surrogates (JSON '\\ud800' escapes): not encodable."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    raise InvalidRecord("text is not valid Unicode (lone surrogate)", "invalid_utf8") from None
  return text


def file_digest(path: str) -> dict[str, Any]:
  """{'path', 'bytes', 'sha256'} of a file (dataset manifests)."""
  with open(path, "rb") as f:
    digest = hashlib.file_digest(f, "sha256").hexdigest()
  return {"path": path, "bytes": os.path.getsize(path), "sha256": digest}
