"""Vocabulary statistics, the expansion study, embedding resize, and the vocab command line."""

import json
import os
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from swallow_jax.tokenizer import load_tokenizer
from swallow_jax.vocab import convert
from swallow_jax.vocab import train
from swallow_jax.vocab import expand as expand_lib
from swallow_jax.vocab import resize, stats
from helpers import (LLAMA3_DIR, TINY_MERGES, write_tiny_sentencepiece,
                     write_tiny_tiktoken)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["東京", "大阪", "京都", "天気", "晴れ", "学校", "先生", "学生", "電車", "会社", "仕事",
         "日本語", "勉強", "図書館", "コンピュータ", "ファイル", "システム", "パッケージ",
         "インストール", "ネットワーク", "ひらがな", "ありがとう"]
TEMPLATES = ["{}の{}は{}です。", "{}で{}を{}しました。", "{}から{}まで{}に行きます。",
             "{}と{}が{}ではありません。", "きょうは{}と{}について{}をかんがえる。"]


def japanese_lines(n: int, seed: int) -> list[str]:
  rng = random.Random(seed)
  return [rng.choice(TEMPLATES).format(*rng.sample(WORDS, 3)) for _ in range(n)]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
  d = tmp_path_factory.mktemp("text")
  (d / "corpus.txt").write_text("\n".join(japanese_lines(800, 0)) + "\n", encoding="utf-8")
  (d / "heldout.txt").write_text("\n".join(japanese_lines(100, 1)) + "\n", encoding="utf-8")
  return str(d / "corpus.txt"), str(d / "heldout.txt")


@pytest.fixture(scope="module")
def char_base(tmp_path_factory):
  """Bytes plus every character of the test text (via its 2-byte prefix) as tokens."""
  chars = sorted(set("".join(WORDS + TEMPLATES)) - set("{}"))
  merges = []
  for c in chars:
    data = c.encode()
    for token in (data[:2], data):
      if len(data) > 1 and token not in merges:
        merges.append(token)
  return write_tiny_tiktoken(tmp_path_factory.mktemp("base") / "tokenizer.model", merges)


# --------------------------------------------------------------------------------------------
# Statistics


def test_vocab_stats_exact_counts(tmp_path):
  tik = load_tokenizer(write_tiny_tiktoken(tmp_path / "tokenizer.model"))
  hf = load_tokenizer(convert.tiktoken_to_tokenizer_json(tik, tmp_path / "tokenizer.json"))
  sp = load_tokenizer(write_tiny_sentencepiece(
      tmp_path / "sp.model", ["あ", "い", "▁あ", "ア", "ー", "日", "本", "日本", "々", "▁", "a"]))
  # あ い | ア ー | 日 本; not: 2-byte prefixes, あい, 日本, ' あ', 々 (U+3005), bytes.
  expected = {"hiragana": 2, "katakana": 2, "cjk": 2}
  assert stats.vocab_stats(tik) == {"vocab_size": 256 + len(TINY_MERGES) + 256, **expected}
  assert stats.vocab_stats(hf) == stats.vocab_stats(tik)
  assert stats.vocab_stats(sp) == {"vocab_size": 3 + 256 + 11, **expected}
  assert stats.single_character(tik, 256 + TINY_MERGES.index("あ".encode()[:2])) is None


def test_llama3_stats(tmp_path):
  tik = load_tokenizer(os.path.join(LLAMA3_DIR, "tokenizer.model"))
  counts = stats.vocab_stats(tik)
  assert counts == {"vocab_size": 128256, "hiragana": 75, "katakana": 83, "cjk": 2314}


def test_corpus_stats(tmp_path):
  tok = load_tokenizer(write_tiny_tiktoken(tmp_path / "tokenizer.model"))
  (tmp_path / "c.txt").write_text("abcab\n日本\n\n", encoding="utf-8")
  got = stats.corpus_stats(tok, stats.read_lines(tmp_path / "c.txt"))
  assert got == {"chars": 7, "tokens": 3, "chars_per_token": 7 / 3}
  (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
  with pytest.raises(ValueError, match="bad.txt: not UTF-8"):
    stats.read_lines(tmp_path / "bad.txt")


# --------------------------------------------------------------------------------------------
# Expansion


def _check_expanded(base, result, heldout):
  new = load_tokenizer(result.output)
  assert new.backend == base.backend
  assert new.vocab_size == base.vocab_size + result.num_new
  assert new.special_tokens == base.special_tokens
  assert [new.token_bytes(i) for i in range(base.vocab_size)] == [
      base.token_bytes(i) for i in range(base.vocab_size)]
  assert [new.token_bytes(i).decode() for i in range(base.vocab_size, new.vocab_size)] == (
      result.new_tokens)
  lines = stats.read_lines(heldout)
  assert stats.count_tokens(base, lines) == result.heldout_tokens_before
  assert stats.count_tokens(new, lines) == result.heldout_tokens_after
  assert all(new.decode(new.encode(line)) == line for line in lines)
  with open(os.path.join(os.path.dirname(result.output), "expansion.json"),
            encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["new_tokens"] == result.new_tokens and saved["num_new"] == result.num_new
  return new


def test_expand_tiktoken_and_tokenizer_json_agree(char_base, texts, tmp_path):
  corpus, heldout = texts
  base = load_tokenizer(char_base)
  as_json = convert.tiktoken_to_tokenizer_json(base, tmp_path / "tokenizer.json")
  a = expand_lib.expand(char_base, corpus, heldout, 40, str(tmp_path / "a"))
  b = expand_lib.expand(as_json, corpus, heldout, 40, str(tmp_path / "b"))
  assert a.num_new == b.num_new == 40 and a.new_tokens == b.new_tokens
  assert a.skipped_present >= 60  # The learned characters: the base has them all.
  assert 0.3 < a.reduction < 1 and a.speedup == pytest.approx(1 / (1 - a.reduction))
  assert a.new_tokens_used > 0
  new_a = _check_expanded(base, a, heldout)
  new_b = _check_expanded(load_tokenizer(as_json), b, heldout)
  for line in stats.read_lines(heldout):
    assert new_a.encode(line) == new_b.encode(line)
  assert new_a.encode("東京") == [new_a.token_to_id("東京")]


def test_expand_keeps_the_base_token_roles(char_base, texts, tmp_path):
  """tokenizer_config.json & co. travel with the expanded tokenizer: same roles, same template."""
  corpus, heldout = texts
  base_dir = tmp_path / "base"
  base_dir.mkdir()
  (base_dir / "tokenizer.model").write_bytes(open(char_base, "rb").read())
  template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}|{% endfor %}"
  (base_dir / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "a", "eos_token": "b", "pad_token": "c", "add_bos_token": False,
       "chat_template": template}))
  (base_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [98, 100]}))
  base = load_tokenizer(base_dir)
  result = expand_lib.expand(str(base_dir), corpus, heldout, 10, str(tmp_path / "out"))
  new = load_tokenizer(tmp_path / "out")
  assert result.num_new == 10 and new.vocab_size == base.vocab_size + 10
  assert (new.bos_id, new.eos_id, new.pad_id) == (base.bos_id, base.eos_id, base.pad_id) == (
      97, 98, 99)
  assert new.stop_ids == base.stop_ids and new.stop_ids[:2] == (98, 100)  # + the EOT token
  assert not new.add_bos and new.bos_prefix() == []
  assert new.chat_template == base.chat_template == template
  for name in ("tokenizer_config.json", "generation_config.json"):
    assert os.stat(tmp_path / "out" / name).st_mode & 0o777 == 0o644


def test_expand_supports_fewer_than_asked(char_base, texts, tmp_path):
  corpus, heldout = texts
  result = expand_lib.expand(char_base, corpus, heldout, 100000, str(tmp_path / "x"))
  assert 40 < result.num_new < 100000 and result.num_new == len(result.new_tokens)
  assert result.num_new_requested == 100000
  assert result.reduction > 0.5
  _check_expanded(load_tokenizer(char_base), result, heldout)


def test_expand_sentencepiece_bases(texts, tmp_path):
  corpus, heldout = texts
  english = [f"the {w} of {v} is {u}" for w, v, u in zip(*[random.Random(s).choices(
      ["cat", "dog", "house", "tree", "river", "town"], k=200) for s in range(3)])]
  for model_type in ("bpe", "unigram"):
    base_path = train.train_sentencepiece(iter(english), 300, tmp_path / model_type,
                                                  model_type=model_type, shrink_to_fit=True)
    base = load_tokenizer(base_path)
    result = expand_lib.expand(base_path, corpus, heldout, 60, str(tmp_path / f"out_{model_type}"))
    # Characters missing from the English base come first (sentencepiece takes them as is).
    assert all(len(t) == 1 for t in result.new_tokens[:10])
    assert result.num_new == 60 and result.reduction > 0.3
    new = _check_expanded(base, result, heldout)
    assert new.special_tokens == base.special_tokens
  with pytest.raises(ValueError, match="unigram sentencepiece base needs"):
    expand_lib.expand(base_path, corpus, heldout, 10, str(tmp_path / "z"), model_type="bpe")


def test_expand_llama3(texts, tmp_path):
  corpus, heldout = texts
  result = expand_lib.expand(os.path.join(LLAMA3_DIR, "tokenizer.model"), corpus, heldout, 30,
                             str(tmp_path / "l3"))
  assert result.num_new == 30 and result.vocab_size_after == 128256 + 30
  assert 0 < result.reduction < 1
  new = _check_expanded(load_tokenizer(os.path.join(LLAMA3_DIR, "tokenizer.model")), result,
                        heldout)
  assert (new.bos_id, new.eot_id) == (128000, 128009)


def test_bpe_merge():
  ranks = {"ab": 0, "bc": 1, "abc": 2}
  assert expand_lib.bpe_merge(list("abc"), lambda a, b: ranks.get(a + b)) == ["abc"]
  assert expand_lib.bpe_merge(list("abd"), lambda a, b: ranks.get(a + b)) == ["ab", "d"]


# --------------------------------------------------------------------------------------------
# Resize


def test_grow_rows_means_and_bits():
  table = jnp.asarray(np.random.default_rng(0).normal(size=(10, 4)), jnp.float32)
  grown = resize.grow_rows(table, [[1, 2], [3], [], [9, 9, 0]])
  np.testing.assert_array_equal(np.asarray(grown[:10]).view(np.uint32),
                                np.asarray(table).view(np.uint32))
  t = np.asarray(table, np.float64)
  np.testing.assert_allclose(grown[10:], [t[1:3].mean(0), t[3], t.mean(0),
                                          (2 * t[9] + t[0]) / 3], rtol=1e-6)
  with pytest.raises(ValueError, match="out of range"):
    resize.grow_rows(table, [[10]])
  kept = resize.grow_rows(table, [[0, 1]], keep=8)  # Rows 8, 9 were padding.
  assert kept.shape == (9, 4)
  np.testing.assert_allclose(kept[8], t[:2].mean(0), rtol=1e-6)


def test_resize_embeddings(char_base, texts, tmp_path):
  corpus, heldout = texts
  old = load_tokenizer(char_base)
  result = expand_lib.expand(char_base, corpus, heldout, 20, str(tmp_path / "e"))
  new = load_tokenizer(result.output)
  rng = np.random.default_rng(0)
  v, d = old.vocab_size, 6
  params = {"embed": {"embedding": jnp.asarray(rng.normal(size=(v, d)), jnp.float32)},
            "final_norm": {"scale": jnp.ones(d)},
            "lm_head": {"kernel": jnp.asarray(rng.normal(size=(d, v)), jnp.float32)}}
  out = resize.resize_embeddings(params, old, new)
  assert out is not params and params["embed"]["embedding"].shape == (v, d)  # Pure.
  assert out["final_norm"] is params["final_norm"]
  emb, head = np.asarray(out["embed"]["embedding"]), np.asarray(out["lm_head"]["kernel"])
  assert emb.shape == (new.vocab_size, d) and head.shape == (d, new.vocab_size)
  np.testing.assert_array_equal(emb[:v], params["embed"]["embedding"])
  np.testing.assert_array_equal(head[:, :v], params["lm_head"]["kernel"])
  old_emb, old_head = np.asarray(params["embed"]["embedding"]), np.asarray(
      params["lm_head"]["kernel"])
  for k, text in enumerate(result.new_tokens):
    ids = old.encode(text)
    assert len(ids) > 1
    np.testing.assert_allclose(emb[v + k], old_emb[ids].mean(0), rtol=1e-5)
    np.testing.assert_allclose(head[:, v + k], old_head[:, ids].mean(1), rtol=1e-5)
  # Tied embeddings (no lm_head), padded vocab: padding rows are the mean of all rows.
  tied = resize.resize_embeddings({"embed": params["embed"]}, old, new,
                                  vocab_size=new.vocab_size + 3)
  assert set(tied) == {"embed"}
  np.testing.assert_allclose(tied["embed"]["embedding"][-1], old_emb.mean(0), rtol=1e-5)
  with pytest.raises(ValueError, match="cannot shrink"):
    resize.resize_embeddings(out, new, old)


def test_resize_hf_checkpoint(char_base, texts, tmp_path):
  from swallow_jax.model import init_params, presets  # pylint: disable=g-import-not-at-top
  from swallow_jax.model import io as model_io  # pylint: disable=g-import-not-at-top
  corpus, heldout = texts
  old = load_tokenizer(char_base)
  config = presets.get("tiny", vocab_size=old.vocab_size, tie_word_embeddings=False)
  params = init_params(config, jax.random.key(0))
  model_io.save_hf(str(tmp_path / "in"), config, params, dtype=jnp.float32, progress=False)
  got = _cli("expand", f"--tokenizer={char_base}", f"--corpus={corpus}", f"--heldout={heldout}",
             "--num-new=12", f"--output={tmp_path / 'out'}", f"--model={tmp_path / 'in'}",
             "--json")
  assert got.returncode == 0, got.stderr
  assert json.loads(got.stdout)["model"] == str(tmp_path / "out" / "model")
  new_config, new_params = model_io.load(str(tmp_path / "out" / "model"), dtype=jnp.float32,
                                      progress=False)
  assert new_config.vocab_size == old.vocab_size + 12
  new = load_tokenizer(tmp_path / "out" / "model")  # The tokenizer travels with the model.
  assert new.vocab_size == old.vocab_size + 12
  assert load_tokenizer(tmp_path / "out" / "model" / "tokenizer.json").encode("東京の天気") == (
      new.encode("東京の天気"))
  old_emb = np.asarray(params["embed"]["embedding"]).astype(jnp.bfloat16).astype(np.float32)
  emb = np.asarray(new_params["embed"]["embedding"])
  np.testing.assert_array_equal(emb[:old.vocab_size], old_emb)
  text = new.token_bytes(old.vocab_size).decode()
  np.testing.assert_allclose(emb[old.vocab_size], old_emb[old.encode(text)].mean(0),
                             rtol=1e-2, atol=1e-3)


def test_resize_keeps_sharding_and_bits():
  assert len(jax.devices()) >= 8
  mesh = Mesh(np.array(jax.devices()[:8]), ("fsdp",))
  table = np.random.default_rng(1).normal(size=(64, 16)).astype(jnp.bfloat16)
  emb = jax.device_put(table, NamedSharding(mesh, P("fsdp", None)))
  head = jax.device_put(table.T, NamedSharding(mesh, P(None, "fsdp")))
  pieces = [[i, i + 1] for i in range(8)]
  params = {"embed": {"embedding": emb}, "lm_head": {"kernel": head}}
  old = _FakeTokenizer(64, {f"t{64 + k}": ids for k, ids in enumerate(pieces)})
  new = _FakeTokenizer(72, {})
  out = resize.resize_embeddings(params, old, new)
  grown, grown_head = out["embed"]["embedding"], out["lm_head"]["kernel"]
  assert grown.dtype == jnp.bfloat16 and grown.sharding.spec == P("fsdp", None)
  assert grown.addressable_shards[0].data.shape == (9, 16)
  assert grown_head.shape == (16, 72) and grown_head.sharding.spec == P(None, "fsdp")
  np.testing.assert_array_equal(np.asarray(grown)[:64].view(np.uint16), table.view(np.uint16))
  np.testing.assert_array_equal(np.asarray(grown_head), np.asarray(grown).T)
  np.testing.assert_array_equal(np.asarray(grown)[64], table[[0, 1]].astype(np.float32).mean(0)
                                .astype(jnp.bfloat16))
  uneven = resize.grow_rows(emb, pieces[:3])  # 67 rows: 8 devices no longer divide them.
  assert uneven.shape == (67, 16) and uneven.sharding.is_fully_replicated
  np.testing.assert_array_equal(np.asarray(uneven)[:64].view(np.uint16), table.view(np.uint16))


class _FakeTokenizer:
  """Token i is the text 'ti'; ``splits`` says how this tokenizer encodes a text."""

  def __init__(self, vocab_size, splits):
    self.vocab_size, self.splits = vocab_size, splits

  def token_bytes(self, i):
    return f"t{i}".encode()

  def encode(self, text):
    return self.splits[text]


# --------------------------------------------------------------------------------------------
# Command line


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "swallow_jax.vocab", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)


def test_cli_stats_and_table(tmp_path):
  path = write_tiny_tiktoken(tmp_path / "tokenizer.model")
  (tmp_path / "c.txt").write_text("abcab\n日本\n", encoding="utf-8")
  got = _cli("stats", f"--tokenizer={path}", f"--corpus={tmp_path / 'c.txt'}", "--json")
  assert got.returncode == 0, got.stderr
  assert json.loads(got.stdout) == {"tokenizer": path, "vocab_size": 529, "hiragana": 2,
                                    "katakana": 2, "cjk": 2, "chars": 7, "tokens": 3,
                                    "chars_per_token": 7 / 3}
  sp = write_tiny_sentencepiece(tmp_path / "sp.model", ["あ", "日"])
  table = _cli("table", f"--tokenizer={path}", f"--tokenizer={sp}")
  assert table.returncode == 0, table.stderr
  assert table.stdout.splitlines() == [
      "| tokenizer | vocab_size | hiragana | katakana | cjk |", "|---|---|---|---|---|",
      f"| {path} | 529 | 2 | 2 | 2 |", f"| {sp} | 261 | 1 | 0 | 1 |"]


def test_cli_expand(char_base, texts, tmp_path):
  corpus, heldout = texts
  got = _cli("expand", f"--tokenizer={char_base}", f"--corpus={corpus}", f"--heldout={heldout}",
             "--num-new=10", f"--output={tmp_path / 'out'}", "--json")
  assert got.returncode == 0, got.stderr
  report = json.loads(got.stdout)
  assert report["num_new"] == 10 and report["vocab_size_after"] == report["vocab_size_before"] + 10
  assert report["speedup"] == pytest.approx(1 / (1 - report["reduction"]))
  assert os.path.isfile(tmp_path / "out" / "tokenizer.model")


def test_cli_help():
  got = _cli("--help")
  assert got.returncode == 0 and "vocab expand" in got.stdout and "--num-new" in got.stdout


@pytest.mark.parametrize("args, message", [
    (["stats", "--tokenizer=/no/such/tok.model"], "/no/such/tok.model: no such"),
    (["stats"], "--tokenizer is required"),
    (["frob"], "expected one command"),
    (["stats", "--frob=1"], "Unknown command line flag 'frob'"),
    (["expand", "--tokenizer=x", "--corpus=y", "--output=z"], "--heldout is required"),
    (["expand", "--num-new=0"], "not a positive integer"),
    (["expand", "--tokenizer=x", "--corpus=y", "--heldout=z", "--output=o", "--model=/no/m"],
     "/no/m: no such file or directory"),
    (["table", "--tokenizer=a", "--corpus=/no/corpus.txt"], "/no/corpus.txt: no such text file"),
])
def test_cli_bad_input_one_line(args, message):
  got = _cli(*args)
  assert got.returncode != 0
  assert len(got.stderr.strip().splitlines()) == 1 and message in got.stderr, got.stderr
