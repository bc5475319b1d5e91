"""OASST top-1 thread extraction on a hand-made export."""

import gzip
import json
import subprocess
import sys

import pytest

from swallow_jax import fileio
from swallow_jax.data import oasst


def msg(mid, role, text=None, rank=None, deleted=False, lang="en", replies=()):
  return {"message_id": mid, "role": role, "text": text or f"text {mid}", "rank": rank,
          "deleted": deleted, "lang": lang, "replies": list(replies)}


def tree(tid, root, state="ready_for_export"):
  return {"message_tree_id": tid, "tree_state": state, "prompt": root}


TREES = [
    tree("t1", msg("P0", "prompter", replies=[
        msg("A1", "assistant", rank=0, replies=[
            msg("P2", "prompter", replies=[msg("A3", "assistant", rank=0),
                                           msg("A4", "assistant", rank=1)]),
            msg("P5", "prompter"),
            msg("P8", "prompter"),
        ]),
        msg("A6", "assistant", rank=1),
        msg("A7", "assistant"),  # unranked, but has siblings
    ])),
    tree("t2", msg("Q0", "prompter", replies=[
        msg("B1", "assistant", replies=[  # unranked only reply: allowed
            msg("Q2", "prompter", deleted=True, replies=[msg("B3", "assistant", rank=0)]),
            msg("Q4", "prompter"),
        ])])),
    tree("t3", msg("R0", "prompter", replies=[msg("C1", "assistant", rank=0)]), state="growing"),
    tree("t4", msg("S0", "prompter", lang="ja", replies=[msg("D1", "assistant", rank=0,
                                                             lang="ja")])),
    tree("t5", msg("U0", "prompter")),
]

WANT_EN = [
    ("t1", ["P0", "A1", "P2", "A3"]),
    ("t1", ["P0", "A1"]),
    ("t2", ["Q0", "B1"]),
]


def as_ids(rows):
  return [(r["message_tree_id"], [m["content"].split()[-1] for m in r["messages"]])
          for r in rows]


def flatten(trees):
  out = []

  def walk(node, parent, t):
    out.append({k: v for k, v in node.items() if k != "replies"} |
               {"parent_id": parent, "message_tree_id": t["message_tree_id"],
                "tree_state": t["tree_state"]})
    for r in node["replies"]:
      walk(r, node["message_id"], t)

  for t in trees:
    walk(t["prompt"], None, t)
  return out


def test_top1_threads_and_counts():
  rows, counts = oasst.extract(TREES, ["en"])
  assert as_ids(rows) == WANT_EN
  assert counts["dropped"] == {"deleted": 1, "low_rank": 2, "unranked": 1, "no_assistant": 1,
                               "duplicate": 1}
  assert counts["trees"] == 5 and counts["trees_not_ready"] == 1
  assert counts["trees_other_lang"] == 1 and counts["threads"] == 3
  roles = [m["role"] for m in rows[0]["messages"]]
  assert roles == ["user", "assistant", "user", "assistant"]
  rows_all, _ = oasst.extract(TREES)
  assert ("t4", ["S0", "D1"]) in as_ids(rows_all)


def test_flat_messages_give_the_same_threads(tmp_path):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pq.write_table(pa.Table.from_pylist(flatten(TREES)), tmp_path / "m.parquet")
  rows, _ = oasst.extract(oasst.read_trees([str(tmp_path / "m.parquet")]), ["en"])
  assert as_ids(rows) == WANT_EN


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "swallow_jax.data.oasst", *args],
                        capture_output=True, text=True, check=False)


def test_cli(tmp_path):
  src = tmp_path / "trees.jsonl.gz"
  with gzip.open(src, "wt") as f:
    f.write("".join(json.dumps(t) + "\n" for t in TREES))
  out = tmp_path / "top1.jsonl"
  res = _cli(f"--input={src}", f"--output={out}", "--lang=en", "--json")
  assert res.returncode == 0, res.stderr
  assert json.loads(res.stdout)["threads"] == 3
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert as_ids(rows) == WANT_EN and rows[0]["lang"] == "en"
  res = _cli(f"--input={src}", f"--output={tmp_path / 'none.jsonl'}", "--lang=xx")
  assert res.returncode != 0 and res.stderr.startswith("oasst: error: no threads left")
  assert not (tmp_path / "none.jsonl").exists()


@pytest.mark.parametrize("line", ['{"message_tree_id": 1', '{"foo": 1}'])
def test_bad_export_line_is_an_error(tmp_path, line):
  (tmp_path / "x.jsonl").write_text(line + "\n")
  with pytest.raises(ValueError, match=r"x\.jsonl:1: "):
    list(oasst.read_trees([str(tmp_path / "x.jsonl")]))


def test_truncated_export_is_a_one_line_error(tmp_path):
  src = tmp_path / "trees.jsonl.gz"
  data = gzip.compress("".join(json.dumps(t) + "\n" for t in TREES * 50).encode())
  src.write_bytes(data[:len(data) // 2])
  res = _cli(f"--input={src}", f"--output={tmp_path / 'o.jsonl'}")
  assert res.returncode != 0
  assert res.stderr.strip().splitlines() == [res.stderr.strip()]
  assert "trees.jsonl.gz: truncated gzip stream after" in res.stderr
  assert not list(tmp_path.glob("*o.jsonl*"))


def test_write_jsonl_leaves_nothing_on_failure(tmp_path):
  out = tmp_path / "o.jsonl.gz"
  with pytest.raises(TypeError):
    fileio.write_jsonl(str(out), [{"ok": 1}, {"bad": object()}])
  assert not list(tmp_path.iterdir())
  fileio.write_jsonl(str(out), [{"ok": 1}])
  with gzip.open(out, "rt") as f:
    assert json.loads(f.read()) == {"ok": 1}
