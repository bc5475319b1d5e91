"""HF transformers parity (logits, RoPE), load/save round trips, sharded files, errors."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from swallow_jax.model import LlamaConfig, RopeScaling, forward  # noqa: E402
from swallow_jax.model import hf  # noqa: E402
from swallow_jax.model import io as model_io  # noqa: E402
from swallow_jax.model.rope import inv_frequencies  # noqa: E402

# (name, LlamaConfig kwargs): GQA ratios 1/2/4, rope scaling on/off, tied/untied, theta,
# head_dim != hidden/heads.
CASES = {
    "mha_untied": dict(num_heads=4, num_kv_heads=4, head_dim=16, hidden_size=64,
                       rope_theta=10000.0, tie_word_embeddings=False),
    "gqa2_scaled_tied": dict(num_heads=4, num_kv_heads=2, head_dim=16, hidden_size=64,
                             rope_theta=500000.0, tie_word_embeddings=True,
                             rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16)),
    "gqa4_headdim_scaled": dict(num_heads=8, num_kv_heads=2, head_dim=16, hidden_size=48,
                                rope_theta=1e6, tie_word_embeddings=False,
                                rope_scaling=RopeScaling(32.0, 1.0, 4.0, 32)),
}


def _config(**kw) -> LlamaConfig:
  base = dict(vocab_size=96, intermediate_size=80, num_layers=2, max_position_embeddings=128,
              bos_token_id=1, eos_token_id=(2,), rms_norm_eps=1e-5, attention="xla")
  return LlamaConfig(**{**base, **kw})


def _hf_model(config: LlamaConfig, seed: int):
  torch.manual_seed(seed)
  hf_cfg = transformers.LlamaConfig(**config.to_hf())
  model = transformers.LlamaForCausalLM(hf_cfg).eval()
  with torch.no_grad():  # random norm scales so the norms are really compared
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1 + 0.1 * torch.randn_like(p))
  return model


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(tokens, np.int64))).logits.float().numpy()


@pytest.fixture(scope="module", params=sorted(CASES))
def hf_dir(request, tmp_path_factory):
  config = _config(**CASES[request.param])
  model = _hf_model(config, seed=len(request.param))
  path = str(tmp_path_factory.mktemp(request.param))
  model.save_pretrained(path)
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 40))
  return config, path, tokens, _hf_logits(model, tokens)


def test_logit_parity_with_transformers(hf_dir):
  config, path, tokens, want = hf_dir
  loaded, params = model_io.load(path, progress=False)
  assert dataclasses.replace(loaded, attention="xla") == config
  got = forward(dataclasses.replace(loaded, attention="xla"), params, jnp.asarray(tokens))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_rope_frequencies_match_transformers(hf_dir):
  config, path, *_ = hf_dir
  model = transformers.LlamaForCausalLM.from_pretrained(path)
  want = model.model.rotary_emb.inv_freq.numpy()
  np.testing.assert_allclose(  # float32 pow may differ from torch's in the last bit
      inv_frequencies(config.head_dim, config.rope_theta, config.rope_scaling), want, rtol=3e-7)


def test_save_hf_loads_in_transformers_and_round_trips(hf_dir, tmp_path):
  config, path, tokens, want = hf_dir
  loaded, params = model_io.load(path, progress=False)
  out = str(tmp_path / "saved")
  model_io.save_hf(out, loaded, params, dtype=jnp.float32, max_shard_bytes=20_000, progress=False)
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
  assert len([f for f in os.listdir(out) if f.endswith(".safetensors")]) > 1
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp dirs left
  model = transformers.LlamaForCausalLM.from_pretrained(out)
  np.testing.assert_allclose(_hf_logits(model, tokens), want, atol=1e-5, rtol=0)
  again_config, again = model_io.load(out, progress=False)
  assert again_config == loaded
  jax.tree.map(np.testing.assert_array_equal, again, params)


def test_bf16_save_load_is_bit_exact(tmp_path):
  config = _config(**CASES["gqa2_scaled_tied"])
  _, params = model_io.load(_save(_hf_model(config, 0), tmp_path / "a"), progress=False)
  model_io.save_hf(str(tmp_path / "b"), config, params, progress=False)  # bfloat16 default
  c16, p16 = model_io.load(str(tmp_path / "b"), dtype=jnp.bfloat16, progress=False)
  assert c16.param_dtype == "bfloat16"
  assert jax.tree.leaves(p16)[0].dtype == jnp.bfloat16
  model_io.save_hf(str(tmp_path / "c"), c16, p16, progress=False)
  _, p16b = model_io.load(str(tmp_path / "c"), dtype=jnp.bfloat16, progress=False)
  jax.tree.map(np.testing.assert_array_equal, p16b, p16)
  with open(tmp_path / "b" / "config.json") as f:
    assert json.load(f)["torch_dtype"] == "bfloat16"


def _save(model, path) -> str:
  model.save_pretrained(str(path))
  return str(path)


def test_load_with_shardings_places_shards(tmp_path):
  config = _config(**CASES["gqa4_headdim_scaled"])
  path = _save(_hf_model(config, 1), tmp_path / "m")
  _, ref = model_io.load(path, progress=False)
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  P = jax.sharding.PartitionSpec

  def spec(x):  # shard the biggest axis over fsdp, layers over data when there are layers
    axes = [None] * x.ndim
    big = int(np.argmax(x.shape))
    if x.shape[big] % 4 == 0:
      axes[big] = "fsdp"
    if x.ndim == 3:
      axes[0] = "data"
    return jax.sharding.NamedSharding(mesh, P(*axes))

  shardings = jax.tree.map(spec, ref)
  _, params = model_io.load(path, shardings=shardings, progress=False)
  for got, want, s in zip(jax.tree.leaves(params), jax.tree.leaves(ref),
                          jax.tree.leaves(shardings)):
    assert got.sharding == s
    np.testing.assert_array_equal(got, want)


def test_name_mapping():
  assert hf.hf_to_param_name("model.layers.3.self_attn.q_proj.weight") == (
      ("layers", "attn", "q_proj", "kernel"), 3)
  assert hf.hf_to_param_name("model.embed_tokens.weight") == (("embed", "embedding"), None)
  assert hf.param_to_hf_names(("layers", "mlp_norm", "scale"), 2) == [
      "model.layers.0.post_attention_layernorm.weight",
      "model.layers.1.post_attention_layernorm.weight"]
  with pytest.raises(KeyError, match="model.layers.0.foo"):
    hf.hf_to_param_name("model.layers.0.foo.weight")


def test_bad_checkpoints_name_the_tensor(tmp_path):
  from safetensors.numpy import load_file, save_file
  config = _config(**CASES["mha_untied"])
  path = _save(_hf_model(config, 2), tmp_path / "m")
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  name = "model.layers.1.mlp.up_proj.weight"
  save_file({k: v for k, v in tensors.items() if k != name}, file, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=f"{name}.*missing"):
    model_io.load(path, progress=False)
  save_file({**tensors, name: tensors[name][:, :-1]}, file, metadata={"format": "pt"})
  with pytest.raises(ValueError, match=f"{name}.*model.safetensors.*shape"):
    model_io.load(path, progress=False)
  save_file({**tensors, "model.extra.weight": tensors[name]}, file, metadata={"format": "pt"})
  with pytest.raises(ValueError, match="model.extra.weight"):
    model_io.load(path, progress=False)
