"""End to end on a tiny saved model + trained sentencepiece: run_tasks, and the evaluate, generate
and synth command lines."""

import dataclasses
import json
import math
import os
import random
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

from swallow_jax import evaluate
from swallow_jax import decode as gen
from swallow_jax import synth
from swallow_jax import model as model_lib
from swallow_jax import tokenizer as tokenizer_lib
from swallow_jax.evaluate import loglik
from swallow_jax.evaluate import scoring
from swallow_jax.evaluate import tasks as tasks_lib
from swallow_jax.model import io as model_io
from swallow_jax.vocab import train as vocab_train
from helpers import direct_logprobs


@pytest.fixture(scope="module")
def tok_and_model(tmp_path_factory):
  """A sentencepiece tokenizer trained here and a random tiny model saved as HF safetensors."""
  rng = random.Random(0)
  words = ["東京", "天気", "晴れ", "学校", "先生", "cat", "dog", "the", "is", "日本", "山", "川"]
  lines = [f"{rng.choice(words)}の{rng.choice(words)}は{rng.choice(words)}です。 {i}"
           for i in range(300)]
  root = tmp_path_factory.mktemp("eval_model")
  tok_path = vocab_train.train_sentencepiece(iter(lines), 400, root / "sp")
  tok = tokenizer_lib.load_tokenizer(tok_path)
  config = dataclasses.replace(model_lib.presets.get("tiny"), vocab_size=tok.vocab_size,
                               bos_token_id=tok.bos_id, eos_token_id=(tok.eos_id,))
  params = model_lib.init_params(config, jax.random.key(2))
  model_dir = str(root / "model")
  model_io.save_hf(model_dir, config, params, dtype=jnp.float32, progress=False)
  shutil.copy(tok_path, os.path.join(model_dir, "tokenizer.model"))
  return tok, config, params, model_dir


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("tasks")
  files = {
      "mc": ({"task": "mc", "type": "multiple_choice", "num_fewshot": 1},
             [{"question": f"{w}はどこ?", "choices": ["東京", "山", "川"], "answer": i % 3}
              for i, w in enumerate(["学校", "先生", "猫"])]),
      "qa": ({"task": "qa", "type": "qa", "max_new_tokens": 6},
             [{"question": "日本の首都は?", "answer": ["東京", "東京都"]},
              {"question": "高い山は?", "answer": "富士山"}]),
      "math": ({"task": "math", "type": "math", "lang": "en", "max_new_tokens": 6},
               [{"question": "1+1?", "answer": 2}, {"question": "2+2?", "answer": "4"}]),
      "mt": ({"task": "mt", "type": "translation", "lang": "ja", "max_new_tokens": 6},
             [{"source": "The weather is fine.", "target": "天気は晴れです。"},
              {"source": "A cat.", "target": "猫です。"}]),
      "ppl": ({"task": "ppl", "type": "perplexity"},
              [{"text": "".join(f"東京の天気は晴れです。{i}" for i in range(20))},
               {"text": "the cat is a dog.", "lang": "en"}]),
  }
  paths = {}
  for name, (header, examples) in files.items():
    paths[name] = str(d / f"{name}.jsonl")
    tasks_lib.write_task(paths[name], header, examples)
  return paths


def test_run_tasks_scores_agree_with_direct_computation(tok_and_model, task_files):
  tok, config, params, _ = tok_and_model
  results = evaluate.run_tasks(config, params, tok, list(task_files.values()), batch_size=4,
                               max_len=64)
  assert set(results) == {"mc", "qa", "math", "mt", "ppl"}
  assert {r["num_examples"] for r in results.values()} == {2}

  # Multiple choice: the argmax of direct per-choice log-likelihoods.
  mc_task = tasks_lib.load_task(task_files["mc"])
  correct = []
  for ex in mc_task.examples:
    ctx = tok.encode(mc_task.prompt(ex), add_bos=True)
    # run_tasks ran with max_len=64: longer prompts keep BOS and their last tokens, leaving room
    # for the longest choice.
    room = 64 - max(len(tok.encode(c)) for c in ex["choices"])
    if len(ctx) > room:
      ctx = ctx[:1] + ctx[len(ctx) - room + 1:]
    scores = [direct_logprobs(config, params, ctx + tok.encode(c))[-len(tok.encode(c)):]
              .sum() for c in ex["choices"]]
    np.testing.assert_allclose(scores, results["mc"]["samples"][len(correct)]["logprobs"],
                               rtol=1e-5)
    correct.append(float(np.argmax(scores) == ex["answer"]))
  assert results["mc"]["metrics"]["acc"] == pytest.approx(np.mean(correct))
  assert results["mc"]["num_fewshot"] == 1
  assert results["mc"]["score"] == results["mc"]["metrics"]["acc"]

  # Generation tasks: metrics equal the scorers applied to the recorded predictions.
  qa = results["qa"]["samples"]
  assert results["qa"]["metrics"]["char_f1"] == pytest.approx(
      np.mean([scoring.char_f1(s["prediction"], s["gold"]) for s in qa]))
  mt = results["mt"]["samples"]
  assert results["mt"]["metrics"]["bleu"] == sacrebleu.corpus_bleu(
      [s["prediction"] for s in mt], [[s["gold"] for s in mt]], tokenize="ja-mecab").score
  assert results["mt"]["score"] == pytest.approx(results["mt"]["metrics"]["bleu"] / 100)
  assert 0.0 <= results["math"]["metrics"]["accuracy"] <= 1.0

  # Perplexity: pooled over both texts, with a per-language breakdown; the long text is windowed.
  ppl = results["ppl"]
  texts = [ex["text"] for ex in tasks_lib.load_task(task_files["ppl"]).examples]
  seqs = [tok.encode(t, add_bos=True) for t in texts]
  assert len(seqs[0]) > 64
  nll = [loglik.text_nll(config, params, [s], max_len=64)[0][0] for s in seqs]
  assert ppl["metrics"]["bits_per_byte"] == pytest.approx(
      sum(nll) / math.log(2) / sum(len(t.encode()) for t in texts), rel=1e-6)
  assert set(ppl["metrics"]["by_lang"]) == {"ja", "en"} and ppl["score"] is None


def test_evaluate_cli_two_models_writes_results_and_plots(tok_and_model, task_files, tmp_path):
  _, _, _, model_dir = tok_and_model
  out = tmp_path / "out"
  tasks = ",".join(task_files[k] for k in ("mc", "qa", "mt", "ppl"))
  r = subprocess.run(
      [sys.executable, "-m", "swallow_jax.evaluate", f"--model={model_dir},{model_dir}",
       "--names=a,b", f"--tasks={tasks}", f"--output={out}", "--max_len=64", "--max_examples=1"],
      capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  results = json.loads((out / "results.json").read_text())
  assert set(results["models"]) == {"a", "b"}
  assert results["models"]["a"]["tasks"]["qa"]["num_examples"] == 1
  # Same weights under two names: same numbers (only the timings differ).
  untimed = lambda m: {t: {k: v for k, v in r.items() if k != "seconds"}
                       for t, r in results["models"][m]["tasks"].items()}
  assert untimed("a") == untimed("b")
  assert {r["truncated_prompts"] for r in results["models"]["a"]["tasks"].values()} <= {0, 1}
  for png in ("radar.png", "scores.png", "perplexity.png"):
    assert (out / png).read_bytes()[:4] == b"\x89PNG"
  assert "| mc | acc |" in r.stdout
  # TensorBoard scalars, one run per model.
  assert all(os.listdir(out / "tensorboard" / m) for m in ("a", "b"))
  # A non-empty output is refused before any work; --overwrite replaces it; --json prints it.
  args = [sys.executable, "-m", "swallow_jax.evaluate", f"--model={model_dir}", "--names=a",
          f"--tasks={task_files['ppl']}", f"--output={out}", "--max_len=64", "--max_examples=1"]
  r = subprocess.run(args, capture_output=True, text=True, timeout=600)
  assert r.returncode != 0 and "is not empty (pass --overwrite" in r.stderr
  r = subprocess.run(args + ["--overwrite", "--json"], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  printed = json.loads(r.stdout)
  assert printed == json.loads((out / "results.json").read_text())
  assert set(printed["models"]) == {"a"} and set(printed["models"]["a"]["tasks"]) == {"ppl"}
  # The stale plots of the first run are gone (one perplexity task: no score plots).
  assert not (out / "radar.png").exists() and not (out / "scores.png").exists()


def test_evaluate_models_writes_results_after_each_task_and_resumes(tok_and_model, task_files,
                                                                     tmp_path, monkeypatch):
  _, _, _, model_dir = tok_and_model
  out = str(tmp_path / "out")
  tasks = [task_files["ppl"], task_files["mc"]]
  real = evaluate.run_task

  def killed_at_second(config, params, tok, task, **kw):
    if task.name == "mc":
      raise KeyboardInterrupt
    return real(config, params, tok, task, **kw)

  monkeypatch.setattr(evaluate, "run_task", killed_at_second)
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate_models({"m": model_dir}, tasks, None, out, max_len=64, max_examples=1,
                             progress=False)
  kept = json.loads(open(os.path.join(out, "results.json")).read())
  assert set(kept["models"]["m"]["tasks"]) == {"ppl"}  # the finished task survived the kill
  with pytest.raises(FileExistsError, match="is not empty"):
    evaluate.evaluate_models({"m": model_dir}, tasks, None, out, progress=False)
  ran = []
  monkeypatch.setattr(evaluate, "run_task", lambda *a, **kw: ran.append(a[3].name) or real(*a, **kw))
  res = evaluate.evaluate_models({"m": model_dir}, tasks, None, out, max_len=64, max_examples=1,
                                 resume=True, progress=False)
  assert ran == ["mc"] and list(res["models"]["m"]["tasks"]) == ["ppl", "mc"]


def test_evaluate_cli_help_and_bad_input(tmp_path, task_files):
  run = lambda *a: subprocess.run([sys.executable, "-m", "swallow_jax.evaluate", *a],
                                  capture_output=True, text=True, timeout=120)
  r = run("--help")
  assert "--tasks" in r.stdout and "--names" in r.stdout
  r = run("--model=m", f"--output={tmp_path}")
  assert r.returncode != 0 and "--tasks is required" in r.stderr
  r = run("--model=a,b", "--names=x", f"--tasks={task_files['qa']}", f"--output={tmp_path}")
  assert r.returncode != 0 and "--names needs 2" in r.stderr
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"task": "t", "type": "essay"}\n{"q": 1}\n')
  r = run(f"--model={tmp_path}", f"--tasks={bad}", f"--output={tmp_path}/o")
  assert r.returncode != 0 and "not one of" in r.stderr
  r = run(f"--model={tmp_path}/nope", f"--tasks={task_files['qa']}", f"--output={tmp_path}/o")
  assert r.returncode == 1 and f"{tmp_path}/nope: no such file or directory" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("evaluate: error: ")
  assert run("--help").returncode == 0


def _run(module, *args, stdin=None):
  return subprocess.run([sys.executable, "-m", module, *args], input=stdin, capture_output=True,
                        text=True, timeout=600)


def test_generate_cli_prompt_and_chat(tok_and_model):
  tok, config, params, model_dir = tok_and_model
  r = _run("swallow_jax.generate", f"--model={model_dir}", "--prompt=東京の天気は",
           "--max_new_tokens=5")
  assert r.returncode == 0, r.stderr[-2000:]
  (want,) = gen.generate(config, params, [tok.encode("東京の天気は", add_bos=True)], 5,
                         stop_tokens=gen.stop_tokens_for(tok))
  assert r.stdout.rstrip("\n") == tok.decode(want)
  r = _run("swallow_jax.generate", f"--model={model_dir}", "--chat", "--system=日本語で",
           "--max_new_tokens=4", "--temperature=0.8", stdin="こんにちは\n元気?\n")
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.count("assistant> ") == 2


def test_synthesize_builds_sft_examples(tok_and_model, monkeypatch):
  """The sampling is faked: this checks encoding, the row -> prompt mapping and the output."""
  tok, config, params, _ = tok_and_model
  prompts = [[{"role": "user", "content": "天気は?"}],
             [{"role": "system", "content": "s"}, {"role": "user", "content": "学校は?"}]]
  answers = [("晴れです。", True), ("", True), ("truncated ですが", False), ("先生です。", True)]
  seen = {}

  def fake(config, params, prompt_ids, max_new_tokens, **kw):
    seen.update(prompt_ids=prompt_ids, **kw)
    return [gen.Generation(tok.encode(t), s) for t, s in answers]

  monkeypatch.setattr(gen, "generate_detailed", fake)
  examples, stats = synth.synthesize(config, params, tok, prompts, num_samples=2, seed=5,
                                     max_new_tokens=8)
  assert seen["temperature"] == 1.0 and seen["top_p"] == 0.95 and seen["seed"] == 5
  assert seen["stop_tokens"] == gen.stop_tokens_for(tok)
  from swallow_jax.data import chat  # pylint: disable=g-import-not-at-top
  first = chat.encode_chat(tok, prompts[0], add_generation_prompt=True)[0]
  assert seen["prompt_ids"][:2] == [first, first]
  assert examples == [
      {"messages": prompts[0] + [{"role": "assistant", "content": "晴れです。"}]},
      {"messages": prompts[1] + [{"role": "assistant", "content": "先生です。"}]}]
  assert stats["prompts"] == 2 and stats["responses"] == 4 and stats["kept"] == 2
  assert stats["removed"]["empty"] == 1 and stats["removed"]["truncated"] == 1


def test_synth_cli(tok_and_model, tmp_path):
  _, _, _, model_dir = tok_and_model
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q}]},
                                          ensure_ascii=False) for q in ["天気は?", "学校は?"]))
  out = tmp_path / "sft.jsonl"
  r = _run("swallow_jax.synth", f"--model={model_dir}", f"--prompts={prompts}",
           f"--output={out}", "--num_samples=2", "--max_new_tokens=4", "--json")
  assert r.returncode == 0, r.stderr[-2000:]
  stats = json.loads(r.stdout.strip().splitlines()[-1])
  assert stats == json.loads((tmp_path / "sft.jsonl.stats.json").read_text())
  assert stats["responses"] == 4
  assert stats["kept"] + sum(stats["removed"].values()) == 4
  assert len(out.read_text().splitlines()) == stats["kept"]
