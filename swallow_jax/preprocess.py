r"""Tokenize raw text or chat data into ArrayRecord shards + manifest.json.

    python -m swallow_jax.preprocess --input='raw/*.jsonl.gz' --tokenizer=TOKENIZER \
        --output=data/ja_wiki [--text-field=text] [--format=text|chat] [--filter=EXPR] \
        [--keep-fields=a,b] [--path-field=subset] [--strict] [--json] [--workers=N]

Inputs: JSONL (plain or .gz) or Parquet, tokenized by worker processes and written in input order
(a rerun gives byte-identical shards). Bad records and a truncated .gz (``truncated_file``) are
skipped and counted by reason; with ``--strict`` the first is an error naming its file and line.
``--overwrite`` replaces only a previous preprocess output that holds no input (docs/data.md).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from absl import flags

from swallow_jax import cli
from swallow_jax import fileio
from swallow_jax import tokenizer as tokenizer_lib
from swallow_jax.data import chat
from swallow_jax.data import filters
from swallow_jax.data import records
from swallow_jax.data import sources

_CHUNK = 256  # records per worker task


class PreprocessError(ValueError):
  """A user-facing failure; the CLI prints it as one line."""


@dataclasses.dataclass(frozen=True)
class Spec:
  """What to do with each raw record (sent to the workers)."""
  format: str
  field: str
  keep_fields: tuple[str, ...] = ()
  path_field: str | None = None
  filter: filters.Filter | None = None
  system_prompt: str | None = None


_worker_tokenizer = None


def _init_worker(tokenizer_path: str) -> None:
  global _worker_tokenizer
  _worker_tokenizer = tokenizer_lib.load_tokenizer(tokenizer_path)


def _encode(obj: dict[str, Any], spec: Spec, tok) -> tuple[list[int], list[int] | None]:
  value = obj.get(spec.field)
  if value is None or (spec.format == "text" and not isinstance(value, str)):
    what = "no field" if value is None else f"non-string ({type(value).__name__}) field"
    raise sources.InvalidRecord(f"{what} {spec.field!r}", "missing_field")
  if spec.format == "chat":
    for m in chat.validate_messages(value):
      sources.require_utf8(m["content"])
    return chat.encode_chat(tok, value, system_prompt=spec.system_prompt)
  if not value.strip():
    raise sources.InvalidRecord(f"field {spec.field!r} is empty", "empty_text")
  eos = [] if tok.eos_id is None else [tok.eos_id]
  return [*tok.encode(sources.require_utf8(value), add_bos=True), *eos], None


def process_chunk(spec: Spec, path_value: str | None, items: Sequence[tuple[int, Any]],
                  tok=None) -> list[tuple]:
  """Tokenizes raw records; per record one of ('ok', line, record, n_tokens, meta),
  ('bad', line, reason, message) or ('filtered', line)."""
  tok = tok or _worker_tokenizer
  out = []
  for line, payload in items:
    try:
      obj = sources.parse_json_object(payload)
      if spec.filter is not None and not spec.filter(obj):
        out.append(("filtered", line))
        continue
      ids, mask = _encode(obj, spec, tok)
    except sources.InvalidRecord as e:
      out.append(("bad", line, e.reason, str(e)))
      continue
    meta = {k: obj[k] for k in spec.keep_fields if k in obj}
    if spec.path_field:
      meta[spec.path_field] = path_value
    out.append(("ok", line, records.encode_record(ids, mask, meta), len(ids), meta))
  return out


def _tasks(files: Sequence[str], spec: Spec, strict: bool) -> Iterator[tuple]:
  """(file_index, path_value, items, end) per chunk of records; `end` is None but in a file's
  last chunk (maybe empty): its truncation message or ''. Truncation is an error if `strict`."""
  columns = sorted({spec.field, *spec.keep_fields, *(spec.filter.fields if spec.filter else ())})
  for index, path in enumerate(files):
    path_value = os.path.basename(os.path.dirname(os.path.abspath(path)))
    chunk, end = [], ""
    try:
      for item in sources.iter_records(path, columns):
        chunk.append(item)
        if len(chunk) == _CHUNK:
          yield index, path_value, chunk, None
          chunk = []
    except sources.TruncatedFile as e:
      if strict:
        raise PreprocessError(str(e)) from None
      end = str(e)
    yield index, path_value, chunk, end


def _results(files, spec, tokenizer_path, workers, tok, strict) -> Iterator[tuple]:
  """(file_index, results, end) per `_tasks` task, in input order; <= 2 * workers in flight."""
  tasks = _tasks(files, spec, strict)
  if workers <= 1:
    yield from ((i, process_chunk(spec, value, items, tok), end) for i, value, items, end in tasks)
    return
  ctx = multiprocessing.get_context("spawn")  # fork is unsafe with tokenizer threads
  with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_path,)) as pool:
    pending = collections.deque()
    for index, value, items, end in tasks:
      pending.append((index, pool.apply_async(process_chunk, (spec, value, items)), end))
      if len(pending) > 2 * workers:
        index, results, end = pending.popleft()
        yield index, results.get(), end
    yield from ((index, results.get(), end) for index, results, end in pending)


def _check_overwrite(output: str, files: Sequence[str]) -> None:
  """--overwrite replaces only a previous preprocess output that holds none of the inputs."""
  out = os.path.realpath(output)
  for f in files:
    if os.path.realpath(f).startswith(out + os.sep):
      raise PreprocessError(f"--overwrite: --output {output} contains the input {f}; "
                            "refusing to replace it")
  if not os.path.isdir(output):
    raise PreprocessError(f"--overwrite: --output {output} is not a directory; refusing to "
                          "replace it")
  if other := sorted(n for n in os.listdir(output) if not records.is_dataset_file(n)):
    raise PreprocessError(f"--overwrite: --output {output} is not a preprocess output (it holds "
                          f"{', '.join(other[:3])}{' ...' if len(other) > 3 else ''}); "
                          "refusing to replace it")


def _write_shards(files, spec, tokenizer, tok, workers, strict, writer, reasons, progress):
  """Consumes the results in order; returns (total, per-file counts, field value counts)."""
  per_file = [{"documents": 0, "tokens": 0, "filtered": 0, "skipped": dict.fromkeys(reasons, 0)}
              for _ in files]
  fields: dict[str, dict[str, dict[str, int]]] = {}
  tokens = 0
  with cli.progress(desc="preprocess", unit=" docs", enabled=progress, mininterval=1.0,
                    leave=False) as bar:
    for index, results, end in _results(files, spec, tokenizer, workers, tok, strict):
      counts = per_file[index]
      for result in results:
        match result:
          case ("bad", line, reason, message):
            if strict:
              raise PreprocessError(f"{files[index]}:{line}: {reason}: {message}")
            counts["skipped"][reason] += 1
          case ("filtered", _):
            counts["filtered"] += 1
          case ("ok", _, record, n, meta):
            writer.write(record, n)
            tokens += n
            # The file's counts and, per kept field, its value's counts.
            for slot in [counts, *(fields.setdefault(k, {}).setdefault(
                filters.as_text(v), {"documents": 0, "tokens": 0}) for k, v in meta.items())]:
              slot["documents"] += 1
              slot["tokens"] += n
      bar.update(len(results))
      bar.set_postfix(tokens=tokens, refresh=False)
      if end is None:  # more of this file to come
        continue
      if end:
        logging.warning("%s; keeping the records read before it", end)
        counts["skipped"]["truncated_file"] += 1
      if counts["documents"] == 0 and counts["filtered"] == 0:
        bad = {k: v for k, v in counts["skipped"].items() if v}
        why = f"every record is bad {bad}" if bad else "it has no records"
        raise PreprocessError(f"{files[index]}: no documents: {why}")
  total = {k: sum(c[k] for c in per_file) for k in ("documents", "tokens", "filtered")}
  total["skipped"] = {r: sum(c["skipped"][r] for c in per_file) for r in reasons}
  return total, per_file, fields


def preprocess(input_pattern: str, tokenizer: str, output: str, *, fmt: str = "text",
               field: str | None = None, filter_expr: str | None = None,
               keep_fields: Sequence[str] = (), path_field: str | None = None,
               system_prompt: str | None = None, strict: bool = False, workers: int = 1,
               records_per_shard: int = 100_000, overwrite: bool = False,
               progress: bool = False) -> dict[str, Any]:
  """Runs the preprocessing; returns the summary; PreprocessError on bad input. `progress`:
  documents read so far on stderr (`cli.progress`: a bar, or lines in a log)."""
  if fmt not in records.FORMATS:
    raise PreprocessError(f"--format must be one of {records.FORMATS}, got {fmt!r}")
  try:
    files = sources.expand_inputs(input_pattern)
    for f in files:
      sources.file_kind(f)
    spec = Spec(fmt, field or ("messages" if fmt == "chat" else "text"), tuple(keep_fields),
                path_field or None, filters.parse_filter(filter_expr), system_prompt or None)
  except ValueError as e:
    raise PreprocessError(str(e)) from None
  output = output.rstrip("/")
  fileio.remove_stale_tmp(output)
  exists = os.path.exists(output)
  if exists and not (os.path.isdir(output) and not os.listdir(output)):  # an empty dir is free
    if not overwrite:
      raise PreprocessError(f"--output {output} exists and is not empty (pass --overwrite to "
                            "replace it)")
    _check_overwrite(output, files)
  try:
    tok = tokenizer_lib.load_tokenizer(tokenizer)
  except (OSError, ValueError, KeyError) as e:
    raise PreprocessError(f"cannot load tokenizer {tokenizer!r}: {e}") from None

  reasons = sources.CHAT_REASONS if fmt == "chat" else sources.TEXT_REASONS
  start = time.perf_counter()
  with fileio.atomic_dir(output, overwrite=exists) as tmp:
    writer = records.ShardWriter(tmp, records_per_shard)
    try:
      total, per_file, fields = _write_shards(files, spec, tokenizer, tok, workers, strict,
                                              writer, reasons, progress)
    finally:
      shards = writer.close()
    if total["documents"] == 0:
      raise PreprocessError(f"--input {input_pattern!r}: no documents left after --filter")
    records.write_manifest(tmp, {
        "format_version": records.FORMAT_VERSION, "format": fmt, **total,
        "tokenizer": {"path": tokenizer, "identity": tok.identity, "bos_id": tok.bos_id,
                      "add_bos": tok.add_bos, "eos_id": tok.eos_id, "vocab_size": tok.vocab_size},
        "options": {"field": spec.field, "filter": filter_expr or None,
                    "keep_fields": list(spec.keep_fields), "path_field": spec.path_field,
                    "system_prompt": spec.system_prompt},
        "inputs": [{**sources.file_digest(p), **c} for p, c in zip(files, per_file)],
        "fields": fields, "shards": shards,
    })
  return {**total, "output": output, "shards": len(shards),
          "seconds": round(time.perf_counter() - start, 3)}


def _define_flags() -> None:
  """CLI flags; defined only when run as a program so importing never clashes."""
  flags.DEFINE_string("input", None, "Comma-separated globs of .jsonl[.gz] / .parquet files.")
  flags.DEFINE_string("tokenizer", None, "Tokenizer file or directory (load_tokenizer).")
  flags.DEFINE_string("output", None, "Output dataset directory (must not exist).")
  flags.DEFINE_enum("format", "text", list(records.FORMATS), "text or chat records.")
  flags.DEFINE_string("text_field", "text", "JSON field holding the text (--format=text).")
  flags.DEFINE_string("messages_field", "messages",
                      "JSON field holding the conversation (--format=chat).")
  flags.DEFINE_string("filter", None, "Keep only records matching, e.g. 'lang == ja' "
                      "(syntax: swallow_jax/data/filters.py).")
  flags.DEFINE_list("keep_fields", [], "JSON fields to store in each record for load-time filters.")
  flags.DEFINE_string("path_field", None,
                      "Store each input file's parent directory name as this field.")
  flags.DEFINE_string("system_prompt", None, "Chat: system prompt for conversations without one.")
  flags.DEFINE_bool("strict", False, "Fail on the first bad record (file:line: reason).")
  flags.DEFINE_bool("json", False, "Print one JSON object with the counts.")
  flags.DEFINE_integer("workers", os.cpu_count() or 1,
                       "Tokenizer processes (<= 1: in this process).")
  flags.DEFINE_integer("records_per_shard", 100_000, "Records per ArrayRecord shard.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  for name in ("input", "tokenizer", "output"):
    if not f[name].value:
      raise cli.UsageError(f"--{name} is required")
  summary = preprocess(
      f.input, f.tokenizer, f.output, fmt=f.format,
      field=f.messages_field if f.format == "chat" else f.text_field,
      filter_expr=f.filter, keep_fields=f.keep_fields, path_field=f.path_field,
      system_prompt=f.system_prompt, strict=f.strict, workers=f.workers,
      records_per_shard=f.records_per_shard, overwrite=f.overwrite, progress=True)
  if f.json:
    cli.print_json(summary)
  else:
    skipped = ", ".join(f"{k}={v}" for k, v in summary["skipped"].items() if v) or "none"
    print(f"wrote {summary['documents']} documents, {summary['tokens']} tokens in "
          f"{summary['shards']} shards to {summary['output']} (skipped: {skipped}; "
          f"filtered: {summary['filtered']}) in {summary['seconds']} s")


if __name__ == "__main__":
  cli.run(main, prog="preprocess", define_flags=_define_flags)
