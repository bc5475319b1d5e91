"""The real-model tier: SmolLM2-135M-Instruct (ChatML, no BOS, GQA 9/3, tied embeddings) through
the tokenizer, the chat template, preprocess and the public model API, against transformers."""

import json
import os

import numpy as np
import pytest

import swallow_jax as sj
from swallow_jax import preprocess as pp
from swallow_jax.data import chat
from swallow_jax.data import records
from swallow_jax.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow  # the fixture downloads and converts a 135M model once

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of Japan?"},
     {"role": "assistant", "content": "Tokyo."}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "日本の首都は？"},
     {"role": "assistant", "content": "東京です。\n"},
     {"role": "user", "content": "Write code:\n\n x = 1"},
     {"role": "assistant", "content": "\n```python\nx = 1\n```\n\n"}],
]


@pytest.fixture(scope="module")
def tok(smollm2_dir):
  return load_tokenizer(smollm2_dir)


@pytest.fixture(scope="module")
def hf_tok(smollm2_dir):
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  return AutoTokenizer.from_pretrained(smollm2_dir)


def test_special_tokens_from_the_model_files(tok):
  assert (tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id) == (1, 2, 2, 2)
  assert not tok.add_bos and tok.bos_prefix() == []
  assert tok.stop_ids == (2,)
  assert tok.encode("Hello", add_bos=True) == tok.encode("Hello")
  assert chat.chat_special_ids(tok) == (1, 2)


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_encode_chat_matches_apply_chat_template(tok, hf_tok, index, generation_prompt):
  messages = CONVERSATIONS[index][:-1] if generation_prompt else CONVERSATIONS[index]
  want = hf_tok.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                    tokenize=True, return_dict=False)
  ids, mask = chat.encode_chat(tok, messages, add_generation_prompt=generation_prompt)
  assert ids == want
  replies = [m["content"] for m in messages if m["role"] == "assistant"]
  runs, run = [], []
  for i, m in zip(ids + [None], mask + [0]):
    if m:
      run.append(i)
    elif run:
      runs, run = runs + [run], []
  assert len(runs) == len(replies)
  for r, text in zip(runs, replies):
    assert r[-1] == 2 and tok.decode(r[:-1]).strip() == text.strip()


def test_preprocess_chat_format(tok, smollm2_dir, tmp_path):
  src = tmp_path / "sft.jsonl"
  src.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n"
                         for m in CONVERSATIONS))
  summary = pp.preprocess(str(src), smollm2_dir, str(tmp_path / "ds"), fmt="chat")
  assert summary["documents"] == len(CONVERSATIONS)
  manifest = records.read_manifest(str(tmp_path / "ds"))
  assert manifest["tokenizer"]["bos_id"] == 1 and not manifest["tokenizer"]["add_bos"]
  source = records.ShardSource(str(tmp_path / "ds"), manifest)
  for i, messages in enumerate(CONVERSATIONS):
    tokens, mask = records.decode_record(source[i], "chat")
    want_ids, want_mask = chat.encode_chat(tok, messages)
    assert tokens.tolist() == want_ids and mask.tolist() == want_mask
    assert tokens[0] == 1  # <|im_start|> of the template, not a BOS prefix
  text = tmp_path / "text.jsonl"
  text.write_text(json.dumps({"text": "Hello world"}) + "\n")
  pp.preprocess(str(text), smollm2_dir, str(tmp_path / "text"))
  manifest = records.read_manifest(str(tmp_path / "text"))
  (rec,) = [records.ShardSource(str(tmp_path / "text"), manifest)[0]]
  assert records.decode_record(rec, "text")[0].tolist() == [*tok.encode("Hello world"), 2]


@pytest.fixture(scope="module")
def models(smollm2_dir):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import LlamaForCausalLM  # pylint: disable=g-import-not-at-top
  config, params = sj.load_hf(smollm2_dir, dtype=jnp.float32)
  ref = LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
  return config, params, ref


def test_logits_match_transformers(models, tok):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  config, params, ref = models
  assert (config.num_heads, config.num_kv_heads, config.tie_word_embeddings) == (9, 3, True)
  ids = chat.encode_prompt(tok, CONVERSATIONS[1][:2])
  got = np.asarray(sj.forward(config, params, jnp.asarray([ids])))
  with torch.no_grad():
    want = ref(torch.tensor([ids])).logits.numpy()
  np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def test_greedy_tokens_match_transformers(models, tok):
  import torch  # pylint: disable=g-import-not-at-top
  config, params, ref = models
  ids = chat.encode_prompt(tok, CONVERSATIONS[0][:1])
  (got,) = sj.generate(config, params, [ids], 24, temperature=0.0, stop_tokens=tok.stop_ids)
  with torch.no_grad():
    out = ref.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                       eos_token_id=list(tok.stop_ids), pad_token_id=2)
  want = out[0, len(ids):].tolist()
  if want and want[-1] in tok.stop_ids:
    want = want[:-1]
  assert got == want


def _cli(module, *args, stdin=None):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, "-m", module, *args], input=stdin, capture_output=True,
                        text=True, timeout=600, check=False)


def test_generate_cli_chat_and_prompt(smollm2_dir):
  r = _cli("swallow_jax.generate", f"--model={smollm2_dir}", "--chat", "--max_new_tokens=24",
           stdin="What is the capital of France?\n")
  assert r.returncode == 0, r.stderr[-2000:]
  # stdout carries only the replies (the "user> " prompts go to stderr).
  assert r.stdout.startswith("assistant> ") and r.stdout.count("\n") == 1, r.stdout
  assert "Paris" in r.stdout, r.stdout
  r = _cli("swallow_jax.generate", f"--model={smollm2_dir}", "--max_new_tokens=8",
           "--prompt=The capital of France is")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "Paris" in r.stdout


SYNTH_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "Say hello."},
     {"role": "assistant", "content": "An old answer that synth drops."}],
    [{"role": "user", "content": "Name a primary color."}],
]


def test_synth_cli_writes_clean_replies(tok, smollm2_dir, tmp_path):
  src = tmp_path / "prompts.jsonl"
  src.write_text("".join(json.dumps({"messages": m}) + "\n" for m in SYNTH_PROMPTS))
  out = tmp_path / "synth.jsonl"
  r = _cli("swallow_jax.synth", f"--model={smollm2_dir}", f"--input={src}", f"--output={out}",
           "--lang=any", "--temperature=0", "--max_new_tokens=64", "--json")
  assert r.returncode == 0, r.stderr[-2000:]
  stats = json.loads(r.stdout.strip().splitlines()[-1])
  with open(f"{out}.stats.json") as f:
    assert json.load(f) == stats
  assert stats["responses"] == len(SYNTH_PROMPTS)
  assert stats["kept"] + sum(stats["removed"].values()) == len(SYNTH_PROMPTS)
  with open(out, encoding="utf-8") as f:
    examples = [json.loads(line) for line in f]
  assert len(examples) == stats["kept"] >= 2, stats
  prompts = [m[:-1] if m[-1]["role"] == "assistant" else m for m in SYNTH_PROMPTS]
  replies = {}
  for ex in examples:
    *prompt, reply = ex["messages"]
    assert prompt in prompts and reply["role"] == "assistant"
    text = reply["content"]
    assert text.strip() == text and text
    assert not any(s in text for s in tok.special_tokens), text  # no <|im_end|>, <|im_start|>
    replies[prompts.index(prompt)] = text
  assert "Paris" in replies[0], replies


SFT = [[{"role": "user", "content": f"What is {a} plus {b}?"},
        {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
       for a in range(2, 9) for b in range(3, 7)]


def test_sft_on_chatml_loss_falls_and_masks_only_replies(tok, smollm2_dir, tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from swallow_jax.train import loop  # pylint: disable=g-import-not-at-top
  src = tmp_path / "sft.jsonl"
  src.write_text("".join(json.dumps({"messages": m}) + "\n" for m in SFT))
  pp.preprocess(str(src), smollm2_dir, str(tmp_path / "ds"), fmt="chat")
  source = records.ShardSource(str(tmp_path / "ds"), records.read_manifest(str(tmp_path / "ds")))
  tokens, mask = records.decode_record(source[0], "chat")
  learned = tokens[mask.astype(bool)].tolist()
  assert learned[-1] == 2 and tok.decode(learned[:-1]).strip() == SFT[0][1]["content"]
  assert 1 not in learned and mask.sum() < len(tokens) // 2
  config = ml_collections.ConfigDict(dict(
      model=dict(preset=""), init_from=smollm2_dir, tokenizer=smollm2_dir,
      data=dict(sources=[dict(name="sft", path=str(tmp_path / "ds"), weight=1.0)], seq_len=256,
                global_batch_size=8, kind="sft", shuffle_seed=0),  # one row per test device
      optimizer=dict(peak_lr=1e-4, warmup_steps=0, decay_steps=6, min_lr_ratio=1.0,
                     weight_decay=0.0, clip_norm=1.0),
      train=dict(num_steps=6, log_every=1, tensorboard=False),
      checkpoint=dict(every_steps=0, async_save=False)))
  summary = loop.run(config, str(tmp_path / "run"))
  assert summary["step"] == 6
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    losses = [json.loads(line)["loss"] for line in f]
  assert len(losses) == 6 and all(np.isfinite(losses))
  assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses


MC = [("The capital of France is", ["Paris", "Berlin", "Rome", "Madrid"], 0),
      ("The capital of Japan is", ["Seoul", "Tokyo", "Beijing", "Bangkok"], 1),
      ("The largest planet in the solar system is", ["Mars", "Venus", "Jupiter", "Mercury"], 2),
      ("Water freezes at zero degrees", ["Fahrenheit", "Kelvin", "Rankine", "Celsius"], 3),
      ("The opposite of hot is", ["cold", "loud", "tall", "green"], 0),
      ("A baby cat is called a", ["puppy", "kitten", "calf", "foal"], 1),
      ("The sun rises in the", ["west", "north", "east", "south"], 2),
      ("Two plus two equals", ["seven", "nine", "eleven", "four"], 3)]


def test_evaluate_cli_multiple_choice_above_chance(smollm2_dir, tmp_path):
  task = tmp_path / "easy_en.jsonl"
  lines = [{"task": "easy_en", "type": "multiple_choice", "lang": "en", "template": "{question}"}]
  lines += [{"question": q, "choices": c, "answer": a} for q, c, a in MC]
  task.write_text("".join(json.dumps(x) + "\n" for x in lines))
  r = _cli("swallow_jax.evaluate", f"--model={smollm2_dir}", f"--tasks={task}",
           f"--output={tmp_path / 'out'}", "--names=smol", "--json")
  assert r.returncode == 0, r.stderr[-2000:]
  with open(tmp_path / "out" / "results.json") as f:
    result = json.load(f)["models"]["smol"]["tasks"]["easy_en"]
  assert result["num_examples"] == len(MC)
  assert result["metrics"]["acc"] >= 0.75, result["metrics"]


def test_convert_to_hf_round_trips_tokenizer_and_config(tok, smollm2_dir, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoTokenizer, LlamaForCausalLM  # pylint: disable=g-import-not-at-top
  out = tmp_path / "hf"
  r = _cli("swallow_jax.convert", f"--model={smollm2_dir}", f"--to_hf={out}", "--quiet")
  assert r.returncode == 0, r.stderr[-2000:]
  hf_tok = AutoTokenizer.from_pretrained(out)
  for messages in CONVERSATIONS:
    assert hf_tok.apply_chat_template(messages, tokenize=True, return_dict=False) == (
        chat.encode_chat(tok, messages)[0])
  assert load_tokenizer(out).stop_ids == (2,)
  with open(os.path.join(smollm2_dir, "config.json")) as f:
    src = json.load(f)
  with open(out / "config.json") as f:
    got = json.load(f)
  for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
    if key in src:
      assert got.get(key) == src[key], key
  assert all(os.stat(out / n).st_mode & 0o777 == 0o644 for n in os.listdir(out))
  model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
  assert model.config.num_key_value_heads == 3 and model.config.tie_word_embeddings
