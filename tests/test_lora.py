"""LoRA adapters: PEFT parity (exported, merged, PEFT-made), step 0, layouts, sharding, errors."""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from swallow_jax.model import LlamaConfig, forward, forward_with_cache, init_cache, unstack_layers  # noqa: E402
from swallow_jax.model import io as model_io  # noqa: E402
from swallow_jax.model.lora import (LoraConfig, init_lora, load_peft, lora_logical_axes,  # noqa: E402
                                    merge_lora, save_peft)
from swallow_jax.parallel import LOGICAL_AXIS_RULES, param_shardings  # noqa: E402

CONFIG = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=80, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
                     max_position_embeddings=128, bos_token_id=1, eos_token_id=(2,),
                     attention="xla")
LORA = LoraConfig(rank=4, alpha=8.0)
TOKENS = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 24))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """(HF model dir, our params) of one tiny random Llama."""
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG.to_hf())).eval()
  path = str(tmp_path_factory.mktemp("base"))
  model.save_pretrained(path)
  loaded, params = model_io.load(path, progress=False)
  assert dataclasses.replace(loaded, attention="xla") == CONFIG
  return path, params


def _random_adapter(seed=1):
  adapter = init_lora(CONFIG, LORA, jax.random.key(seed))
  keys = iter(jax.random.split(jax.random.key(seed + 100), 100))
  return jax.tree.map(lambda x: 0.3 * jax.random.normal(next(keys), x.shape), adapter)


def _peft_logits(model) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(TOKENS.astype(np.int64))).logits.float().numpy()


def _hf(path):
  return transformers.LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()


def test_exported_adapter_gives_peft_logits_and_merged_weights(base, tmp_path):
  path, params = base
  adapter = _random_adapter()
  out = str(tmp_path / "adapter")
  save_peft(out, CONFIG, adapter, LORA, base_model_name_or_path=path)
  with open(os.path.join(out, "adapter_config.json")) as f:
    meta = json.load(f)
  assert (meta["peft_type"], meta["r"], meta["lora_alpha"], meta["bias"]) == ("LORA", 4, 8.0, "none")
  model = peft.PeftModel.from_pretrained(_hf(path), out).eval()
  ours = forward(CONFIG, params, jnp.asarray(TOKENS), lora=adapter, lora_cfg=LORA)
  np.testing.assert_allclose(ours, _peft_logits(model), atol=1e-4, rtol=0)
  assert np.abs(ours - forward(CONFIG, params, jnp.asarray(TOKENS))).max() > 1e-2  # B matters
  # (b) merged kernels = PEFT's merge_and_unload weights (transposed).
  merged = merge_lora(CONFIG, params, adapter, LORA)
  state = model.merge_and_unload().state_dict()
  for i in range(CONFIG.num_layers):
    for ours_parent, hf_parent, name in (("attn", "self_attn", "q_proj"), ("attn", "self_attn", "o_proj"),
                                         ("mlp", "mlp", "down_proj")):
      want = state[f"model.layers.{i}.{hf_parent}.{name}.weight"].numpy().T
      np.testing.assert_allclose(merged["layers"][ours_parent][name]["kernel"][i], want, atol=1e-6)
  np.testing.assert_allclose(forward(CONFIG, merged, jnp.asarray(TOKENS)), ours, atol=1e-4)
  with pytest.raises(FileExistsError):
    save_peft(out, CONFIG, adapter, LORA)


def test_peft_made_adapter_loads_and_matches(base, tmp_path):
  path, params = base
  cfg = peft.LoraConfig(r=3, lora_alpha=5, lora_dropout=0.0, init_lora_weights=False,
                        target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                        task_type="CAUSAL_LM")
  model = peft.get_peft_model(_hf(path), cfg).eval()
  model.save_pretrained(str(tmp_path / "p"))
  adapter, lora_cfg = load_peft(str(tmp_path / "p"), CONFIG)
  assert lora_cfg == LoraConfig(rank=3, alpha=5.0, targets=("q_proj", "v_proj", "up_proj",
                                                            "down_proj"))
  got = forward(CONFIG, params, jnp.asarray(TOKENS), lora=adapter, lora_cfg=lora_cfg)
  np.testing.assert_allclose(got, _peft_logits(model), atol=1e-4, rtol=0)


def test_peft_files_we_do_not_support_are_refused(tmp_path):
  adapter = _random_adapter()
  save_peft(str(tmp_path / "a"), CONFIG, adapter, LORA)
  file = tmp_path / "a" / "adapter_config.json"
  good = json.loads(file.read_text())
  for key, value in (("use_dora", True), ("rank_pattern", {"q_proj": 8}), ("bias", "all"),
                     ("modules_to_save", ["lm_head"]), ("target_modules", "q_proj|v_proj")):
    file.write_text(json.dumps({**good, key: value}))
    with pytest.raises(ValueError, match=key):
      load_peft(str(tmp_path / "a"), CONFIG)
  file.write_text(json.dumps(good))
  with pytest.raises(ValueError, match="expected"):  # another model's shapes
    load_peft(str(tmp_path / "a"), dataclasses.replace(CONFIG, hidden_size=32))
  adapter2, cfg2 = load_peft(str(tmp_path / "a"), CONFIG)
  assert cfg2 == LORA
  jax.tree.map(np.testing.assert_array_equal, adapter2, adapter)


def test_rslora_scale_and_config_from_dict():
  assert LoraConfig(rank=4, alpha=8.0, rslora=True).scale == 4.0
  assert LoraConfig.from_dict({"rank": 2, "alpha": 4.0}).scale == 2.0
  with pytest.raises(ValueError, match="rank_"):
    LoraConfig.from_dict({"rank_": 2})
  with pytest.raises(ValueError, match="targets"):
    LoraConfig(rank=2, targets=("lm_head",))


def test_init_is_base_model_bit_for_bit_and_shapes(base):
  _, params = base
  adapter = init_lora(CONFIG, LORA, jax.random.key(0))
  q = adapter["layers"]["attn"]["q_proj"]
  assert q["lora_a"].shape == (2, 64, 4) and q["lora_b"].shape == (2, 4, 64)
  assert q["lora_a"].dtype == jnp.float32 and not np.any(q["lora_b"])
  assert float(jnp.abs(q["lora_a"]).max()) <= 1 / 8 and float(jnp.abs(q["lora_a"]).max()) > 0.1
  assert adapter["layers"]["mlp"]["down_proj"]["lora_a"].shape == (2, 80, 4)
  np.testing.assert_array_equal(
      forward(CONFIG, params, jnp.asarray(TOKENS), lora=adapter, lora_cfg=LORA),
      forward(CONFIG, params, jnp.asarray(TOKENS)))
  with pytest.raises(ValueError, match="lora_cfg"):
    forward(CONFIG, params, jnp.asarray(TOKENS), lora=adapter)


def test_bf16_base_with_fp32_adapter_and_gradients_only_for_the_adapter(base):
  _, params = base
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  cfg = dataclasses.replace(CONFIG, param_dtype="bfloat16", dtype="bfloat16")
  adapter = _random_adapter()
  logits = forward(cfg, bf16, jnp.asarray(TOKENS), lora=adapter, lora_cfg=LORA)
  want = forward(CONFIG, params, jnp.asarray(TOKENS), lora=adapter, lora_cfg=LORA)
  assert float(jnp.abs(logits - want).max()) < 0.3
  loss = lambda a: jnp.mean(forward(cfg, bf16, jnp.asarray(TOKENS), lora=a, lora_cfg=LORA))
  grads = jax.grad(loss)(adapter)
  assert jax.tree.structure(grads) == jax.tree.structure(adapter)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def test_dropout_only_with_an_rng(base):
  _, params = base
  adapter = _random_adapter()
  drop = dataclasses.replace(LORA, dropout=0.5)
  plain = forward(CONFIG, params, jnp.asarray(TOKENS), lora=adapter, lora_cfg=LORA)
  np.testing.assert_array_equal(
      forward(CONFIG, params, jnp.asarray(TOKENS), lora=adapter, lora_cfg=drop), plain)
  noisy = forward(CONFIG, params, jnp.asarray(TOKENS), lora=adapter, lora_cfg=drop,
                  lora_rng=jax.random.key(5))
  assert float(jnp.abs(noisy - plain).max()) > 1e-3


def test_scanned_and_per_layer_layouts_agree(base):
  _, params = base
  adapter = _random_adapter()
  tokens = jnp.asarray(TOKENS)
  want = forward(CONFIG, params, tokens, lora=adapter, lora_cfg=LORA)
  per_layer, per_adapter = unstack_layers(params), unstack_layers(adapter)
  np.testing.assert_allclose(forward(CONFIG, per_layer, tokens, lora=per_adapter, lora_cfg=LORA),
                             want, atol=1e-5)
  cache = init_cache(CONFIG, 2, 24, per_layer=True)
  pos = jnp.broadcast_to(jnp.arange(24), (2, 24))
  logits, _ = forward_with_cache(CONFIG, per_layer, tokens, pos, jnp.ones((2, 24), jnp.int32),
                                 cache, 0, lora=per_adapter, lora_cfg=LORA)
  np.testing.assert_allclose(logits, want, atol=1e-5)
  merged = merge_lora(CONFIG, per_layer, per_adapter, LORA)
  np.testing.assert_allclose(forward(CONFIG, merged, tokens), want, atol=1e-4)


def test_sharded_on_eight_devices_with_the_layers_axes(base):
  _, params = base
  mesh = jax.make_mesh((1, 2, 4), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  axes = lora_logical_axes(CONFIG, LORA)
  assert axes["layers"]["attn"]["q_proj"] == {"lora_a": ("layers", "embed", None),
                                              "lora_b": ("layers", None, "heads")}
  shapes = jax.eval_shape(lambda k: init_lora(CONFIG, LORA, k), jax.random.key(0))
  shardings = param_shardings(shapes, axes, mesh)
  adapter = jax.device_put(_random_adapter(), shardings)
  spec = adapter["layers"]["mlp"]["up_proj"]["lora_b"].sharding.spec
  assert tuple(spec) == (None, None, "tensor")
  want = forward(CONFIG, params, jnp.asarray(TOKENS), lora=_random_adapter(), lora_cfg=LORA)
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
    got = forward(CONFIG, params, jnp.asarray(TOKENS), lora=adapter, lora_cfg=LORA)
  np.testing.assert_allclose(got, want, atol=1e-5)
