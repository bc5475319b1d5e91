"""Scorers, task files and plots against hand-computed values (no model needed)."""

import decimal
import json
import os

import pytest
import sacrebleu

from swallow_jax.evaluate import plots
from swallow_jax.evaluate import scoring
from swallow_jax.evaluate import tasks as tasks_lib


def test_normalize_answer():
  # NFKC turns full-width ASCII into ASCII; punctuation (ASCII and Japanese) and spaces go.
  assert scoring.normalize_answer(" Ｔｏｋｙｏ、 タワー。 ") == "tokyoタワー"
  assert scoring.normalize_answer("「東京」!") == "東京"
  # Half-width katakana become full-width.
  assert scoring.normalize_answer("ﾄｳｷｮｳ") == "トウキョウ"


def test_exact_match():
  assert scoring.exact_match("東京都。", ["大阪", "東京都"]) == 1.0
  assert scoring.exact_match("東京", "東京都") == 0.0
  assert scoring.exact_match(" Yes! ", "yes") == 1.0


def test_char_f1_hand_computed():
  # pred 東京都庁 (4 chars), gold 東京都 (3): common 3 -> P=3/4, R=1 -> F1 = 2*.75/1.75 = 6/7.
  assert scoring.char_f1("東京都庁", "東京都") == pytest.approx(6 / 7)
  # Multiset: pred ああい, gold あい -> common min(2,1)+min(1,1)=2, P=2/3, R=1 -> 0.8.
  assert scoring.char_f1("ああい", "あい") == pytest.approx(0.8)
  assert scoring.char_f1("xyz", "abc") == 0.0
  assert scoring.char_f1("。", "、") == 1.0  # both normalise to empty
  assert scoring.char_f1("", "abc") == 0.0
  # Best over aliases.
  assert scoring.char_f1("京都", ["東京", "京都"]) == 1.0


@pytest.mark.parametrize("text,expected", [
    ("答えは 18 です。", "18"),
    ("3 + 4 = 7. So the answer is 1,234.", "1234"),
    ("残りは－５個ではなく ５ 個", "5"),  # full-width digits via NFKC; the last number wins
    ("-2.50 dollars", "-2.50"),
    ("no digits here", None),
])
def test_extract_last_number(text, expected):
  got = scoring.extract_last_number(text)
  assert got == (None if expected is None else decimal.Decimal(expected))


def test_numeric_match():
  assert scoring.numeric_match("... よって答えは18.0", 18) == 1.0
  assert scoring.numeric_match("The answer is 1,000", "1000") == 1.0
  assert scoring.numeric_match("The answer is 17", 18) == 0.0
  assert scoring.numeric_match("no number", 18) == 0.0


def test_bleu_equals_sacrebleu():
  hyps = ["今日は良い天気です。", "猫がマットの上に座った。"]
  refs = ["今日はいい天気です。", "猫はマットの上に座った。"]
  want = sacrebleu.corpus_bleu(hyps, [refs], tokenize="ja-mecab").score
  assert scoring.bleu(hyps, refs, tokenize=scoring.bleu_tokenizer("ja")) == want
  hyps, refs = ["the cat sat on the mat"], ["the cat sat on a mat"]
  assert scoring.bleu(hyps, refs, tokenize="13a") == sacrebleu.corpus_bleu(hyps, [refs]).score
  assert scoring.bleu_tokenizer("en") == "13a"


def test_cut_at_stop():
  assert scoring.cut_at_stop("東京\n質問: 次", ["\n", "質問"]) == "東京"
  assert scoring.cut_at_stop("abc", ["\n"]) == "abc"


def _write(path, header, examples):
  tasks_lib.write_task(str(path), header, examples)
  return str(path)


def test_task_file_fewshot_prompt(tmp_path):
  ex = [{"question": f"q{i}", "choices": ["a", "b"], "answer": i % 2} for i in range(4)]
  path = _write(tmp_path / "mc.jsonl", {"task": "mc", "type": "multiple_choice", "lang": "en",
                                         "num_fewshot": 2, "instruction": "Pick.\n"}, ex)
  (task,) = tasks_lib.load_tasks(path)
  # The first two examples become demonstrations and are not scored.
  assert [e["question"] for e in task.examples] == ["q2", "q3"]
  assert task.prompt(task.examples[0]) == (
      "Pick.\nQuestion: q0\nChoices: a, b\nAnswer: a\n\n"
      "Question: q1\nChoices: a, b\nAnswer: b\n\n"
      "Question: q2\nChoices: a, b\nAnswer:")


def test_task_file_header_fewshot_and_defaults(tmp_path):
  header = {"task": "niilc", "type": "qa", "num_fewshot": 1,
            "fewshot": [{"question": "日本の首都は?", "answer": ["東京", "東京都"]}]}
  path = _write(tmp_path / "qa.jsonl", header, [{"question": "富士山の高さは?", "answer": "3776m"}])
  task = tasks_lib.load_task(path)
  assert len(task.examples) == 1 and task.stop == ("\n",) and task.max_new_tokens == 64
  assert task.prompt(task.examples[0]) == "質問: 日本の首都は?\n回答:東京\n\n質問: 富士山の高さは?\n回答:"


@pytest.mark.parametrize("header,examples,match", [
    ({"type": "qa"}, [{"question": "q", "answer": "a"}], "needs 'task'"),
    ({"task": "t", "type": "essay"}, [{"question": "q"}], "not one of"),
    ({"task": "t", "type": "qa"}, [{"question": "q"}], "lacks"),
    ({"task": "t", "type": "qa", "num_fewshot": 2}, [{"question": "q", "answer": "a"}] * 2,
     "no examples"),
    ({"task": "t", "type": "multiple_choice"}, [{"question": "q", "choices": ["a"], "answer": 3}],
     "not a choice"),
    ({"task": "t", "type": "qa", "colour": 1}, [{"question": "q", "answer": "a"}],
     "unknown header"),
])
def test_bad_task_files(tmp_path, header, examples, match):
  path = _write(tmp_path / "bad.jsonl", header, examples)
  with pytest.raises(ValueError, match=match):
    tasks_lib.load_task(path)


def test_bad_json_line(tmp_path):
  path = tmp_path / "t.jsonl"
  path.write_text(json.dumps({"task": "t", "type": "qa"}) + "\n{oops\n")
  with pytest.raises(ValueError, match=":2: not JSON"):
    tasks_lib.load_task(str(path))
  with pytest.raises(FileNotFoundError):
    tasks_lib.load_task(str(tmp_path / "missing.jsonl"))


def test_plots_write_png(tmp_path):
  scores = {"base": {"jcqa": 0.5, "niilc": 0.3, "mgsm": 0.1, "wmt": 0.2},
            "swallow": {"jcqa": 0.7, "niilc": 0.5, "mgsm": 0.2, "wmt": 0.25}}
  for fn in (plots.radar_chart, plots.metric_panels):
    path = fn(scores, str(tmp_path / f"{fn.__name__}.png"))
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="at least 3"):
    plots.radar_chart({"m": {"a": 1, "b": 1}}, str(tmp_path / "x.png"))


def _result(kind, main, value, score=None, **metrics):
  return {"type": kind, "main_metric": main, "metrics": {main: value, **metrics},
          "score": value if score is None and kind != "perplexity" else score}


def test_plot_results_every_png(tmp_path):
  """All of evaluate's plots from results where two models coincide; PNG_DIR keeps them."""
  out = os.environ.get("PNG_DIR") or str(tmp_path)
  same = {"jcqa": _result("multiple_choice", "acc", 0.45),
          "niilc": _result("qa", "char_f1", 0.31),
          "mgsm": _result("math", "accuracy", 0.08),
          "wmt20_en_ja": _result("translation", "bleu", 17.3, score=0.173),
          "ja_chat": {"type": "chat", "metrics": {"answer_accuracy": 0.25,
                                                  "assistant_perplexity": 12.5}, "score": 0.25},
          "ja_ppl": _result("perplexity", "bits_per_byte", 1.21)}
  other = dict(same, jcqa=_result("multiple_choice", "acc", 0.62),
               wmt20_en_ja=_result("translation", "bleu", 21.9, score=0.219))
  paths = plots.plot_results({"base": same, "base_copy": same, "swallow": other}, out)
  assert [os.path.basename(p) for p in paths] == list(plots.PLOT_FILES)
  for path in paths:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
