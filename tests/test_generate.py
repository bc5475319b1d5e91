"""Decoding: greedy parity with transformers, KV cache vs full recompute, sampling, the CLI."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.generation import logits_process as hf_lp

from swallow_jax import decode as gen
from swallow_jax import model as model_lib

# Mixed lengths, all in one 16-token prompt bucket so the tests compile the decode loop rarely.
PROMPTS = [[5, 7, 9], list(range(10, 24)), [3], [100, 90, 80, 70, 60, 50, 40]]
NEW = 12


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
  """A tiny random HF Llama (GQA, RoPE scaling) saved as safetensors, and our load of it."""
  from swallow_jax.model import io as model_io  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(
      vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
      rope_theta=10000.0, initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
  model = transformers.LlamaForCausalLM(cfg).eval()
  path = tmp_path_factory.mktemp("hf_tiny")
  model.save_pretrained(path)
  config, params = model_io.load(str(path))
  return model, config, params


def _hf_greedy(model, prompts, new, eos):
  """transformers' greedy generate on left-padded prompts; new tokens cut before the first eos."""
  t = max(map(len, prompts))
  ids = torch.tensor([[0] * (t - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                         eos_token_id=eos, pad_token_id=0)
  result = []
  for row in out[:, t:].tolist():
    result.append(row[:row.index(eos)] if eos in row else row)
  return result


def test_greedy_matches_transformers(hf_model):
  model, config, params = hf_model
  # Pick a stop token the model actually produces, so stopping is exercised too.
  (free,) = _hf_greedy(model, [PROMPTS[1]], NEW, eos=255)
  eos = free[NEW // 2]
  ours = gen.generate(config, params, PROMPTS, NEW, stop_tokens=[eos])
  one_by_one = [_hf_greedy(model, [p], NEW, eos)[0] for p in PROMPTS]
  assert ours == one_by_one
  assert len(ours[1]) < NEW  # stopped early, stop token excluded
  assert ours == _hf_greedy(model, PROMPTS, NEW, eos)  # HF batched with left padding
  # Chunked decoding (batch_size) gives the same tokens.
  assert gen.generate(config, params, PROMPTS, NEW, stop_tokens=[eos], batch_size=3) == ours


def _recompute_greedy(config, params, prompts, new):
  """Greedy decoding by re-running the full forward each step (right-padded to one fixed length,
  which the causal mask makes harmless)."""
  seqs = [list(p) for p in prompts]
  for _ in range(new):
    tokens = np.zeros((len(seqs), 64), np.int32)
    for i, s in enumerate(seqs):
      tokens[i, :len(s)] = s
    logits = np.asarray(model_lib.forward(config, params, jnp.asarray(tokens)))
    for i, s in enumerate(seqs):
      s.append(int(np.argmax(logits[i, len(s) - 1])))
  return [s[len(p):] for s, p in zip(seqs, prompts)]


@pytest.fixture(scope="module")
def tiny():
  config = model_lib.presets.get("tiny_gqa")
  return config, model_lib.init_params(config, jax.random.key(0))


def test_kv_cache_equals_full_recompute(tiny):
  config, params = tiny
  ours = gen.generate(config, params, PROMPTS, NEW)
  assert ours == _recompute_greedy(config, params, PROMPTS, NEW)


def test_sharded_params_same_tokens(tiny):
  """FSDP-sharded parameters over 8 devices, under the trainer's mesh and logical axis rules."""
  from swallow_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from swallow_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  config, params = tiny
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  shardings = sharding.param_shardings(jax.eval_shape(lambda: params),
                                       model_lib.param_logical_axes(config), mesh)
  sharded = jax.device_put(params, shardings)
  assert not sharded["layers"]["mlp"]["up_proj"]["kernel"].sharding.is_fully_replicated
  want = gen.generate(config, params, PROMPTS[:3], 6)
  with sharding.mesh_context(mesh):
    assert gen.generate(config, sharded, PROMPTS[:3], 6) == want
    # The decoding layout keeps each weight's FSDP sharding (only the layer axis is split off).
    per_layer = model_lib.unstack_layers(sharded)
    kernel = per_layer["layers_1"]["mlp"]["up_proj"]["kernel"]
    assert tuple(kernel.sharding.spec)[:1] == ("fsdp",)
    assert gen.generate(config, per_layer, PROMPTS[:3], 6) == want


def test_tensor_parallel_decoding_same_tokens(tiny):
  """Under a tensor mesh the residual is sequence-split where the length divides: the prompt's
  prefill may be split, the one-token decode steps cannot; the tokens must not change."""
  from swallow_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from swallow_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  config, params = tiny
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
  shardings = sharding.param_shardings(jax.eval_shape(lambda: params),
                                       model_lib.param_logical_axes(config), mesh)
  want = gen.generate(config, params, PROMPTS[:4], 6)
  with sharding.mesh_context(mesh):
    assert gen.generate(config, jax.device_put(params, shardings), PROMPTS[:4], 6) == want


def test_sampling_deterministic_by_seed(tiny):
  config, params = tiny
  kw = dict(temperature=1.0, top_k=50, top_p=0.9)
  a = gen.generate(config, params, PROMPTS, NEW, seed=3, **kw)
  assert a == gen.generate(config, params, PROMPTS, NEW, seed=3, **kw)
  assert a != gen.generate(config, params, PROMPTS, NEW, seed=4, **kw)
  # A prompt's sample depends on its index and the seed, not on how the batch was chunked.
  assert a == gen.generate(config, params, PROMPTS, NEW, seed=3, batch_size=2, **kw)


def test_filter_logits_matches_transformers_warpers():
  logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]], np.float32))
  for temperature, top_k, top_p in [(1.0, 2, 1.0), (0.7, 0, 0.7), (1.3, 3, 0.5), (1.0, 0, 0.5)]:
    want = torch.tensor(logits)
    for warper in [hf_lp.TemperatureLogitsWarper(temperature),
                   *([hf_lp.TopKLogitsWarper(top_k)] if top_k else []),
                   *([hf_lp.TopPLogitsWarper(top_p)] if top_p < 1 else [])]:
      want = warper(None, want)
    got = np.asarray(gen.filter_logits(jnp.asarray(logits), temperature, top_k, top_p))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want.numpy()))
    np.testing.assert_allclose(got[~np.isinf(got)], want.numpy()[~np.isinf(got)], rtol=1e-6)
  # Hand values: top_p=0.7 keeps {0.5, 0.3} (0.5 < 0.7 before the second); top_p=0.5 only 0.5.
  kept = lambda p: np.isfinite(np.asarray(gen.filter_logits(jnp.asarray(logits[:1]), 1.0, 0, p)))
  assert kept(0.7).tolist() == [[True, True, False, False]]
  assert kept(0.5).tolist() == [[True, False, False, False]]


def test_sampling_frequencies_follow_filtered_distribution():
  # 4000 rows of the same logits, each its own key: top_k=2 renormalises 0.5/0.3 to 0.625/0.375.
  logits = jnp.tile(jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]])), (4000, 1))
  keys = jax.random.split(jax.random.key(0), 4000)
  counts = np.bincount(np.asarray(gen.sample_logits(logits, keys, 1.0, 2, 1.0)), minlength=4)
  assert counts[2:].sum() == 0 and abs(counts[0] / 4000 - 0.625) < 0.03
  counts = np.bincount(np.asarray(gen.sample_logits(logits, keys, 1.0, 0, 1.0)), minlength=4)
  np.testing.assert_allclose(counts / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_generate_detailed_and_bad_input(tiny):
  config, params = tiny
  (free,) = gen.generate(config, params, [PROMPTS[0]], NEW)
  stop = free[3]
  (g,) = gen.generate_detailed(config, params, [PROMPTS[0]], NEW, stop_tokens=[stop])
  assert g.stopped and g.tokens == free[:free.index(stop)]
  (g,) = gen.generate_detailed(config, params, [PROMPTS[0]], 4)
  assert not g.stopped and len(g.tokens) == 4
  with pytest.raises(ValueError, match="non-empty"):
    gen.generate(config, params, [[]], 4)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    gen.generate(config, params, [[1] * 10], config.max_position_embeddings)
  with pytest.raises(ValueError, match="top_p"):
    gen.generate(config, params, [[1]], 4, top_p=0.0)


def test_cli_help_and_bad_input(tmp_path):
  run = lambda *a: subprocess.run([sys.executable, "-m", "swallow_jax.generate", *a],
                                  capture_output=True, text=True, timeout=120)
  r = run("--help")
  assert "--chat" in r.stdout and "--prompt" in r.stdout
  r = run("--prompt=hi")
  assert r.returncode != 0 and "--model is required" in r.stderr
  r = run(f"--model={tmp_path}", "--prompt=hi", "--chat")
  assert r.returncode != 0 and "exactly one of" in r.stderr
  r = run(f"--model={tmp_path}/missing", "--tokenizer=x", "--prompt=hi")
  assert r.returncode != 0 and "error:" in r.stderr
  assert r.stderr.strip().splitlines() == [r.stderr.strip().splitlines()[-1]]  # one line
  assert r.stderr.strip().startswith("generate: error: ")
  assert run("--help").returncode == 0


def test_load_for_decoding_any_path_decoding_layout(tmp_path):
  """HF dir or training run; params come in the per-layer decoding layout, in --dtype."""
  from helpers import write_tiny_tiktoken  # pylint: disable=g-import-not-at-top
  from test_model_io import write_train_run  # pylint: disable=g-import-not-at-top
  from swallow_jax.model import io as model_io  # pylint: disable=g-import-not-at-top
  config = model_lib.presets.get("tiny", num_layers=2)
  params = model_lib.init_params(config, jax.random.key(0))
  tok_file = write_tiny_tiktoken(str(tmp_path / "tok.tiktoken"))
  model_io.save_hf(str(tmp_path / "hf"), config, params, dtype=jnp.float32, progress=False)
  workdir = write_train_run(tmp_path / "run", config, params, tokenizer=tok_file)
  for path, tok in ((str(tmp_path / "hf"), tok_file), (workdir, None)):
    cfg, got, tokenizer = gen.load_for_decoding(path, tok, "bfloat16")
    assert (cfg.param_dtype, cfg.dtype) == ("bfloat16", "bfloat16")
    assert model_lib.is_per_layer(got) and tokenizer is not None
    np.testing.assert_array_equal(
        np.asarray(got["layers_1"]["mlp"]["up_proj"]["kernel"], np.float32),
        np.asarray(params["layers"]["mlp"]["up_proj"]["kernel"][1].astype(jnp.bfloat16),
                   np.float32))
  with pytest.raises((ValueError, OSError), match=r"missing"):
    gen.load_for_decoding(str(tmp_path / "missing"), tok_file)


def test_stop_tokens_for():
  class Tok:
    eos_id, eot_id = 2, None
  assert gen.stop_tokens_for(Tok()) == (2,)
  Tok.stop_ids = (7, 9)
  assert gen.stop_tokens_for(Tok()) == (7, 9)
