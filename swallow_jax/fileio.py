"""File helpers: atomic writes (a file or a directory appears complete under its final name, or
not at all) and the one JSON and JSONL readers (ValueError "FILE:LINE: ...").

The one place that writes "temporary sibling, then rename". A killed process leaves at most a
`.NAME.tmp-PID` sibling; `remove_stale_tmp` clears those of dead processes.
"""

from collections.abc import Iterable, Iterator, Mapping
import contextlib
import gzip
import json
import logging
import os
import re
import shutil
import tempfile
from typing import IO, Any

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(-\w+)?$")


def _tmp_name(path: str) -> str:
  parent, base = os.path.split(os.path.abspath(path))
  return os.path.join(parent, f".{base}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", encoding: str | None = "utf-8",
                file_mode: int = 0o644) -> Iterator[IO[Any]]:
  """Opens a temporary sibling of `path` for writing ("w": text, or "wb"; gzip for .gz); renames
  it over `path` on success. On an exception the temporary file is removed, `path` left as it was.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_file: mode must be 'w' or 'wb', not {mode!r}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = _tmp_name(path)
  binary = mode == "wb"
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(tmp, "wb" if binary else "wt", encoding=None if binary else encoding) as f:
      yield f
    os.chmod(tmp, file_mode)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_json(path: str, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> None:
  """Writes `obj` as UTF-8 JSON (non-ASCII kept as is) atomically."""
  with atomic_file(path) as f:
    json.dump(obj, f, indent=indent, ensure_ascii=False, sort_keys=sort_keys)
    f.write("\n")


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> None:
  """Writes one UTF-8 JSON object per line (non-ASCII kept as is) atomically; gzip for .gz."""
  with atomic_file(path) as f:
    f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False) -> Iterator[str]:
  """Yields a new empty temporary directory (mode 0755); on success it replaces `path` in one
  rename. An existing `path` is an error unless `overwrite` (swapped out once the new one is
  complete). On an exception the temporary directory is removed.
  """
  path = os.path.abspath(path)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} already exists (pass --overwrite to replace it)")
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = _tmp_name(path)
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  os.chmod(tmp, 0o755)
  try:
    yield tmp
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
      os.rename(path, os.path.join(old, "x"))
      os.rename(tmp, path)
      shutil.rmtree(old)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def read_json(path: str) -> Any:
  """The JSON value in a UTF-8 file (a BOM is skipped). FileNotFoundError for a missing file;
  ValueError `path:line: ...` for non-UTF-8 or non-JSON."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or directory")
  with open(path, "rb") as f:
    raw = f.read().removeprefix(b"\xef\xbb\xbf")
  try:
    return json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise ValueError(f"{path}:{line}: not UTF-8 ({e.reason})") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None


def read_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, object) for each non-blank line of a UTF-8 JSONL file (a BOM is skipped).
  FileNotFoundError for a missing file; ValueError `path:line: ...` for a line that is not UTF-8,
  not JSON or not a JSON object."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or directory")
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8").removeprefix("\ufeff") if n == 1 else raw.decode("utf-8")
        if not line.strip():
          continue
        row = json.loads(line)
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{n}: not UTF-8 ({e.reason})") from None
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
      yield n, row


def pid_alive(pid: int) -> bool:
  """Whether a process with this PID runs on this host (one we may not signal counts as alive)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def remove_stale_tmp(path: str) -> list[str]:
  """Removes `.NAME.tmp-PID` siblings of `path` left by dead processes; returns what went.

  Logs one line per removed leftover. Those of live processes (another job) are left alone.
  """
  parent, base = os.path.split(os.path.abspath(path))
  removed = []
  if not os.path.isdir(parent):
    return removed
  for name in os.listdir(parent):
    m = _TMP_RE.match(name)
    if not m or m.group("name") != base or pid_alive(int(m.group("pid"))):
      continue
    leftover = os.path.join(parent, name)
    shutil.rmtree(leftover) if os.path.isdir(leftover) else os.remove(leftover)
    logging.warning("removed %s, left by a process (PID %s) that is no longer running",
                    leftover, m.group("pid"))
    removed.append(leftover)
  return removed
