"""Grain pipeline: packing and masks vs a NumPy reference, mixture, slicing, state."""

import json

import grain
import numpy as np
import pytest

from swallow_jax.data import pipeline
from helpers import random_docs, two_source_cfg, write_dataset


def reference_pretrain(docs, seq_len, rows):
  """Plain NumPy: concatenate, cut rows of seq_len + 1, segments per fragment in a row."""
  stream = np.concatenate([np.asarray(d) for d in docs])
  doc_of = np.concatenate([np.full(len(d), i) for i, d in enumerate(docs)])
  out = []
  for r in range(rows):
    sl = slice(r * (seq_len + 1), (r + 1) * (seq_len + 1))
    tok, owner = stream[sl], doc_of[sl]
    seg = np.cumsum(np.r_[1, owner[1:] != owner[:-1]])
    pos = np.zeros_like(seg)
    for i in range(1, len(seg)):
      pos[i] = pos[i - 1] + 1 if seg[i] == seg[i - 1] else 0
    same = seg[1:] == seg[:-1]
    out.append({"inputs": tok[:-1], "targets": np.where(same, tok[1:], 0),
                "positions": pos[:-1], "segment_ids": seg[:-1],
                "loss_weights": same.astype(np.float32)})
  return out


def reference_sft(convs, masks, seq_len, rows):
  """Plain NumPy greedy packing (first fit with one bin), zero padding."""
  length, out, row = seq_len + 1, [], []

  def emit():
    tok = np.zeros(length, int)
    msk, seg, pos = np.zeros(length), np.zeros(length, int), np.zeros(length, int)
    at = 0
    for s, (c, m) in enumerate(row, 1):
      tok[at:at + len(c)], msk[at:at + len(c)] = c, m
      seg[at:at + len(c)], pos[at:at + len(c)] = s, np.arange(len(c))
      at += len(c)
    same = (seg[1:] == seg[:-1]) & (seg[:-1] > 0)
    out.append({"inputs": tok[:-1], "targets": np.where(same, tok[1:], 0),
                "positions": pos[:-1], "segment_ids": seg[:-1],
                "loss_weights": (same * msk[1:]).astype(np.float32)})

  for c, m in zip(convs, masks):
    c, m = c[:length], m[:length]
    if sum(len(x) for x, _ in row) + len(c) > length:
      emit()
      row = []
    row.append((c, m))
    if len(out) == rows:
      break
  return out


def take_rows(it, n):
  rows = []
  while len(rows) < n:
    batch = next(it)
    rows.extend({k: v[i] for k, v in batch.items()} for i in range(len(batch["inputs"])))
  return rows[:n]


def assert_rows_equal(got, want):
  for r, (g, w) in enumerate(zip(got, want)):
    for k in w:
      np.testing.assert_array_equal(g[k], w[k], err_msg=f"row {r} {k}")
    assert g["inputs"].dtype == np.int32 and g["loss_weights"].dtype == np.float32


def test_pretrain_packing_matches_numpy_reference(tmp_path):
  rng = np.random.default_rng(0)
  docs = random_docs(rng, 40, 1, 90)  # many shorter and some longer than seq_len
  src = {"name": "a", "path": write_dataset(tmp_path / "a", docs), "weight": 1.0}
  cfg = {"kind": "pretrain", "sources": [src], "shuffle_seed": 5}
  seq_len, n_rows = 32, 30
  it = pipeline.make_train_iterator(cfg, seq_len=seq_len, batch_size_per_process=3,
                                    process_index=0, process_count=1, seed=0)
  got = take_rows(it, n_rows)
  order = pipeline.source_documents(src, index=0, kind="pretrain", seq_len=seq_len,
                                    process_index=0, process_count=1, seed=5)
  shuffled = [order[i]["tokens"] for i in range(2 * len(docs))]  # two epochs
  assert sorted(d[1] for d in shuffled[:len(docs)]) == list(range(len(docs)))
  assert_rows_equal(got, reference_pretrain(shuffled, seq_len, n_rows))
  assert it.source_tokens == {"a": int(sum(np.count_nonzero(r["segment_ids"]) for r in got))}


def test_sft_packing_and_masks_match_numpy_reference(tmp_path):
  rng = np.random.default_rng(1)
  convs = random_docs(rng, 30, 2, 40)
  masks = [rng.integers(0, 2, len(c)) for c in convs]
  src = {"name": "chat", "path": write_dataset(tmp_path / "c", convs, "chat", masks)}
  seq_len, n_rows = 24, 12
  cfg = {"kind": "sft", "sources": [src], "shuffle_seed": 2, "packing_bins": 1}
  it = pipeline.make_train_iterator(cfg, seq_len=seq_len, batch_size_per_process=4,
                                    process_index=0, process_count=1, seed=0)
  got = take_rows(it, n_rows)
  order = pipeline.source_documents(src, index=0, kind="sft", seq_len=seq_len,
                                    process_index=0, process_count=1, seed=2)
  docs = [order[i] for i in range(3 * len(convs))]
  want = reference_sft([d["tokens"] for d in docs], [d["loss_mask"] for d in docs],
                       seq_len, n_rows)
  assert_rows_equal(got, want)
  # Truncation happened and masks really are the stored ones.
  assert any(len(c) > seq_len + 1 for c in convs)
  by_id = {c[1]: m for c, m in zip(convs, masks)}
  for d in docs:
    np.testing.assert_array_equal(d["loss_mask"], by_id[d["tokens"][1]][:seq_len + 1])


def test_sft_many_bins_keeps_whole_conversations(tmp_path):
  rng = np.random.default_rng(2)
  convs = random_docs(rng, 25, 2, 20)
  masks = [rng.integers(0, 2, len(c)) for c in convs]
  src = {"name": "chat", "path": write_dataset(tmp_path / "c", convs, "chat", masks)}
  it = pipeline.make_train_iterator({"kind": "sft", "sources": [src]}, seq_len=40,
                                    batch_size_per_process=5, process_index=0,
                                    process_count=1, seed=3)
  by_id = {c[1]: (np.asarray(c), m) for c, m in zip(convs, masks)}
  for row in take_rows(it, 20):
    seg, inp, w = row["segment_ids"], row["inputs"], row["loss_weights"]
    for s in set(seg[seg > 0]):
      idx = np.flatnonzero(seg == s)
      conv, mask = by_id[inp[idx[0] + 1]]
      n = len(idx)  # the last token of the row may sit only in targets
      np.testing.assert_array_equal(inp[idx], conv[:n])
      np.testing.assert_array_equal(row["positions"][idx], np.arange(n))
      np.testing.assert_array_equal(w[idx][:len(conv) - 1], mask[1:n + 1][:len(conv) - 1])
      assert w[idx][len(conv) - 1:].sum() == 0


def test_mixture_token_shares_match_weights(tmp_path):
  rng = np.random.default_rng(3)
  weights = {"ja": 0.6, "en": 0.3, "code": 0.1}
  lengths = {"ja": (5, 30), "en": (50, 200), "code": (2, 8)}  # docs differ in length
  srcs = []
  for s, name in enumerate(weights):
    docs = random_docs(rng, 50, *lengths[name], base=1000 * (s + 1))
    srcs.append({"name": name, "path": write_dataset(tmp_path / name, docs),
                 "weight": weights[name]})
  it = pipeline.make_train_iterator({"sources": srcs}, seq_len=64, batch_size_per_process=10,
                                    process_index=0, process_count=1, seed=0)
  rows = take_rows(it, 500)
  counted = np.zeros(3)
  for r in rows:  # pretraining rows hold one source each (its body tokens tell which)
    (source,) = set(r["inputs"][r["inputs"] >= 1000] // 1000 - 1)
    counted[source] += np.count_nonzero(r["segment_ids"])
  shares = counted / counted.sum()
  np.testing.assert_allclose(shares, list(weights.values()), atol=0.02)
  total = sum(it.source_tokens.values())
  assert total == sum(np.count_nonzero(r["segment_ids"]) for r in rows) == 500 * 64
  for name, w in weights.items():
    assert abs(it.source_tokens[name] / total - w) < 0.01


@pytest.mark.parametrize("count", [2, 3])
def test_process_slices_are_disjoint_and_cover(tmp_path, count):
  rng = np.random.default_rng(4)
  src = {"name": "a", "path": write_dataset(tmp_path / "a", random_docs(rng, 31, 1, 5))}
  seen = []
  for index in range(count):
    ds = pipeline.source_documents(src, index=0, kind="pretrain", seq_len=8,
                                   process_index=index, process_count=count, seed=0,
                                   repeat=False)
    seen.append({int(d["tokens"][1]) for d in ds})
    assert len(seen[-1]) == len(ds)
  assert sum(map(len, seen)) == 31 and set().union(*seen) == set(range(31))
  batches = [next(pipeline.make_train_iterator(
      {"sources": [src]}, seq_len=8, batch_size_per_process=2, process_index=i,
      process_count=count, seed=0))["inputs"] for i in range(count)]
  assert not np.array_equal(batches[0], batches[1])


def test_load_time_filter(tmp_path):
  rng = np.random.default_rng(5)
  docs = random_docs(rng, 40, 1, 6)
  subsets = ["stories", "web_samples_v1", "web_samples_v2", "wikihow"]
  metas = [{"subset": subsets[i % 4]} for i in range(40)]
  src = {"name": "cosmo", "path": write_dataset(tmp_path / "c", docs, metas=metas),
         "filter": "subset not in [web_samples_v1, web_samples_v2]"}
  ds = pipeline.source_documents(src, index=0, kind="pretrain", seq_len=8, process_index=0,
                                 process_count=1, seed=0, repeat=False)
  ids = sorted(int(d["tokens"][1]) for d in ds.to_iter_dataset())
  assert ids == [i for i in range(40) if i % 4 in (0, 3)]
  for flt, error in (("lang == ja", "not stored"), ("subset == nothing", "keeps no document")):
    with pytest.raises(ValueError, match=error):
      pipeline.source_documents(dict(src, filter=flt), index=0, kind="pretrain", seq_len=8,
                                process_index=0, process_count=1, seed=0)


def test_config_errors(tmp_path):
  rng = np.random.default_rng(6)
  path = write_dataset(tmp_path / "a", random_docs(rng, 3, 1, 4))
  make = lambda cfg: pipeline.make_train_iterator(  # pylint: disable=g-long-lambda
      cfg, seq_len=8, batch_size_per_process=1, process_index=0, process_count=1, seed=0)
  with pytest.raises(ValueError, match="needs chat"):
    make({"kind": "sft", "sources": [{"name": "a", "path": path}]})
  with pytest.raises(ValueError, match="unique"):
    make({"sources": [{"name": "a", "path": path}, {"name": "a", "path": path}]})
  with pytest.raises(ValueError, match="no manifest"):
    make({"sources": [{"name": "x", "path": str(tmp_path)}]})
  with pytest.raises(ValueError, match="none for process"):
    pipeline.make_train_iterator({"sources": [{"name": "a", "path": path}]}, seq_len=8,
                                 batch_size_per_process=1, process_index=3,
                                 process_count=4, seed=0)


@pytest.mark.parametrize("kind", ["pretrain", "sft"])
def test_state_restore_continues_identically(tmp_path, kind):
  cfg = two_source_cfg(tmp_path, kind)
  kw = dict(seq_len=16, batch_size_per_process=2, process_index=0, process_count=1, seed=0)
  it = pipeline.make_train_iterator(cfg, **kw)
  states, counts, batches = [], [], []
  # A state after every step: some hold no partly packed document, which a JSON round trip of
  # Grain's packer state used to restore wrongly.
  for _ in range(12):
    states.append(json.loads(json.dumps(it.get_state())))  # what CheckpointSave writes
    counts.append(it.source_tokens)
    batches.append(next(it))
  for step in range(9):
    fresh = pipeline.make_train_iterator(cfg, **kw)
    fresh.set_state(states[step])
    assert fresh.source_tokens == counts[step]
    for w, g in zip(batches[step:step + 3], (next(fresh) for _ in range(3))):
      assert w.keys() == g.keys()
      for k in w:
        np.testing.assert_array_equal(w[k], g[k], err_msg=f"{kind}: restored at step {step}")


def test_orbax_composite_checkpoint_restores_stream(tmp_path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  cfg = two_source_cfg(tmp_path)
  kw = dict(seq_len=16, batch_size_per_process=2, process_index=0, process_count=1, seed=0)
  it = pipeline.make_train_iterator(cfg, **kw)
  for _ in range(5):
    next(it)
  with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mgr:
    mgr.save(5, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"w": jnp.arange(3.0)}),
        data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
  want = [next(it) for _ in range(4)]
  fresh = pipeline.make_train_iterator(cfg, **kw)
  with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mgr:
    restored = mgr.restore(5, args=ocp.args.Composite(
        state=ocp.args.StandardRestore({"w": jnp.zeros(3)}),
        data=grain.checkpoint.CheckpointRestore(fresh)))
  np.testing.assert_array_equal(restored["state"]["w"], np.arange(3.0))
  for w in want:
    g = next(fresh)
    for k in w:
      np.testing.assert_array_equal(w[k], g[k])
