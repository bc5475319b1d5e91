"""Model core: config validation, presets, shapes, logical axes, masking, backends, cache, remat."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swallow_jax.model import (Llama, LlamaConfig, RopeScaling, forward, forward_with_cache,
                               init_cache, init_params, is_per_layer, param_logical_axes, presets,
                               unstack_layers)
from swallow_jax.model.llama import head_kernel

TINY = presets.get("tiny_gqa")


@pytest.fixture(scope="module")
def params():
  return init_params(TINY, jax.random.key(0))


def _tokens(b, t, seed=0, vocab=TINY.vocab_size):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, vocab, jnp.int32)


def test_presets_match_published_sizes():
  assert abs(presets.get("llama3_8b").num_params - 8.03e9) < 0.01e9
  assert abs(presets.get("llama3_70b").num_params - 70.55e9) < 0.01e9
  assert abs(presets.get("llama3_2_1b").num_params - 1.236e9) < 0.001e9
  c = presets.get("llama3_1_8b")
  assert c.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)
  assert presets.get("llama3_2_1b").rope_scaling.factor == 32.0
  assert presets.get("llama3_2_1b").tie_word_embeddings
  hash(c)  # jit static arg
  with pytest.raises(ValueError, match="unknown model preset"):
    presets.get("llama9")


@pytest.mark.parametrize("field,value", [("num_kv_heads", 3), ("hidden_size", 0),
                                         ("dtype", "float8"), ("remat_policy", "some"),
                                         ("attention", "flash"), ("head_dim", 15)])
def test_bad_config_names_field(field, value):
  with pytest.raises(ValueError, match=field):
    dataclasses.replace(TINY, **{field: value})


def test_hf_config_round_trip():
  for name in ("llama3_8b", "llama3_1_70b", "llama3_2_1b", "tiny_gqa"):
    c = presets.get(name)
    assert LlamaConfig.from_hf(c.to_hf()) == c
  d = presets.get("llama3_1_8b").to_hf()
  d.pop("head_dim")
  d["rope_scaling"] = {"type": "llama3", **{k: v for k, v in d["rope_scaling"].items()
                                           if k != "rope_type"}}
  assert LlamaConfig.from_hf(d) == presets.get("llama3_1_8b")
  # transformers 5 layout: theta inside rope_parameters.
  d5 = presets.get("llama3_8b").to_hf()
  d5.pop("rope_theta")
  d5.pop("rope_scaling")
  d5["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
  assert LlamaConfig.from_hf(d5) == presets.get("llama3_8b")
  with pytest.raises(ValueError, match="rope_scaling"):
    LlamaConfig.from_hf({**d, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
  with pytest.raises(ValueError, match="num_hidden_layers"):
    LlamaConfig.from_hf({k: v for k, v in d.items() if k != "num_hidden_layers"})


def test_param_tree_and_logical_axes(params):
  axes = param_logical_axes(TINY)
  is_axes = lambda x: isinstance(x, tuple)
  shapes = jax.tree.map(lambda x: x.shape, params)
  assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(params)
  jax.tree.map(lambda a, s: None if len(a) == len(s) else pytest.fail(f"{a} vs {s}"), axes,
               shapes, is_leaf=is_axes)
  L, D, H, KV, Dh, F, V = 2, 64, 4, 2, 16, 128, 512
  assert shapes["layers"]["attn"]["q_proj"]["kernel"] == (L, D, H * Dh)
  assert shapes["layers"]["attn"]["k_proj"]["kernel"] == (L, D, KV * Dh)
  assert shapes["layers"]["mlp"]["down_proj"]["kernel"] == (L, F, D)
  assert shapes["lm_head"]["kernel"] == (D, V)
  assert axes["layers"]["attn"]["q_proj"]["kernel"] == ("layers", "embed", "heads")
  assert axes["embed"]["embedding"] == ("vocab", "embed")
  tied = init_params(dataclasses.replace(TINY, tie_word_embeddings=True), jax.random.key(0))
  assert "lm_head" not in tied


@pytest.mark.parametrize("t", [8, 128])  # 128: plain-causal attention in 2 key-skipping blocks
def test_forward_runs_without_mesh_and_on_a_logical_mesh(params, t):
  tokens = _tokens(2, t)
  logits = forward(TINY, params, tokens)
  assert logits.shape == (2, t, TINY.vocab_size) and logits.dtype == jnp.float32
  mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("act_heads", None))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    sharded = jax.jit(lambda p, t: Llama(TINY).apply({"params": p}, t))(params, tokens)
  np.testing.assert_allclose(sharded, logits, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_return_hidden_times_head_kernel_is_the_logits(tied):
  cfg = dataclasses.replace(TINY, tie_word_embeddings=tied)
  p = init_params(cfg, jax.random.key(1))
  tokens = _tokens(2, 8)
  hidden = Llama(cfg).apply({"params": p}, tokens, return_hidden=True)
  assert hidden.shape == (2, 8, cfg.hidden_size) and hidden.dtype == jnp.float32
  np.testing.assert_allclose(hidden @ head_kernel(cfg, p), forward(cfg, p, tokens), atol=1e-5)
  with pytest.raises(ValueError, match="return_hidden"):
    Llama(cfg).apply({"params": p}, tokens, cache=init_cache(cfg, 2, 8), return_hidden=True)


def _pack(docs, length):
  """Packs token lists into one row: (tokens, positions, segment_ids), padding = segment 0."""
  tokens, positions, segments = [], [], []
  for i, d in enumerate(docs):
    tokens += list(d)
    positions += list(range(len(d)))
    segments += [i + 1] * len(d)
  pad = length - len(tokens)
  row = lambda xs: jnp.asarray([xs + [0] * pad], jnp.int32)
  return row(tokens), row(positions), row(segments)


def _docs():
  rng = np.random.default_rng(1)
  return [list(rng.integers(0, TINY.vocab_size, n)) for n in (5, 7, 4)]


def test_packed_documents_equal_documents_alone(params):
  docs = _docs()
  tokens, positions, segments = _pack(docs, 20)
  packed = forward(TINY, params, tokens, positions, segments)
  width = max(map(len, docs))  # each document alone in its own row (right padding is invisible)
  alone = forward(TINY, params, jnp.asarray([d + [0] * (width - len(d)) for d in docs], jnp.int32))
  start = 0
  for i, d in enumerate(docs):
    np.testing.assert_allclose(packed[0, start:start + len(d)], alone[i, :len(d)], atol=1e-5)
    start += len(d)


@pytest.mark.parametrize("backend", ["xla", "dot_product", "auto"])
def test_backends_match_reference_on_packed_batches(params, backend):
  """Every CPU-runnable backend gives the spec's (`reference`) logits and parameter gradients, on
  packed batches and on plain-causal ones (where `xla` skips the blocks above the diagonal)."""
  spec = dataclasses.replace(TINY, attention="reference")
  cfg = dataclasses.replace(TINY, attention=backend)
  loss = lambda c, *batch: lambda p: jnp.sum(jnp.sin(forward(c, p, *batch)))
  for batch in (_pack(_docs(), 20), (_tokens(2, 9),)):
    np.testing.assert_allclose(forward(cfg, params, *batch), forward(spec, params, *batch),
                               atol=1e-5)
    got, want = (jax.grad(loss(c, *batch))(params) for c in (cfg, spec))
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-4), got, want)


@pytest.mark.parametrize("t,blocks", [(9, 1), (128, 2), (256, 4), (512, 8), (520, 8)])
def test_causal_block_skipping_equals_masked_reference(t, blocks):
  """Plain-causal attention skips the key blocks above the diagonal; outputs and gradients must
  equal the spec's (`reference_attention`), as must the fully masked `xla_attention` (GQA 4:2,
  odd T falls back to one block)."""
  from swallow_jax.model.attention import (causal_blocks, causal_xla_attention, make_mask,
                                           reference_attention, xla_attention)
  assert causal_blocks(t) == blocks
  q, k, v = (jax.random.normal(key, (2, t, n, 16)) for key, n in
             zip(jax.random.split(jax.random.key(t), 3), (4, 2, 2)))
  pos = jnp.broadcast_to(jnp.arange(t), (2, t))
  seg = jnp.ones((2, t), jnp.int32)
  ref_fn = lambda q, k, v: reference_attention(q, k, v, make_mask(pos, seg, pos, seg))
  masked_fn = lambda q, k, v: xla_attention(q, k, v, make_mask(pos, seg, pos, seg))
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  want = jax.grad(loss(ref_fn), argnums=(0, 1, 2))(q, k, v)
  for fn in (causal_xla_attention, masked_fn):
    np.testing.assert_allclose(fn(q, k, v), ref_fn(q, k, v), atol=1e-5)
    got = jax.grad(loss(fn), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.parametrize("platform,dtype,with_cache,want", [
    ("gpu", jnp.bfloat16, False, "cudnn"), ("gpu", jnp.float32, False, "dot_product"),
    ("gpu", jnp.bfloat16, True, "xla"), ("tpu", jnp.bfloat16, False, "splash"),
    ("tpu", jnp.bfloat16, True, "xla"), ("cpu", jnp.bfloat16, False, "xla")])
def test_auto_backend_per_platform(monkeypatch, platform, dtype, with_cache, want):
  from swallow_jax.model import attention as attn
  monkeypatch.setattr(attn.jax, "default_backend", lambda: platform)
  q = jnp.zeros((1, 128, 4, 64), dtype)
  assert attn.resolve_backend("auto", q, with_cache) == want
  for explicit in ("reference", "xla", "dot_product"):
    assert attn.resolve_backend(explicit, q, with_cache) == explicit


def test_token_matmul_equals_einsum():
  from swallow_jax.model.llama import token_matmul
  x = jax.random.normal(jax.random.key(0), (2, 3, 5))
  w = jax.random.normal(jax.random.key(1), (5, 7))
  np.testing.assert_allclose(token_matmul(x, w), jnp.einsum("btd,df->btf", x, w), atol=1e-6)
  np.testing.assert_allclose(token_matmul(x, w.T, contract=1), jnp.einsum("btd,df->btf", x, w),
                             atol=1e-6)
  out = token_matmul(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                     preferred_element_type=jnp.float32)
  assert out.shape == (2, 3, 7) and out.dtype == jnp.float32


def test_gpu_tpu_backends_fail_clearly_on_cpu(params):
  for backend in ("cudnn", "splash"):
    with pytest.raises(ValueError, match=f"attention='{backend}' needs"):
      forward(dataclasses.replace(TINY, attention=backend), params, _tokens(1, 128))


def test_splash_kernel_matches_reference_in_interpret_mode():
  """The TPU kernel's logic (mask, segments, GQA, per-shard shard_map) checked on CPU."""
  from swallow_jax.model.attention import attention
  b, t, h, kv, dh = 2, 128, 4, 2, 64
  q, k, v = (jax.random.normal(key, (b, t, n, dh)) for key, n in
             zip(jax.random.split(jax.random.key(0), 3), (h, kv, kv)))
  segments = jnp.asarray([[1] * 50 + [2] * 78, [1] * 100 + [0] * 28], jnp.int32)
  positions = jnp.asarray([list(range(50)) + list(range(78)), list(range(100)) + [0] * 28])
  ref = attention(q, k, v, positions, segments, positions, segments, backend="xla")
  mesh = jax.make_mesh((2, 2), ("data", "tensor"), devices=jax.devices()[:4],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rules = (("batch", "data"), ("act_heads", "tensor"), ("act_kv_heads", "tensor"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = jax.jit(lambda *a: attention(*a, backend="splash", splash_interpret=True))(
        q, k, v, positions, segments, positions, segments)
  real = segments != 0
  np.testing.assert_allclose(out[real], ref[real], atol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "reference"])  # xla reads the cache in place
def test_cache_prefill_and_decode_match_full_forward_left_padded(params, backend):
  cfg = dataclasses.replace(TINY, attention=backend)
  rng = np.random.default_rng(2)
  prompts = [list(rng.integers(0, TINY.vocab_size, n)) for n in (5, 3)]
  continuation = [list(rng.integers(0, TINY.vocab_size, 3)) for _ in prompts]
  width = max(map(len, prompts))
  tokens = jnp.asarray([[0] * (width - len(p)) + p for p in prompts], jnp.int32)
  segments = jnp.asarray([[0] * (width - len(p)) + [1] * len(p) for p in prompts], jnp.int32)
  positions = jnp.asarray([[0] * (width - len(p)) + list(range(len(p))) for p in prompts],
                          jnp.int32)
  full = forward(TINY, params, jnp.asarray(  # unpadded sequences, right-padded to one width
      [p + c + [0] * (width - len(p)) for p, c in zip(prompts, continuation)], jnp.int32))
  # Both parameter layouts: stacked (scan) and per-layer (what generation decodes from).
  for layer_params, per_layer in ((params, False), (unstack_layers(params), True)):
    assert is_per_layer(layer_params) == per_layer
    cache = init_cache(TINY, batch=2, max_len=width + 3, per_layer=per_layer)
    logits, cache = forward_with_cache(cfg, layer_params, tokens, positions, segments, cache, 0)
    steps = [logits]
    for s in range(3):
      step_tokens = jnp.asarray([[c[s]] for c in continuation], jnp.int32)
      step_pos = jnp.asarray([[len(p) + s] for p in prompts], jnp.int32)
      logits, cache = forward_with_cache(cfg, layer_params, step_tokens, step_pos,
                                         jnp.ones((2, 1), jnp.int32), cache, width + s)
      steps.append(logits)
    for row, p in enumerate(prompts):
      got = jnp.concatenate([steps[0][row, width - len(p):]] + [s[row] for s in steps[1:]])
      np.testing.assert_allclose(got, full[row, :len(p) + 3], atol=1e-5)


def test_per_layer_params_give_the_same_logits_and_reject_a_mismatched_cache(params):
  per_layer = unstack_layers(params)
  assert set(per_layer) == {k for k in params if k != "layers"} | {
      f"layers_{i}" for i in range(TINY.num_layers)}
  np.testing.assert_array_equal(per_layer["layers_1"]["mlp"]["up_proj"]["kernel"],
                                params["layers"]["mlp"]["up_proj"]["kernel"][1])
  tokens, positions, segments = _pack(_docs(), 20)
  np.testing.assert_allclose(forward(TINY, per_layer, tokens, positions, segments),
                             forward(TINY, params, tokens, positions, segments), atol=1e-5)
  with pytest.raises(ValueError, match="per_layer=True"):
    forward_with_cache(TINY, per_layer, tokens, positions, segments,
                       init_cache(TINY, 1, 20), 0)
  stacked = jax.tree.map(jnp.copy, params)
  consumed = unstack_layers(stacked, consume=True)  # one stacked array at a time, then deleted
  assert all(a.is_deleted() for a in jax.tree.leaves(stacked["layers"]))
  jax.tree.map(np.testing.assert_array_equal, consumed, per_layer)


def test_remat_policies_and_unrolled_layers_give_same_logits_and_grads(params):
  tokens, positions, segments = _pack(_docs(), 20)

  def loss(cfg, p):
    logits = Llama(cfg).apply({"params": p}, tokens, positions, segments)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

  ref_loss, ref_grad = jax.jit(jax.value_and_grad(lambda p: loss(TINY, p)))(params)
  for policy, scan in (("qkv_proj", True), ("dots", False), ("dots_no_batch_attn_out", True)):
    cfg = dataclasses.replace(TINY, remat_policy=policy, scan_layers=scan)
    value, grad = jax.jit(jax.value_and_grad(lambda p: loss(cfg, p)))(params)
    np.testing.assert_allclose(value, ref_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grad, ref_grad)


def test_bf16_compute_runs_and_is_close(params):
  tokens = _tokens(2, 16)
  cfg = dataclasses.replace(TINY, dtype="bfloat16")
  logits = forward(cfg, params, tokens)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, forward(TINY, params, tokens), atol=0.05)
  bf16 = dataclasses.replace(cfg, param_dtype="bfloat16")
  shapes = jax.eval_shape(init_params, bf16, jax.random.key(1))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(shapes))


def test_neftune_noise_only_when_alpha_positive_and_not_on_padding(params):
  tokens, positions, segments = _pack(_docs(), 20)
  model = Llama(TINY)
  clean = forward(TINY, params, tokens, positions, segments)
  no_rng = jax.jit(lambda p: model.apply({"params": p}, tokens, positions, segments, 0.0))
  np.testing.assert_array_equal(no_rng(params), clean)  # alpha == 0 needs no 'neftune' rng
  noisy = jax.jit(lambda p, alpha: model.apply({"params": p}, tokens, positions, segments, alpha,
                                               rngs={"neftune": jax.random.key(3)}))(params, 5.0)
  assert float(jnp.abs(noisy - clean)[segments != 0].max()) > 1e-3
  pad = segments[0] == 0  # pads attend only to pads, and get no noise
  np.testing.assert_allclose(noisy[0, pad], clean[0, pad], atol=1e-6)


def test_remat_policy_names_and_public_api():
  from swallow_jax.model import config as config_lib
  from swallow_jax.model import llama
  import swallow_jax as sj
  assert set(config_lib.REMAT_POLICIES) == {"none", *llama.REMAT_POLICIES}
  assert sj.forward is forward and sj.LlamaConfig is LlamaConfig and callable(sj.load_hf)
