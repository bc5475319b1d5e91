"""The demo corpus: deterministic, consistent across languages, tasks in the evaluation format."""

import filecmp
import json
import os
import subprocess
import sys

import pytest

from swallow_jax.demo import CHAT_SOURCES, TEXT_SOURCES, build_demo_data, make_world
from swallow_jax.demo import text


def _rows(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  return build_demo_data(str(tmp_path_factory.mktemp("demo")), seed=0, scale=0.2)


def test_same_arguments_write_identical_files(demo, tmp_path):
  again = build_demo_data(str(tmp_path), seed=0, scale=0.2)
  for name, path in {**demo.raw, **demo.tasks}.items():
    other = again.raw.get(name) or again.tasks[name]
    assert filecmp.cmp(path, other, shallow=False), name
  other_seed = build_demo_data(str(tmp_path / "s1"), seed=1, scale=0.2)
  assert not filecmp.cmp(demo.raw["ja_web"], other_seed.raw["ja_web"], shallow=False)


def test_files_and_record_shapes(demo):
  assert set(demo.raw) == set(TEXT_SOURCES + CHAT_SOURCES)
  for name in TEXT_SOURCES:
    rows = _rows(demo.raw[name])
    assert rows and all(r["text"].strip() for r in rows), name
  for name in CHAT_SOURCES:
    for r in _rows(demo.raw[name]):
      roles = [m["role"] for m in r["messages"] if m["role"] != "system"]
      assert roles[::2] == ["user"] * (len(roles) // 2)
      assert roles[1::2] == ["assistant"] * (len(roles) // 2)


def test_scale_multiplies_lines(tmp_path):
  small = build_demo_data(str(tmp_path / "a"), scale=0.1)
  big = build_demo_data(str(tmp_path / "b"), scale=0.2)
  assert len(_rows(big.raw["ja_web"])) == 2 * len(_rows(small.raw["ja_web"]))
  with pytest.raises(ValueError, match="positive"):
    build_demo_data(str(tmp_path / "c"), scale=0)


def test_japanese_and_english_state_the_same_facts():
  world = make_world(0)
  t = world.towns[3]
  ja = text.statement(world, "town_population", 3, "ja", 0)
  en = text.statement(world, "town_population", 3, "en", 0)
  assert ja == f"{t.name.ja}市の人口は{t.population}人です。"
  assert en == f"The population of {t.name.en} is {t.population}."
  p = world.people[5]
  home = world.towns[p.hometown]
  assert text.question(world, "person_hometown", 5, "ja") == (
      f"{p.name.ja}さんの出身地はどこですか。", f"{home.name.ja}市")
  assert text.question(world, "person_hometown", 5, "en")[1] == home.name.en


def test_wiki_articles_match_the_world(demo):
  world = make_world(0)
  for lang, suffix in (("ja", "市"), ("en", "")):
    pops = {t.name.ja + suffix if lang == "ja" else t.name.en: t.population for t in world.towns}
    for row in _rows(demo.raw[f"{lang}_wiki"]):
      title = row["text"].split("\n")[0]
      if title in pops:
        assert str(pops[title]) in row["text"]


def test_parallel_pairs_are_translations(demo):
  world = make_world(0)
  by_ja = {text.statement(world, k, i, "ja", v): text.statement(world, k, i, "en", v)
           for k, i in text.all_facts(world) for v in range(3)}
  for row in _rows(demo.raw["parallel"]):
    assert len(row["ja"]) == len(row["en"]) >= 1
    for ja, en in zip(row["ja"], row["en"]):
      assert by_ja[ja] == en
      assert (f"{ja}\n{en}" if row["lang"] == "ja-en" else f"{en}\n{ja}") in row["text"]


def test_held_out_questions_never_appear_in_training_text(demo):
  world = make_world(0)
  asked, held_out = text.split_facts(world, 0)
  assert set(asked).isdisjoint(held_out)
  assert {k for k, _ in held_out} == set(text.STATEMENTS)
  training = "".join(open(p, encoding="utf-8").read() for p in demo.raw.values())
  for fact in held_out:
    for lang in ("ja", "en"):
      q, _ = text.question(world, *fact, lang)
      assert json.dumps(q, ensure_ascii=False)[1:-1] not in training, q
  eval_questions = {r["question"] for name in ("ja_qa", "en_qa", "ja_mc", "en_mc")
                    for r in _rows(demo.tasks[name])[1:]}
  assert eval_questions <= {text.question(world, *f, lang)[0]
                            for f in held_out for lang in ("ja", "en")}


def test_chat_eval_asks_held_out_facts_and_its_replies_hold_the_answer(demo):
  world = make_world(0)
  _, held_out = text.split_facts(world, 0)
  held_out_questions = {text.question(world, *f, lang)[0] for f in held_out for lang in ("ja", "en")}
  for lang in ("ja", "en"):
    rows = _rows(demo.chat_eval[lang])
    assert len(rows) >= 8
    for r in rows:
      user, assistant = r["messages"]
      assert (user["role"], assistant["role"]) == ("user", "assistant")
      assert user["content"] in held_out_questions
      assert r["answer"] in assistant["content"]


def test_tasks_load_with_the_evaluation_harness(demo):
  from swallow_jax.evaluate.tasks import load_tasks
  tasks = {t.name: t for t in load_tasks(demo.task_files())}
  assert set(tasks) == {f"{lang}_{kind}" for lang in ("ja", "en")
                        for kind in ("qa", "mc", "math", "ppl")} | {
                            "en_ja_translation", "ja_en_translation"}
  assert {t.type for t in tasks.values()} == {"qa", "multiple_choice", "math", "translation",
                                              "perplexity"}
  for t in tasks.values():
    assert len(t.examples) >= 8
  ex = tasks["ja_math"].examples[0]
  a, op, b = ex["solution"].split(" ")[:3]
  assert {"+": int(a) + int(b), "-": int(a) - int(b), "×": int(a) * int(b)}[op] == ex["answer"]
  mc = tasks["ja_mc"].examples[0]
  assert len(set(mc["choices"])) == len(mc["choices"]) == 4
  # The QA prompt is the layout of the corpus's FAQ pages.
  assert tasks["ja_qa"].prompt(tasks["ja_qa"].examples[0]).endswith("\n回答:")


def test_cli(tmp_path):
  out = subprocess.run([sys.executable, "-m", "swallow_jax.demo", f"--output={tmp_path}",
                        "--scale=0.05"], capture_output=True, text=True, check=True)
  assert json.loads(out.stdout)["raw"]["ja_web"] == os.path.join(str(tmp_path), "raw/ja_web.jsonl")
  bad = subprocess.run([sys.executable, "-m", "swallow_jax.demo", f"--output={tmp_path}",
                        "--scale=0"], capture_output=True, text=True)
  assert bad.returncode != 0 and "--scale must be positive" in bad.stderr
