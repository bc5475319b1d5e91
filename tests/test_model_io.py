"""model.io: resolve() on every path form, one-line errors, load/save in each layout."""

import dataclasses
import json
import os
import stat
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from swallow_jax.model import init_params, presets
from swallow_jax.model import io as model_io

CFG = dataclasses.replace(presets.get("tiny_gqa", num_layers=2, vocab_size=300),
                          pad_token_id=0, unk_token_id=3)


def write_train_run(workdir, config, params, step=7, tokenizer=None) -> str:
  """A training workdir as train/loop writes it: config.json + checkpoints/<step>/state."""
  os.makedirs(workdir, exist_ok=True)
  model = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
  model["eos_token_id"] = list(model["eos_token_id"])
  if config.rope_scaling is not None:
    model["rope_scaling"] = config.rope_scaling.to_hf()
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"model": model, "tokenizer": tokenizer or ""}, f)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(os.path.join(workdir, "checkpoints", str(step), "state")),
               {"params": params, "step": np.int64(step)})
  return str(workdir)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("models")
  params = init_params(CFG, jax.random.key(0))
  hf_dir = str(root / "hf")
  model_io.save_hf(hf_dir, CFG, params, dtype=jnp.float32, progress=False)
  orbax_dir = str(root / "orbax")
  model_io.save_orbax(orbax_dir, CFG, params)
  write_train_run(root / "run", CFG, params, step=3)
  workdir = write_train_run(root / "run", CFG, params, step=7, tokenizer=hf_dir)
  return root, params, hf_dir, orbax_dir, workdir


def test_resolve_every_form(models, tmp_path, monkeypatch):
  root, _, hf_dir, orbax_dir, workdir = models
  ref = model_io.resolve(hf_dir)
  assert (ref.kind, ref.path, ref.tokenizer_dir, ref.step) == ("hf", hf_dir, hf_dir, None)
  assert ref.config == CFG
  ref = model_io.resolve(orbax_dir)
  assert (ref.kind, ref.path) == ("orbax", os.path.join(orbax_dir, "params"))
  assert ref.config == CFG
  state7 = os.path.join(workdir, "checkpoints", "7", "state")
  for form in (workdir, os.path.join(workdir, "checkpoints"),
               os.path.join(workdir, "checkpoints", "7"), state7):
    ref = model_io.resolve(form)
    assert (ref.kind, ref.path, ref.step, ref.tokenizer_dir) == ("train", state7, 7, hf_dir), form
    assert ref.config == CFG
  assert model_io.resolve(os.path.join(workdir, "checkpoints", "3")).step == 3
  # Hub id from a fake local cache (layout models--org--name/snapshots/<rev>, refs/main).
  repo = tmp_path / "hub" / "models--org--tiny"
  snap = repo / "snapshots" / "abc123"
  os.makedirs(repo / "refs")
  (repo / "refs" / "main").write_text("abc123")
  os.makedirs(snap.parent)
  os.symlink(hf_dir, snap)
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  monkeypatch.setenv("HF_HOME", str(tmp_path))
  monkeypatch.chdir(tmp_path)
  ref = model_io.resolve("org/tiny")
  assert ref.kind == "hf" and ref.config == CFG and os.path.samefile(ref.path, hf_dir)
  message = (f"org/missing is not in the local Hugging Face cache ({tmp_path / 'hub'}); "
             "download it with: huggingface-cli download org/missing")
  with pytest.raises(model_io.ModelPathError) as e:
    model_io.resolve("org/missing")
  assert str(e.value) == message
  # Without huggingface_hub the cache layout is read directly.
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)
  ref = model_io.resolve("org/tiny")
  assert ref.kind == "hf" and os.path.samefile(ref.path, hf_dir)
  with pytest.raises(model_io.ModelPathError) as e:
    model_io.resolve("org/missing")
  assert str(e.value) == message


def test_one_line_errors(models, tmp_path):
  _, _, hf_dir, _, _ = models
  cases = {
      str(tmp_path / "nope"): r"nope: no such file or directory",
      str(tmp_path): r"not a model \(expected an HF dir",
  }
  half = tmp_path / "half"
  os.makedirs(half)
  (half / "config.json").write_text(open(os.path.join(hf_dir, "config.json")).read())
  cases[str(half)] = r"half: config.json but no \*.safetensors"
  run = tmp_path / "run"
  os.makedirs(run / "checkpoints" / "5" / "state")
  cases[str(run)] = r"run/config.json not found: cannot tell the model config"
  for path, message in cases.items():
    with pytest.raises(model_io.ModelPathError, match=message) as e:
      model_io.resolve(path)
    assert "\n" not in str(e.value)


def test_load_each_kind_same_params(models):
  _, params, hf_dir, orbax_dir, workdir = models
  for path in (hf_dir, orbax_dir, workdir):
    config, got = model_io.load(path, progress=False)
    assert config == CFG, path
    jax.tree.map(np.testing.assert_array_equal, got, params)
  config, got = model_io.load(workdir, dtype=jnp.bfloat16, progress=False)
  assert config.param_dtype == "bfloat16"
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(got))
  config, dec = model_io.load(hf_dir, decode=True, progress=False)
  assert "layers" not in dec and "layers_1" in dec
  np.testing.assert_array_equal(dec["layers_1"]["mlp"]["up_proj"]["kernel"],
                                params["layers"]["mlp"]["up_proj"]["kernel"][1])


def test_save_hf_layout_modes_and_ids(models, tmp_path):
  _, params, hf_dir, _, _ = models
  files = sorted(os.listdir(hf_dir))
  assert "model.safetensors" in files and model_io.INDEX not in files  # one shard, no index
  for name in files:
    assert stat.S_IMODE(os.stat(os.path.join(hf_dir, name)).st_mode) == 0o644, name
  cfg = json.load(open(os.path.join(hf_dir, "config.json")))
  assert (cfg["pad_token_id"], cfg["unk_token_id"]) == (0, 3)
  gen = json.load(open(os.path.join(hf_dir, "generation_config.json")))
  assert gen["pad_token_id"] == 0 and gen["eos_token_id"] == list(CFG.eos_token_id)
  with pytest.raises(FileExistsError):
    model_io.save_hf(hf_dir, CFG, params, progress=False)
  out = str(tmp_path / "sharded")
  model_io.save_hf(out, CFG, params, max_shard_bytes=100_000, progress=False)
  shards = [f for f in os.listdir(out) if f.endswith(".safetensors")]
  assert len(shards) > 1 and all(f.startswith("model-") for f in shards)
  assert os.path.exists(os.path.join(out, model_io.INDEX))


def test_sharded_load_reads_rows_and_columns(models):
  _, params, hf_dir, _, _ = models
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))
  P = jax.sharding.PartitionSpec
  shardings = jax.tree.map(
      lambda x: jax.sharding.NamedSharding(mesh, P(*([None] * (x.ndim - 2)), "a", "b")
                                           if x.ndim >= 2 else P()), params)
  _, got = model_io.load(hf_dir, shardings=shardings, progress=False)
  jax.tree.map(np.testing.assert_array_equal, got, params)


def test_transformers_tokenizer_from_save_hf(tmp_path):
  transformers = pytest.importorskip("transformers")
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import models as tok_models  # pylint: disable=g-import-not-at-top
  specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
              "<|end_header_id|>", "<|eot_id|>"]
  vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz \n")}
  tok = tokenizers.Tokenizer(tok_models.WordLevel(vocab, unk_token="a"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
  tok.add_special_tokens(specials)
  src = tmp_path / "tok"
  os.makedirs(src)
  tok.save(str(src / "tokenizer.json"))
  ids = {s: tok.token_to_id(s) for s in specials}
  config = dataclasses.replace(CFG, bos_token_id=ids["<|begin_of_text|>"],
                               eos_token_id=(ids["<|eot_id|>"],))
  params = init_params(config, jax.random.key(1))
  out = str(tmp_path / "out")
  model_io.save_hf(out, config, params, tokenizer_dir=str(src), progress=False)
  tc = json.load(open(os.path.join(out, "tokenizer_config.json")))
  assert tc["tokenizer_class"] == "PreTrainedTokenizerFast"
  assert (tc["bos_token"], tc["eos_token"]) == ("<|begin_of_text|>", "<|eot_id|>")
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  text = hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                    add_generation_prompt=True)
  assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n")
