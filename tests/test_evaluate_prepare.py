"""Task files from the public release formats: each format written here in miniature, converted,
loaded by the harness and scored (generation by an oracle, likelihoods by a tiny model)."""

import json
import os
import subprocess
import sys

import jax
import pytest

from swallow_jax import evaluate
from swallow_jax import decode as generate_lib
from swallow_jax import model as model_lib
from swallow_jax.evaluate import loglik, prepare
from configs import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------
# Sources in each release's format.


def _write(path, text):
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return str(path)


def _jsonl(path, rows):
  return _write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _jcqa_rows(offset, n):
  words = ["切符", "傘", "鍋", "靴", "本", "鍵", "皿"]
  return [{"q_id": offset + i, "question": f"問題{offset + i}に必要なものは？",
           **{f"choice{c}": words[(i + c) % len(words)] for c in range(5)}, "label": (i * 2) % 5}
          for i in range(n)]


def _squad(n, tag):
  return {"version": "v1.1", "data": [{"title": f"記事{tag}", "paragraphs": [
      {"context": f"記事{tag}{i} [SEP] 町{tag}{i}は川{i}のほとりにあり、人口は{100 + i}人である。",
       "qas": [{"id": f"{tag}{i}", "question": f"町{tag}{i}の人口は？", "is_impossible": False,
                "answers": [{"text": f"{100 + i}人", "answer_start": 20},
                            {"text": f"{100 + i}人", "answer_start": 20},
                            {"text": f"{100 + i}", "answer_start": 20}]}]}
      for i in range(n)]}]}


_NIILC_XML = """<?xml version='1.0' encoding="UTF-8"?>
<questions>
{}
</questions>
"""


def _niilc_xml(rows):
  qs = []
  for i, (q, answers) in enumerate(rows):
    ans = "".join(f"<answer>{a}</answer>" for a in answers)
    qs.append(f'<question id="NIILC-{i:05d}"><text>{q}</text><answers>{ans}</answers>'
              f"<meta><B1>は</B1></meta></question>")
  return _NIILC_XML.format("\n".join(qs))


_NIILC_TEST = [("東海地方に含まれる県はどこ？", ["愛知県", "岐阜県", "三重県"]),
               ("ビタミンCが一番多い果物は？", ["-"]),  # unanswerable: left out
               ("大阪城を建造したのは誰？", ["豊臣秀吉"]),
               ("弁護士になるための試験は？", ["司法試験"])]
_NIILC_DEV = [(f"開発用の質問{i}は？", [f"答え{i}"]) for i in range(5)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  d = tmp_path_factory.mktemp("sources")
  mgsm_test = "".join(f"{a}個のりんごと{b}個のみかんは合わせて何個？\t{a + b}\n"
                      for a, b in [(3, 4), (10, 5), (1200, 34)])
  mgsm_demos = "".join(
      f"問題：{a}本のペンに{b}本足すと何本？\tステップごとの答え：{a}本に{b}本を足すと{a + b}本です。"
      f"答えは{a + b}です。\n" for a, b in [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6)])
  en = [f"The town {i} lies on river {i}." for i in range(6)]
  ja = [f"町{i}は川{i}のほとりにある。" for i in range(6)]
  return {
      "jcommonsenseqa": ([_jsonl(d / "jcqa_valid.json", _jcqa_rows(100, 3))],
                         [_jsonl(d / "jcqa_train.json", _jcqa_rows(0, 5))]),
      "jsquad": ([_write(d / "jsquad_valid.json", json.dumps(_squad(2, "v"), ensure_ascii=False))],
                 [_write(d / "jsquad_train.json", json.dumps(_squad(4, "t"), ensure_ascii=False))]),
      "jemhopqa": (
          [_write(d / "jemhop_dev.json", json.dumps(
              [{"qid": "a1", "type": "comparison", "question": "AとB、放送回数が多いのは？",
                "answer": "B", "derivations": [], "page_ids": [], "time_dependent": False},
               {"qid": "a2", "type": "compositional", "question": "Cが過ごした都の遷都年は？",
                "answer": "794年", "derivations": [], "page_ids": [], "time_dependent": False}],
              ensure_ascii=False))],
          [_write(d / "jemhop_train.json", json.dumps(
              [{"qid": f"t{i}", "question": f"訓練の質問{i}は？", "answer": f"答{i}"}
               for i in range(4)], ensure_ascii=False))]),
      "niilc": ([_write(d / "NIILC-ECQA2015_test.xml", _niilc_xml(_NIILC_TEST))],
                [_write(d / "NIILC-ECQA2015_dev.xml", _niilc_xml(_NIILC_DEV))]),
      "mgsm_ja": ([_write(d / "mgsm_ja.tsv", mgsm_test)],
                  [_write(d / "mgsm_ja_exemplars.tsv", mgsm_demos)]),
      "wmt20_en_ja": ([_write(d / "test.en", "\n".join(en[4:]) + "\n"),
                       _write(d / "test.ja", "\n".join(ja[4:]) + "\n")],
                      [_write(d / "dev.en-ja.tsv",
                              "".join(f"{e}\t{j}\n" for e, j in zip(en[:4], ja[:4])))]),
      "wmt20_ja_en": ([_write(d / "test.ja-en.tsv",
                              "".join(f"{j}\t{e}\n" for e, j in zip(en[4:], ja[4:])))],
                      [_write(d / "dev.ja", "\n".join(ja[:4]) + "\n"),
                       _write(d / "dev.en", "\n".join(en[:4]) + "\n")]),
      "ja_ppl": ([_jsonl(d / "ja_text.jsonl",
                         [{"text": "".join(ja) * 3, "id": 1}, {"text": ja[0], "meta": {}}])], []),
      "en_ppl": ([_jsonl(d / "en_text.jsonl", [{"text": " ".join(en) * 2}])], []),
  }


@pytest.fixture(scope="module")
def task_files(sources, tmp_path_factory):
  d = tmp_path_factory.mktemp("tasks")
  out = {}
  for name, (inputs, demos) in sources.items():
    header, examples = prepare.prepare(name, inputs, demos)
    out[name] = str(d / f"{name}.jsonl")
    prepare.write(out[name], header, examples)
  return out


# --------------------------------------------------------------------------------------------
# Conversion.


def test_every_recipe_task_has_a_converter():
  assert set(common.TASKS) == set(prepare.TASKS)


def test_task_files_load_with_the_swallow_fewshot_counts(task_files):
  tasks = {t.name: t for t in evaluate.load_tasks(list(task_files.values()))}
  assert set(tasks) == set(prepare.TASKS)
  want = {"jcommonsenseqa": 3, "jsquad": 2, "jemhopqa": 2, "niilc": 3, "mgsm_ja": 3,
          "wmt20_en_ja": 2, "wmt20_ja_en": 2, "ja_ppl": 2, "en_ppl": 1}
  assert {n: len(t.examples) for n, t in tasks.items()} == want
  for name, task in tasks.items():
    assert len(task.fewshot) == (0 if name.endswith("_ppl") else 4), name
  assert tasks["en_ppl"].lang == "en" and tasks["wmt20_ja_en"].lang == "en"


def test_fields_and_prompts(task_files):
  tasks = {t.name: t for t in evaluate.load_tasks(list(task_files.values()))}
  jcqa = tasks["jcommonsenseqa"]
  assert jcqa.examples[0] == {"question": "問題100に必要なものは？",
                              "choices": ["切符", "傘", "鍋", "靴", "本"], "answer": 0}
  assert jcqa.examples[1]["answer"] == 2 and jcqa.fewshot[0]["question"] == "問題0に必要なものは？"
  assert jcqa.prompt(jcqa.examples[0]).endswith(
      "質問：問題100に必要なものは？\n選択肢：切符, 傘, 鍋, 靴, 本\n回答：")
  squad = tasks["jsquad"]
  assert squad.examples[1]["answer"] == ["101人", "101"]  # duplicates dropped, order kept
  assert squad.prompt(squad.examples[0]).endswith(
      "文章：記事v0 [SEP] 町v0は川0のほとりにあり、人口は100人である。\n質問：町v0の人口は？\n回答：")
  assert "回答：100人\n\n文章：記事t1" in squad.prompt(squad.examples[0])  # demonstrations
  niilc = tasks["niilc"]
  assert [e["answer"] for e in niilc.examples] == ["愛知県,岐阜県,三重県", "豊臣秀吉", "司法試験"]
  assert niilc.prompt(niilc.examples[0]).startswith(
      "質問に対する答えを出力してください。答えが複数の場合、コンマ（,）で繋げてください。\n\n"
      "質問：開発用の質問0は？\n回答：答え0\n\n")
  mgsm = tasks["mgsm_ja"]
  assert mgsm.examples[2] == {"question": "1200個のりんごと34個のみかんは合わせて何個？",
                              "answer": "1234"}
  assert mgsm.fewshot[0] == {"question": "1本のペンに2本足すと何本？", "answer": "3",
                             "solution": "1本に2本を足すと3本です。答えは3です。"}
  assert "問題：1本のペンに2本足すと何本？\nステップごとの答え：1本に2本を足すと3本です。" in (
      mgsm.prompt(mgsm.examples[0]))
  en_ja, ja_en = tasks["wmt20_en_ja"], tasks["wmt20_ja_en"]
  assert en_ja.examples[0] == {"source": "The town 4 lies on river 4.", "target": "町4は川4のほとりにある。"}
  assert ja_en.examples[0] == {"source": "町4は川4のほとりにある。", "target": "The town 4 lies on river 4."}
  assert en_ja.prompt(en_ja.examples[0]).endswith(
      "English phrase: The town 3 lies on river 3.\nJapanese phrase: 町3は川3のほとりにある。\n\n"
      "English phrase: The town 4 lies on river 4.\nJapanese phrase:")


def test_niilc_llm_jp_eval_json_equals_the_xml(sources, tmp_path):
  path = _write(tmp_path / "niilc.json", json.dumps({
      "instruction": "...", "output_length": 180, "metrics": ["char_f1"], "few_shots": [],
      "samples": [{"input": "質問：東海地方に含まれる県はどこ？", "output": "愛知県,岐阜県,三重県"},
                  {"input": "質問：大阪城を建造したのは誰？", "output": "豊臣秀吉"},
                  {"input": "質問：弁護士になるための試験は？", "output": "司法試験"}]},
      ensure_ascii=False))
  assert (prepare.prepare("niilc", [path], sources["niilc"][1])
          == prepare.prepare("niilc", sources["niilc"][0], sources["niilc"][1]))


def test_without_fewshot_input_the_first_examples_are_demonstrations(sources, tmp_path):
  header, examples = prepare.prepare("jcommonsenseqa", sources["jcommonsenseqa"][1],
                                     num_fewshot=2)
  assert "fewshot" not in header and header["num_fewshot"] == 2
  path = str(tmp_path / "t.jsonl")
  prepare.write(path, header, examples)
  task = evaluate.load_task(path)
  assert [e["question"] for e in task.fewshot] == ["問題0に必要なものは？", "問題1に必要なものは？"]
  assert len(task.examples) == 3
  with pytest.raises(ValueError, match="leave none to score after 5 demonstrations"):
    prepare.prepare("jcommonsenseqa", sources["jcommonsenseqa"][1], num_fewshot=5)
  with pytest.raises(ValueError, match=r"2 demonstration\(s\) for num_fewshot=3"):
    prepare.prepare("jemhopqa", sources["jemhopqa"][0], [sources["jemhopqa"][0][0]] * 1,
                    num_fewshot=3)


# --------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the line (or the item).


@pytest.mark.parametrize("task,name,text,message", [
    ("jcommonsenseqa", "bad.json", '{"question": "q", "choice0": "a"}\n{oops\n',
     r"bad.json:1: no 'choice1'"),
    ("jcommonsenseqa", "bad.json", '\n{oops\n', r"bad.json:2: not JSON"),
    ("jcommonsenseqa", "bad.json",
     json.dumps({"question": "q", **{f"choice{i}": "a" for i in range(5)}, "label": 7}) + "\n",
     r"bad.json:1: 'label' must be an integer 0..4, got 7"),
    ("jsquad", "bad.json",
     '{"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q"}]}]}]}',
     r"bad.json: data\[0\].paragraphs\[0\].qas\[0\]: no 'answers'"),
    ("jsquad", "bad.json", '{"data": [\n\n  1,,]}', r"bad.json:3: not JSON"),
    ("jemhopqa", "bad.json", '[{"question": "q", "answer": "a"}, {"question": "q2"}]',
     r"bad.json: item 1: no 'answer'"),
    ("niilc", "bad.xml", "<questions>\n<question><text>q</text>\n</questions>\n",
     r"bad.xml:3: not XML"),
    ("niilc", "bad.xml", '<questions><question id="Q7"><answers><answer>a</answer></answers>'
     "</question></questions>", r"bad.xml: question Q7: no <text>"),
    ("mgsm_ja", "bad.tsv", "q1\t3\nq2 with no answer\n",
     r"bad.tsv:2: expected question<TAB>answer, got 1"),
    ("mgsm_ja", "bad.tsv", "q1\tthree\n", r"bad.tsv:1: answer 'three' holds no number"),
    ("wmt20_en_ja", "bad.tsv", "a\tb\n\nc\n", r"bad.tsv:3: expected source<TAB>reference"),
    ("ja_ppl", "bad.jsonl", '{"text": "ok"}\n{"body": "no text"}\n', r"bad.jsonl:2: no 'text'"),
    ("ja_ppl", "bad.jsonl", '{"text": ""}\n', r"bad.jsonl:1: 'text' must be a non-empty string"),
])
def test_bad_input_names_file_and_line(tmp_path, task, name, text, message):
  path = _write(tmp_path / name, text)
  with pytest.raises(prepare.InputError, match=message):
    prepare.prepare(task, [path], num_fewshot=0)


def test_encoding_errors_name_the_line_and_a_bom_is_dropped(tmp_path):
  tsv = tmp_path / "bad.tsv"
  tsv.write_bytes("\ufeffq1\t1\n".encode() + b"q2\t\xff2\n")
  with pytest.raises(prepare.InputError, match=r"bad.tsv:2: not UTF-8"):
    prepare.prepare("mgsm_ja", [str(tsv)], num_fewshot=0)
  tsv.write_bytes("\ufeffq1\t1\nq2\t2\n".encode())
  assert prepare.prepare("mgsm_ja", [str(tsv)], num_fewshot=0)[1][0] == {"question": "q1",
                                                                          "answer": "1"}
  js = tmp_path / "bad.json"
  js.write_bytes(b'[\n{"question": "q",\n "answer": "\xff"}]')
  with pytest.raises(prepare.InputError, match=r"bad.json:3: not UTF-8"):
    prepare.prepare("jemhopqa", [str(js)], num_fewshot=0)


def test_misaligned_translation_files(tmp_path):
  src, ref = _write(tmp_path / "s.en", "a\nb\nc\n"), _write(tmp_path / "r.ja", "あ\nい\n")
  with pytest.raises(prepare.InputError, match=r"s.en has 3 lines but .*r.ja has 2"):
    prepare.prepare("wmt20_en_ja", [src, ref])
  with pytest.raises(prepare.InputError, match=r"r.ja:2: empty segment"):
    prepare.prepare("wmt20_en_ja", [src, _write(tmp_path / "r.ja", "あ\n \nう\n")])


def test_cli(sources, tmp_path):
  cmd = [sys.executable, "-m", "swallow_jax.evaluate.prepare"]
  out = str(tmp_path / "tasks" / "niilc.jsonl")
  ok = subprocess.run(cmd + ["--task=niilc", f"--input={sources['niilc'][0][0]}",
                             f"--fewshot_input={sources['niilc'][1][0]}", f"--output={out}"],
                      capture_output=True, text=True, cwd=REPO)
  assert ok.returncode == 0, ok.stderr
  assert ok.stdout.strip() == f"wrote {out}: niilc, 3 examples to score, 4-shot"
  assert evaluate.load_task(out).name == "niilc"
  # An existing output is refused before any input is read, and replaced with --overwrite.
  before = open(out, encoding="utf-8").read()
  again = subprocess.run(cmd + ["--task=niilc", "--input=/no/such.xml", f"--output={out}"],
                         capture_output=True, text=True, cwd=REPO)
  assert again.returncode == 1
  assert again.stderr.strip().splitlines() == [
      f"evaluate.prepare: error: {out} already exists and is not empty (pass --overwrite to "
      "replace it)"]
  assert open(out, encoding="utf-8").read() == before
  replaced = subprocess.run(cmd + ["--task=niilc", f"--input={sources['niilc'][0][0]}",
                                   "--num_fewshot=1", f"--output={out}", "--overwrite"],
                            capture_output=True, text=True, cwd=REPO)
  assert replaced.returncode == 0, replaced.stderr
  assert len(evaluate.load_task(out).fewshot) == 1
  bad_file = _write(tmp_path / "bad.tsv", "q\t1\nq2\n")
  bad = subprocess.run(cmd + ["--task=mgsm_ja", f"--input={bad_file}", "--num_fewshot=0",
                              f"--output={tmp_path / 'm.jsonl'}"],
                       capture_output=True, text=True, cwd=REPO)
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines() == [
      f"evaluate.prepare: error: {bad_file}:2: expected question<TAB>answer, got 1 field(s)"]
  assert not os.path.exists(tmp_path / "m.jsonl")
  helped = subprocess.run(cmd + ["--help"], capture_output=True, text=True, cwd=REPO)
  assert "--fewshot_input" in helped.stdout
  assert "jcommonsenseqa  JGLUE JSONL" in helped.stdout


# --------------------------------------------------------------------------------------------
# Scoring: the converted files through evaluate.run_tasks.


class ByteTokenizer:
  """UTF-8 bytes as ids 3..258 (0 pad, 1 BOS, 2 EOS): every text round-trips exactly."""
  bos_id, eos_id, eot_id, pad_id, vocab_size = 1, 2, None, 0, 259

  def encode(self, text, *, add_bos=False):
    return [self.bos_id] * add_bos + [b + 3 for b in text.encode("utf-8")]

  def bos_prefix(self):
    return [self.bos_id]

  def decode(self, ids):
    return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", "replace")


def _gold_text(task, ex):
  if task.type == "math":
    return f"計算すると答えは{ex['answer']}です。"
  return evaluate.tasks.target_text(task, ex)


@pytest.fixture
def oracle(monkeypatch):
  """generate.generate answering each prompt with its gold answer (then a newline and more text,
  which the task's stop strings must cut); `wrong=True` answers something else."""
  state = {"tasks": [], "wrong": False}
  tok = ByteTokenizer()

  def fake_generate(config, params, prompts, max_new_tokens, **kw):
    outs = []
    for p in prompts:
      # A prompt cut to max_len keeps its BOS and its end.
      hits = [(t, ex) for t in state["tasks"] for ex in t.examples
              if p[:1] == [tok.bos_id]
              and tok.encode(t.prompt(ex), add_bos=True)[-(len(p) - 1):] == list(p[1:])]
      assert len(hits) == 1, "each prompt belongs to exactly one example"
      t, ex = hits[0]
      answer = "まったく別の答え" if state["wrong"] else _gold_text(t, ex)
      outs.append(tok.encode(f" {answer}\n続きの文章")[:max_new_tokens])
    return outs

  monkeypatch.setattr(generate_lib, "generate", fake_generate)
  return state


@pytest.fixture(scope="module")
def tiny():
  config = model_lib.presets.get("tiny")
  return config, model_lib.init_params(config, jax.random.key(0))


def test_generated_tasks_score_one_for_gold_answers_and_less_otherwise(task_files, tiny, oracle):
  config, params = tiny
  names = ["jsquad", "jemhopqa", "niilc", "mgsm_ja", "wmt20_en_ja", "wmt20_ja_en"]
  oracle["tasks"] = evaluate.load_tasks([task_files[n] for n in names])
  right = evaluate.run_tasks(config, params, ByteTokenizer(), oracle["tasks"])
  oracle["wrong"] = True
  wrong = evaluate.run_tasks(config, params, ByteTokenizer(), oracle["tasks"])
  for name in names:
    assert right[name]["score"] == pytest.approx(1.0), (name, right[name]["samples"])
    assert wrong[name]["score"] < 0.2, (name, wrong[name]["samples"])
  assert right["wmt20_en_ja"]["samples"][0]["bleu_tokenize"] == "ja-mecab"
  assert right["jsquad"]["metrics"]["exact_match"] == 1.0
  assert right["niilc"]["samples"][0]["prediction"] == "愛知県,岐阜県,三重県"


def test_multiple_choice_and_perplexity_scores(task_files, tiny, monkeypatch):
  config, params = tiny
  tok = ByteTokenizer()
  tasks = evaluate.load_tasks([task_files["jcommonsenseqa"], task_files["ja_ppl"],
                               task_files["en_ppl"]])
  # A random model: accuracy is a share of the 3 questions; perplexity is near uniform over the
  # 512-entry vocabulary.
  res = evaluate.run_tasks(config, params, tok, tasks, max_len=256)
  assert res["jcommonsenseqa"]["metrics"]["acc"] in (0, 1 / 3, 2 / 3, 1)
  for name in ("ja_ppl", "en_ppl"):
    assert 300 < res[name]["metrics"]["token_perplexity"] < 900, res[name]["metrics"]
    assert res[name]["metrics"]["bits_per_byte"] == pytest.approx(
        res[name]["metrics"]["nll_per_token"] / 0.6931471805599453)  # one token per byte
  # An oracle likelihood that prefers the labelled choice scores 1: labels map to choices.
  mc = tasks[0]
  # Contexts are matched by their last 50 tokens: a prompt over max_len is cut at its start.
  gold = {(tuple(tok.encode(mc.prompt(ex), add_bos=True)[-50:]),
           tuple(tok.encode(mc.target_delimiter + ex["choices"][ex["answer"]])))
          for ex in mc.examples}
  monkeypatch.setattr(loglik, "continuation_logprobs", lambda c, p, requests, **kw: [
      0.0 if (tuple(ctx[-50:]), tuple(cont)) in gold else -5.0 for ctx, cont in requests])
  assert evaluate.run_tasks(config, params, tok, [mc])["jcommonsenseqa"]["score"] == 1.0
