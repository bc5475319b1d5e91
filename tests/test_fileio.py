"""swallow_jax.fileio: complete-or-absent writes, and cleanup of leftovers of dead processes."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from swallow_jax import fileio


def test_atomic_file_replaces_only_on_success(tmp_path):
  path = tmp_path / "a" / "out.txt"
  with fileio.atomic_file(str(path)) as f:
    f.write("one")
  assert path.read_text() == "one"
  assert oct(path.stat().st_mode & 0o777) == oct(0o644)
  with pytest.raises(RuntimeError):
    with fileio.atomic_file(str(path)) as f:
      f.write("two")
      raise RuntimeError("boom")
  assert path.read_text() == "one"
  assert os.listdir(path.parent) == ["out.txt"]  # no temporary left behind


def test_atomic_file_binary_and_gzip(tmp_path):
  with fileio.atomic_file(str(tmp_path / "x.bin"), "wb") as f:
    f.write(b"\x00\x01")
  assert (tmp_path / "x.bin").read_bytes() == b"\x00\x01"
  with fileio.atomic_file(str(tmp_path / "x.jsonl.gz")) as f:
    f.write("日本\n")
  with gzip.open(tmp_path / "x.jsonl.gz", "rt", encoding="utf-8") as f:
    assert f.read() == "日本\n"
  with pytest.raises(ValueError, match="mode"):
    with fileio.atomic_file(str(tmp_path / "y"), "a"):
      pass


def test_write_json_keeps_non_ascii(tmp_path):
  fileio.write_json(str(tmp_path / "r.json"), {"name": "東京", "x": 0.1})
  text = (tmp_path / "r.json").read_text(encoding="utf-8")
  assert "東京" in text and json.loads(text) == {"name": "東京", "x": 0.1}


def test_atomic_dir_refuses_then_replaces(tmp_path):
  out = tmp_path / "model"
  with fileio.atomic_dir(str(out)) as tmp:
    assert not out.exists()
    open(os.path.join(tmp, "w"), "w").close()
  assert sorted(os.listdir(out)) == ["w"]
  assert oct(out.stat().st_mode & 0o777) == oct(0o755)
  with pytest.raises(FileExistsError, match="--overwrite"):
    with fileio.atomic_dir(str(out)):
      pass
  with pytest.raises(RuntimeError):
    with fileio.atomic_dir(str(out), overwrite=True) as tmp:
      open(os.path.join(tmp, "v"), "w").close()
      raise RuntimeError("killed")
  assert sorted(os.listdir(out)) == ["w"]  # the old one survives a failed replacement
  with fileio.atomic_dir(str(out), overwrite=True) as tmp:
    open(os.path.join(tmp, "v"), "w").close()
  assert sorted(os.listdir(out)) == ["v"]
  assert sorted(os.listdir(tmp_path)) == ["model"]


def test_remove_stale_tmp_only_touches_dead_processes(tmp_path):
  out = tmp_path / "shards"
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  (tmp_path / f".shards.tmp-{dead}").mkdir()
  (tmp_path / f".shards.tmp-{os.getpid()}").mkdir()  # a live job's: kept
  (tmp_path / f".other.tmp-{dead}").mkdir()  # another output's: kept
  removed = fileio.remove_stale_tmp(str(out))
  assert [os.path.basename(p) for p in removed] == [f".shards.tmp-{dead}"]
  assert sorted(os.listdir(tmp_path)) == sorted([f".shards.tmp-{os.getpid()}", f".other.tmp-{dead}"])


def test_read_jsonl_rows_and_one_line_errors(tmp_path):
  path = tmp_path / "rows.jsonl"
  path.write_bytes('\ufeff{"a": 1}\n\n  \n{"b": "東京"}\n'.encode("utf-8"))
  assert list(fileio.read_jsonl(str(path))) == [(1, {"a": 1}), (4, {"b": "東京"})]
  cases = {b'{"a": 1}\n{oops\n': r"rows.jsonl:2: not JSON", b'[1]\n': r"rows.jsonl:1: expected "
           r"a JSON object, got list", b'{"a": 1}\n\xff\n': r"rows.jsonl:2: not UTF-8"}
  for data, message in cases.items():
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
      list(fileio.read_jsonl(str(path)))
  with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file or directory"):
    list(fileio.read_jsonl(str(tmp_path / "nope.jsonl")))


def test_read_json_value_and_one_line_errors(tmp_path):
  path = tmp_path / "config.json"
  path.write_bytes('\ufeff{"a": [1, "東京"]}\n'.encode("utf-8"))
  assert fileio.read_json(str(path)) == {"a": [1, "東京"]}
  cases = {b'{"a": 1,\n\n oops}': r"config.json:3: not JSON", b'{"a": "\n\xff"}': r"config.json:2: "
           r"not UTF-8"}
  for data, message in cases.items():
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
      fileio.read_json(str(path))
  with pytest.raises(FileNotFoundError, match="nope.json: no such file or directory"):
    fileio.read_json(str(tmp_path / "nope.json"))
