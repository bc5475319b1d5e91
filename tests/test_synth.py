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
  assert r.returncode != 0 and "--prompts is required" in r.stderr
  r = run("--model=m", f"--prompts={tmp_path}/missing.jsonl", f"--output={tmp_path}/o.jsonl")
  assert r.returncode != 0 and "prompts file not found" in r.stderr
