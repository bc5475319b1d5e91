"""Tokenizer backends: tiny files built here, the real Llama 3 files, a trained sentencepiece."""

import hashlib
import json
import os
import random

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from swallow_jax import tokenizer as tokenizer_lib
from swallow_jax.tokenizer import load_tokenizer
from swallow_jax.vocab import convert
from swallow_jax.vocab import train
from helpers import (LLAMA3_DIR, TINY_MERGES, write_tiny_sentencepiece,
                     write_tiny_tiktoken)

VARIED_TEXTS = [
    "こんにちは、世界！今日はいい天気ですね。",
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。",
    "Llama 3 Swallowは、Llama 3の日本語能力を強化した大規模言語モデルです。",
    "The quick brown fox jumps over the lazy dog. It's 3.14159, isn't it?",
    "東京都渋谷区 1-2-3　（全角スペース）ｶﾀｶﾅ ﾃｽﾄ①②③",
    "emoji: 🦙🇯🇵👨‍👩‍👧‍👦🍣🗻 ✨ and 漢字 mixed with English words.",
    "def f(x):\n    return x ** 2  # コメント\n\n\tprint('完了')\r\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n質問です<|eot_id|>",
    "   leading and trailing spaces   ",
    "数字 1234567890 と 9,876.54円、電話 03-1234-5678。",
    "한국어 텍스트와 中文简体字 以及 繁體字。",
    "ゔぁ ゕゖ ヷヸヹヺ 𠮷野家 々〆〇 ㍿",
    "\n\n\n",
    "",
]


def random_texts(n: int, seed: int = 0) -> list[str]:
  pools = ["あいうえおかきくけこがぎぐんゃゅょっー", "アイウエオカタカナヴァッー", "日本語東京都漢字学習行",
           "abcXYZ 0123456789", " \n\t　", "。、！？「」()[]<|>_-", "🦙🇯🇵👍🏽‍♀️", "한국中文"]
  rng = random.Random(seed)
  return ["".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 60)))
          for _ in range(n)]


@pytest.fixture(scope="module")
def llama3():
  return (load_tokenizer(os.path.join(LLAMA3_DIR, "tokenizer.model")),
          load_tokenizer(os.path.join(LLAMA3_DIR, "tokenizer.json")))


@pytest.fixture
def tiny_tiktoken(tmp_path):
  return load_tokenizer(write_tiny_tiktoken(tmp_path / "tokenizer.model"))


def test_tiny_tiktoken_ids_and_specials(tiny_tiktoken):
  tok = tiny_tiktoken
  n = 256 + len(TINY_MERGES)
  assert tok.backend == "tiktoken"
  assert tok.vocab_size == n + 256
  assert (tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id) == (n, n + 1, n + 9, None)
  assert tok.token_to_id("<|start_header_id|>") == n + 6
  assert tok.token_to_id("<|reserved_special_token_250|>") == n + 255
  assert len(tok.special_tokens) == 256
  assert tok.encode("abc") == [257]
  assert tok.encode("abcab", add_bos=True) == [n, 257, 256]
  assert tok.encode("日本あい") == [256 + TINY_MERGES.index("日本".encode()),
                                  256 + TINY_MERGES.index("あい".encode())]
  assert tok.token_to_id("あい") == 256 + TINY_MERGES.index("あい".encode())
  assert tok.decode([n, 257, n + 9]) == "<|begin_of_text|>abc<|eot_id|>"
  assert tok.token_bytes(256 + 2) == "あ".encode()[:2]
  with pytest.raises(KeyError, match="'<|nope|>' is not a token"):
    tok.token_to_id("<|nope|>")


def test_special_token_strings_are_plain_text(tiny_tiktoken, tmp_path):
  text = "<|begin_of_text|>a<|eot_id|>"
  hf = load_tokenizer(convert.tiktoken_to_tokenizer_json(tiny_tiktoken,
                                                                tmp_path / "tokenizer.json"))
  for tok in (tiny_tiktoken, hf):
    ids = tok.encode(text)
    assert not set(ids) & set(tok.special_tokens.values())
    assert tok.decode(ids) == text


def test_tokenizer_json_conversion_matches_tiktoken(tiny_tiktoken, tmp_path):
  hf = load_tokenizer(convert.tiktoken_to_tokenizer_json(tiny_tiktoken,
                                                                tmp_path / "tokenizer.json"))
  assert hf.backend == "tokenizers"
  assert hf.vocab_size == tiny_tiktoken.vocab_size
  assert hf.special_tokens == tiny_tiktoken.special_tokens
  for text in VARIED_TEXTS + random_texts(50):
    assert hf.encode(text) == tiny_tiktoken.encode(text), text
    assert hf.decode(hf.encode(text)) == text
  assert [hf.token_bytes(i) for i in range(hf.vocab_size)] == [
      tiny_tiktoken.token_bytes(i) for i in range(hf.vocab_size)]


def test_llama3_special_tokens_as_meta(llama3):
  for tok in llama3:
    assert tok.vocab_size == 128256
    assert (tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id) == (128000, 128001, 128009, None)
    assert [tok.token_to_id(s) for s in ("<|start_header_id|>", "<|end_header_id|>",
                                         "<|reserved_special_token_0|>",
                                         "<|reserved_special_token_4|>",
                                         "<|reserved_special_token_250|>")] == [
                                             128006, 128007, 128002, 128008, 128255]
    assert len(tok.special_tokens) == 256
  assert llama3[0].special_tokens == llama3[1].special_tokens


def test_llama3_backends_agree_and_round_trip(llama3):
  tik, hf = llama3
  for text in VARIED_TEXTS + random_texts(300):
    ids = tik.encode(text)
    assert hf.encode(text) == ids, text
    assert tik.decode(ids) == text and hf.decode(ids) == text
  assert tik.encode("こんにちは", add_bos=True)[0] == 128000
  assert tik.encode("Hello world") == [9906, 1917]  # Meta's documented example.
  assert tik.decode([128000, 9906, 128009]) == hf.decode([128000, 9906, 128009]) == (
      "<|begin_of_text|>Hello<|eot_id|>")


def test_llama3_token_lookup(llama3):
  for tok in llama3:
    assert tok.token_to_id(" hello") == 24748
    assert tok.token_bytes(24748) == b" hello"
    assert tok.token_bytes(128009) == b"<|eot_id|>"


@pytest.mark.slow
def test_llama3_tiktoken_converts_to_the_shipped_tokenizer_json(llama3, tmp_path):
  tik, hf = llama3
  converted = load_tokenizer(convert.tiktoken_to_tokenizer_json(tik, tmp_path / "t.json"))
  for text in VARIED_TEXTS + random_texts(100):
    assert converted.encode(text) == hf.encode(text)


def test_load_tokenizer_picks_backend(tmp_path, tiny_tiktoken):
  d = tmp_path / "dir"
  d.mkdir()
  write_tiny_tiktoken(d / "tokenizer.model")
  assert load_tokenizer(d).backend == "tiktoken"
  assert isinstance(load_tokenizer(d), tokenizer_lib.Tokenizer)
  d2 = tmp_path / "dir2"
  d2.mkdir()
  convert.tiktoken_to_tokenizer_json(tiny_tiktoken, d2 / "tokenizer.json")
  assert load_tokenizer(d2).backend == "tokenizers"
  d3 = tmp_path / "dir3"
  d3.mkdir()
  write_tiny_sentencepiece(d3 / "ja.model", ["あ", "い"])
  assert load_tokenizer(d3).backend == "sentencepiece"
  assert load_tokenizer(d3 / "ja.model").backend == "sentencepiece"


def test_load_tokenizer_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model"):
    load_tokenizer(tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match="no tokenizer.model"):
    load_tokenizer(tmp_path)
  junk = tmp_path / "junk.bin"
  junk.write_bytes(b"\x00\x01not a tokenizer")
  with pytest.raises(ValueError, match="junk.bin: neither"):
    load_tokenizer(junk)
  bad_json = tmp_path / "tokenizer.json"
  bad_json.write_text('{"model": 3}')
  with pytest.raises(ValueError, match="tokenizer.json: not a loadable tokenizer.json"):
    load_tokenizer(bad_json)
  bad_ranks = tmp_path / "bad.tiktoken"
  bad_ranks.write_text("YQ== 0\nnot-base64!! x\n")
  with pytest.raises(ValueError, match="bad.tiktoken:2"):
    load_tokenizer(bad_ranks)


def test_identity_is_backend_and_sha256(tiny_tiktoken):
  with open(tiny_tiktoken.path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  assert tiny_tiktoken.identity == f"tiktoken:sha256:{digest}"


def test_hand_built_sentencepiece(tmp_path):
  tok = load_tokenizer(write_tiny_sentencepiece(tmp_path / "sp.model", ["日", "本", "日本", "▁"]))
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.eot_id) == (263, 1, 2, None)
  assert tok.encode("日本") == [261]
  assert tok.encode("日本 x", add_bos=True) == [1, 261, 262, 3 + ord("x")]
  assert tok.decode([1, 261, 2]) == "<s>日本</s>"
  assert tok.token_to_id(" ") == 262
  assert tok.token_bytes(3 + 0xE3) == b"\xe3" and tok.token_bytes(0) is None


@pytest.fixture(scope="module")
def demo_sp(tmp_path_factory):
  rng = random.Random(0)
  words = ["東京", "天気", "晴れ", "学校", "先生", "hello", "world", "ファイル", "システム"]
  lines = [f"{rng.choice(words)}の{rng.choice(words)}は{rng.choice(words)}です。"
           for _ in range(300)]
  prefix = tmp_path_factory.mktemp("sp") / "demo"
  return load_tokenizer(train.train_sentencepiece(iter(lines), 400, prefix))


def test_trained_sentencepiece_carries_chat_specials(demo_sp):
  tok = demo_sp
  proto = tokenizer_lib.read_sentencepiece_proto(tok.path)
  user_defined = sp_pb2.ModelProto.SentencePiece.USER_DEFINED
  assert [(p.piece, p.type) for p in proto.pieces[1:6]] == [
      (s, user_defined) for s in train.CHAT_SPECIAL_TOKENS]
  assert tok.special_tokens == {s: i for i, s in enumerate(train.CHAT_SPECIAL_TOKENS, 1)}
  assert (tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id) == (1, 2, 5, None)
  assert tok.vocab_size == 400
  text = "<|start_header_id|>user<|end_header_id|>東京の天気🦙<|eot_id|>"
  ids = tok.encode(text)
  assert not set(ids) & set(range(1, 6))
  assert tok.decode(ids) == text
  eot = tok.token_to_id("<|eot_id|>")
  assert tok.decode([tok.bos_id, *tok.encode("先生"), eot]) == "<|begin_of_text|>先生<|eot_id|>"
  # No dummy prefix: pieces encoded apart concatenate like the joined text.
  assert tok.decode(tok.encode("\n\n") + tok.encode("学校")) == "\n\n学校"
  for text in VARIED_TEXTS + random_texts(100):
    assert tok.decode(tok.encode(text)) == text
  # The raw sentencepiece model, by contrast, would match the user-defined symbols in text.
  raw = spm.SentencePieceProcessor(model_file=tok.path)
  assert 5 in raw.encode("<|eot_id|>")


def test_train_sentencepiece_size_checks(tmp_path):
  lines = ["abc def ghi"] * 20
  with pytest.raises(RuntimeError, match="Vocabulary size"):
    train.train_sentencepiece(iter(lines), 5000, tmp_path / "a")
  path = train.train_sentencepiece(iter(lines), 5000, tmp_path / "b", shrink_to_fit=True,
                                           model_type="unigram")
  assert 262 < load_tokenizer(path).vocab_size < 5000
  with pytest.raises(ValueError, match="model_type"):
    train.train_sentencepiece(iter(lines), 300, tmp_path / "c", model_type="word")
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    train.train_sentencepiece([tmp_path / "missing.txt"], 300, tmp_path / "d")


def _model_dir(tmp_path, files):
  d = tmp_path / "model"
  d.mkdir()
  (d / "tokenizer.json").write_text(open(os.path.join(LLAMA3_DIR, "tokenizer.json"),
                                         encoding="utf-8").read(), encoding="utf-8")
  for name, obj in files.items():
    (d / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return d


def test_special_tokens_from_the_model_files(tmp_path):
  # Llama 3 Instruct: tokenizer_config names EOS <|eot_id|>; generation_config lists both ends.
  d = _model_dir(tmp_path, {
      "tokenizer_config.json": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                "chat_template": "{{ bos_token }}"},
      "special_tokens_map.json": {"eos_token": "<|end_of_text|>",
                                  "pad_token": {"content": "<|end_of_text|>"}},
      "generation_config.json": {"eos_token_id": [128001, 128009]},
      "config.json": {"bos_token_id": 5, "eos_token_id": 6}})
  tok = load_tokenizer(d)
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.eot_id) == (128000, 128009, 128001, 128009)
  # This tokenizer.json's post-processor adds no BOS, and the config does not ask for one.
  assert not tok.add_bos and tok.encode("Hi", add_bos=True) == [13347]
  (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                       "add_bos_token": True}))
  assert load_tokenizer(d).encode("Hi", add_bos=True) == [128000, 13347]
  assert tok.stop_ids == (128001, 128009) and tok.chat_template == "{{ bos_token }}"


def test_explicit_null_bos_and_config_ids(tmp_path):
  d = _model_dir(tmp_path, {"tokenizer_config.json": {"bos_token": None, "add_bos_token": True},
                            "config.json": {"eos_token_id": 128001},
                            "chat_template.jinja": "{{ messages }}"})
  tok = load_tokenizer(d)
  assert tok.bos_id is None and not tok.add_bos and tok.bos_prefix() == []
  assert tok.encode("Hi", add_bos=True) == tok.encode("Hi")  # never an error
  assert tok.eos_id == 128001 and tok.stop_ids == (128001, 128009)
  assert tok.chat_template == "{{ messages }}"


def test_bad_model_files_are_one_line_errors(tmp_path):
  d = _model_dir(tmp_path, {"tokenizer_config.json": {"bos_token": "<|nope|>"}})
  with pytest.raises(ValueError, match="bos_token '<|nope|>' of the model's tokenizer config"):
    load_tokenizer(d)
  (d / "tokenizer_config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"tokenizer_config\.json:\d+: not JSON"):
    load_tokenizer(d)


def test_bare_files_guess_roles_and_add_bos(llama3, tiny_tiktoken, tmp_path):
  for tok in llama3:
    assert tok.add_bos and tok.stop_ids == (128001, 128009) and tok.chat_template is None
    assert tok.bos_prefix() == [128000]
  hf = load_tokenizer(convert.tiktoken_to_tokenizer_json(tiny_tiktoken, tmp_path / "t.json"))
  assert hf.add_bos and hf.encode("abc", add_bos=True) == tiny_tiktoken.encode("abc", add_bos=True)


def test_encode_offsets_are_character_spans(llama3, demo_sp):
  tik, hf = llama3
  for text in VARIED_TEXTS + random_texts(200):
    ids, offsets = hf.encode_offsets(text)  # the tokenizers library's own offsets
    assert ids == hf.encode(text)
    assert tik.encode_offsets(text) == (ids, offsets), text
  # sentencepiece: a piece spans its own text, a byte piece the character it is part of.
  for text in VARIED_TEXTS + random_texts(100):
    ids, offsets = demo_sp.encode_offsets(text)
    assert ids == demo_sp.encode(text)
    for i, (start, end) in zip(ids, offsets):
      if demo_sp.sp.is_byte(i):
        assert end == start + 1 and demo_sp.token_bytes(i)[0] in text[start].encode(), text
      else:
        assert text[start:end] == demo_sp.token_bytes(i).decode(), text
