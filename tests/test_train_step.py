"""Train step: sharded == single device, grad accumulation, loss (full and token-chunked),
document masking, optimizer, schedule, MFU."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swallow_jax import parallel
from swallow_jax.model import Llama, forward, init_params, param_logical_axes, presets
from swallow_jax.model.llama import head_kernel
from swallow_jax.train import loss as loss_lib
from swallow_jax.train import metrics as metrics_lib
from swallow_jax.train import optimizer as optimizer_lib
from swallow_jax.train import step as step_lib

CFG = presets.get("tiny_gqa", vocab_size=256, num_layers=2, hidden_size=32, intermediate_size=64,
                  num_heads=4, num_kv_heads=2, head_dim=8)
OPT = dict(peak_lr=1e-2, min_lr_ratio=0.1, warmup_steps=2, decay_steps=10, clip_norm=1.0)


def make_batch(rng: np.random.Generator, b: int = 8, t: int = 16) -> dict[str, np.ndarray]:
  """Two packed documents per row plus padding at the end, SFT-like fractional weights."""
  inputs = rng.integers(0, CFG.vocab_size, (b, t)).astype(np.int32)
  cut, pad = t // 2 - 1, t - 3
  seg = np.where(np.arange(t) < cut, 1, 2).astype(np.int32)
  seg[pad:] = 0
  pos = np.where(np.arange(t) < cut, np.arange(t), np.arange(t) - cut).astype(np.int32)
  weights = (seg > 0).astype(np.float32) * rng.choice([0.0, 1.0], (b, t), p=[0.2, 0.8])
  return {"inputs": inputs, "targets": np.roll(inputs, -1, axis=1),
          "positions": np.broadcast_to(pos, (b, t)).copy(),
          "segment_ids": np.broadcast_to(seg, (b, t)).copy(), "loss_weights": weights}


def run_steps(mesh_cfg, batches, *, accum=1, z_loss=1e-4, cfg=CFG, **step_kwargs):
  """Runs len(batches) jitted steps on `mesh_cfg`; returns (final params as numpy, metrics)."""
  sizes = list(mesh_cfg.values())
  mesh = parallel.make_mesh(mesh_cfg, None if -1 in sizes else jax.devices()[:np.prod(sizes)])
  tx, lr = optimizer_lib.make_optimizer(OPT)
  with parallel.mesh_context(mesh):
    abstract = jax.eval_shape(lambda: step_lib.init_state(cfg, tx, 0))
    param_sh = parallel.param_shardings(abstract["params"], param_logical_axes(cfg), mesh)
    shardings = step_lib.state_shardings(abstract, tx, param_sh, mesh)
    state = step_lib.jit_init(cfg, tx, 0, shardings)()
    fn = step_lib.jit_train_step(
        step_lib.make_train_step(cfg, tx, lr, z_loss=z_loss, grad_accum_steps=accum,
                                 param_shardings=param_sh, **step_kwargs), shardings, mesh)
    bsh = parallel.batch_sharding(mesh)
    out = []
    for b in batches:
      state, m = fn(state, {k: jax.device_put(v, bsh) for k, v in b.items()})
      out.append(jax.device_get(m))
    assert state["params"]["layers"]["mlp"]["up_proj"]["kernel"].sharding.spec == \
        param_sh["layers"]["mlp"]["up_proj"]["kernel"].spec
    return jax.device_get(state["params"]), out


@pytest.fixture(scope="module")
def reference():
  batches = [make_batch(np.random.default_rng(i)) for i in range(3)]
  return batches, run_steps(dict(data=1, fsdp=1, tensor=1), batches)


@pytest.mark.parametrize("mesh_cfg", [dict(data=1, fsdp=8, tensor=1), dict(data=2, fsdp=2, tensor=2),
                                      dict(data=1, fsdp=-1, tensor=4)])
def test_sharded_step_matches_single_device(reference, mesh_cfg):
  batches, (ref_params, ref_metrics) = reference
  params, metrics = run_steps(mesh_cfg, batches)
  for m, r in zip(metrics, ref_metrics):
    np.testing.assert_allclose(m["loss"], r["loss"], rtol=2e-6)
    np.testing.assert_allclose(m["grad_norm"], r["grad_norm"], rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params, ref_params)


def test_grad_accumulation_matches_full_batch(reference):
  batches, (ref_params, ref_metrics) = reference
  params, metrics = run_steps(dict(data=2, fsdp=2, tensor=1), batches, accum=2)
  for m, r in zip(metrics, ref_metrics):
    np.testing.assert_allclose(m["loss"], r["loss"], rtol=2e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params, ref_params)


def test_metrics_are_the_objective_parts(reference):
  batches, (_, ref_metrics) = reference
  m = ref_metrics[0]
  assert m["loss_tokens"] == pytest.approx(batches[0]["loss_weights"].sum())
  assert m["lr"] == 0.0 and ref_metrics[1]["lr"] == pytest.approx(5e-3)
  assert abs(m["loss"] - np.log(CFG.vocab_size)) < 0.5  # Near-uniform predictions at init.
  assert m["z_loss"] == pytest.approx(1e-4 * np.log(CFG.vocab_size) ** 2, rel=0.2)


def test_weighted_cross_entropy_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
  targets = rng.integers(0, 7, (2, 5))
  w = rng.random((2, 5)).astype(np.float32)
  ce, z = loss_lib.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(w),
                                          z_loss=1e-4)
  x = logits.astype(np.float64)
  lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
  ref_ce = (w * (lse - np.take_along_axis(x, targets[..., None], -1)[..., 0])).sum()
  np.testing.assert_allclose(ce, ref_ce, rtol=1e-6)
  np.testing.assert_allclose(z, (w * 1e-4 * lse**2).sum(), rtol=1e-6)


@pytest.mark.parametrize("chunk", [4, 7, 64])  # 7: padded last chunk; 64: one chunk > T
def test_chunked_cross_entropy_matches_full_logits(chunk):
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(3, 20, 16)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(16, 50)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 50, (3, 20)), jnp.int32)
  w = jnp.asarray(rng.random((3, 20)), jnp.float32)

  def full(h, k):
    return loss_lib.weighted_cross_entropy(h @ k, targets, w, z_loss=1e-2)

  def chunked(h, k):
    return loss_lib.chunked_cross_entropy(h, k, targets, w, z_loss=1e-2, chunk_size=chunk)

  np.testing.assert_allclose(jax.jit(chunked)(hidden, kernel), full(hidden, kernel), rtol=1e-6)
  total = lambda f: jax.grad(lambda h, k: sum(f(h, k)), argnums=(0, 1))
  for got, want in zip(jax.jit(total(chunked))(hidden, kernel), total(full)(hidden, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_loss_gradients_match_full_logits(tied):
  """Every parameter's gradient, model included (tied: the embedding gets both paths' grads)."""
  cfg = dataclasses.replace(CFG, tie_word_embeddings=tied)
  params = init_params(cfg, jax.random.key(0))
  b = make_batch(np.random.default_rng(0))
  model = Llama(cfg)

  def full(p):
    logits = model.apply({"params": p}, b["inputs"], b["positions"], b["segment_ids"])
    return sum(loss_lib.weighted_cross_entropy(logits, b["targets"], b["loss_weights"], 1e-4))

  def chunked(p):
    hidden = model.apply({"params": p}, b["inputs"], b["positions"], b["segment_ids"],
                         return_hidden=True)
    return sum(loss_lib.chunked_cross_entropy(hidden, head_kernel(cfg, p), b["targets"],
                                              b["loss_weights"], 1e-4, chunk_size=5))

  want, want_grads = jax.jit(jax.value_and_grad(full))(params)
  got, grads = jax.jit(jax.value_and_grad(chunked))(params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  jax.tree.map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6), grads,
               want_grads)


@pytest.mark.parametrize("tied,mesh_cfg,accum", [
    (False, dict(data=2, fsdp=2, tensor=2), 2),
    (True, dict(data=1, fsdp=8, tensor=1), 1)])
def test_chunked_loss_step_matches_full_logits(reference, tied, mesh_cfg, accum):
  """Sharded chunked steps (vocab split over 'tensor', grad accumulation) == one-device full."""
  batches, ref = reference
  cfg = dataclasses.replace(CFG, tie_word_embeddings=tied)
  ref_params, ref_metrics = run_steps(dict(data=1, fsdp=1, tensor=1), batches, cfg=cfg) if tied \
      else ref
  params, metrics = run_steps(mesh_cfg, batches, accum=accum, cfg=cfg, loss_chunk_size=6)
  for m, r in zip(metrics, ref_metrics):
    np.testing.assert_allclose(m["loss"], r["loss"], rtol=2e-6)
    np.testing.assert_allclose(m["z_loss"], r["z_loss"], rtol=2e-6)
    np.testing.assert_allclose(m["grad_norm"], r["grad_norm"], rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params, ref_params)


def test_chunked_loss_step_keeps_far_fewer_temporaries():
  """V = 32k, T = 512: full logits are 67 MB per fp32 copy and the plain step keeps ~3 of them
  (208 MB of temporaries measured with jax 0.10.2); chunks of 128 positions: 58 MB."""
  cfg = dataclasses.replace(CFG, vocab_size=32768, num_layers=1)
  tx, lr = optimizer_lib.make_optimizer(OPT)
  state = jax.eval_shape(lambda: step_lib.init_state(cfg, tx, 0))
  batch = {k: jax.ShapeDtypeStruct((1, 512), jnp.float32 if k == "loss_weights" else jnp.int32)
           for k in step_lib.BATCH_KEYS}
  temp = {c: jax.jit(step_lib.make_train_step(cfg, tx, lr, z_loss=1e-4, loss_chunk_size=c))
          .lower(state, batch).compile().memory_analysis().temp_size_in_bytes for c in (0, 128)}
  logits_bytes = 512 * 32768 * 4
  assert temp[0] > 2 * logits_bytes
  assert temp[128] * 2 < temp[0]


def test_document_masking_off_is_plain_causal_over_the_packed_row():
  b = make_batch(np.random.default_rng(4))
  tx, lr = optimizer_lib.make_optimizer(OPT)
  state = jax.jit(lambda: step_lib.init_state(CFG, tx, 0))()
  params = state["params"]

  def direct(logits):  # The step's "loss" metric: computed before its update.
    ce, _ = loss_lib.weighted_cross_entropy(logits, b["targets"], b["loss_weights"])
    return ce / b["loss_weights"].sum()

  masked = direct(forward(CFG, params, b["inputs"], b["positions"], b["segment_ids"]))
  causal = direct(forward(CFG, params, b["inputs"]))
  assert abs(masked - causal) > 1e-3  # Two documents per row: the masks really differ.
  for masking, want in ((True, masked), (False, causal)):
    fn = jax.jit(step_lib.make_train_step(CFG, tx, lr, document_masking=masking))
    np.testing.assert_allclose(fn(state, b)[1]["loss"], want, rtol=1e-6)
  # Unpacked rows without positions/segment ids (as the benchmarks build them), accumulated.
  unpacked = {**b, "positions": None, "segment_ids": None}
  fn = jax.jit(step_lib.make_train_step(CFG, tx, lr, grad_accum_steps=2))
  np.testing.assert_allclose(fn(state, unpacked)[1]["loss"], causal, rtol=1e-6)


def test_schedule_and_no_decay_on_norms():
  lr = optimizer_lib.schedule(dict(peak_lr=2.5e-5, min_lr_ratio=0.1, warmup_steps=1000,
                                   decay_steps=12500))
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(500)), 1.25e-5, rtol=1e-6)
  np.testing.assert_allclose(float(lr(1000)), 2.5e-5, rtol=1e-6)
  np.testing.assert_allclose(float(lr(12500)), 2.5e-6, rtol=1e-6)
  np.testing.assert_allclose(float(lr(20000)), 2.5e-6, rtol=1e-6)
  mid = 1000 + 11500 // 2  # Half-way through the cosine: (peak + min) / 2.
  np.testing.assert_allclose(float(lr(mid)), (2.5e-5 + 2.5e-6) / 2, rtol=1e-5)

  params = {"attn_norm": {"scale": jnp.ones((2, 4))}, "q": {"kernel": jnp.ones((2, 4, 4))}}
  assert optimizer_lib.decay_mask(params) == {"attn_norm": {"scale": False}, "q": {"kernel": True}}
  tx, _ = optimizer_lib.make_optimizer(dict(peak_lr=1.0, warmup_steps=0, decay_steps=10,
                                            weight_decay=0.1, clip_norm=1.0))
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  assert float(jnp.abs(updates["attn_norm"]["scale"]).max()) == 0.0  # Zero grad, no decay.
  np.testing.assert_allclose(updates["q"]["kernel"], -0.1)  # lr * wd * w.


def test_neftune_noise_only_when_enabled():
  rng = np.random.default_rng(0)
  b = make_batch(rng)
  tx, lr = optimizer_lib.make_optimizer(OPT)
  state = jax.jit(lambda: step_lib.init_state(CFG, tx, 0))()
  loss = {}
  for alpha in (0.0, 5.0):
    fn = jax.jit(step_lib.make_train_step(CFG, tx, lr, neftune_alpha=alpha))
    loss[alpha] = [float(fn(state, b)[1]["loss"]) for _ in range(2)]
  assert loss[0.0][0] != loss[5.0][0]
  assert loss[5.0][0] == loss[5.0][1]  # Noise depends only on the saved RNG and the step.


def test_flops_per_token_llama3_8b():
  cfg = presets.get("llama3_8b")
  matmul = 32 * (4096 * (32 + 16) * 128 + 32 * 128 * 4096 + 3 * 4096 * 14336) + 4096 * 128256
  assert matmul == 7_504_658_432
  expected = 6 * matmul + 6 * 32 * 8192 * 32 * 128
  assert metrics_lib.flops_per_token(cfg, 8192) == expected
  # LoRA rank 16 on all seven projections: frozen weights 4 FLOPs per MAC pair, adapters 6;
  # q (4096 -> 4096), k/v (4096 -> 1024), o (4096 -> 4096), gate/up (4096 -> 14336), down back.
  from swallow_jax.model.lora import LoraConfig  # pylint: disable=g-import-not-at-top
  adapter = 32 * 16 * (2 * 8192 + 2 * 5120 + 3 * 18432)
  attention = 6 * 32 * 8192 * 32 * 128
  lora16 = LoraConfig(rank=16)
  assert metrics_lib.flops_per_token(cfg, 8192, lora16) == 4 * matmul + 6 * adapter + attention
  with_head = LoraConfig(rank=16, trainable=("lm_head",))
  assert metrics_lib.flops_per_token(cfg, 8192, with_head) == (
      4 * matmul + 2 * 4096 * 128256 + 6 * adapter + attention)
  assert metrics_lib.flops_per_token(cfg, 8192, LoraConfig(rank=0)) == expected
  assert metrics_lib.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
  assert metrics_lib.peak_flops_per_device("TPU v5 lite") == 197e12
  assert metrics_lib.peak_flops_per_device("TPU v5p") == 459e12
  assert metrics_lib.peak_flops_per_device("cpu") is None
  # 8 x H100 at 8,000 tokens/s/device: MFU = 8000 * flops / 989e12.
  np.testing.assert_allclose(metrics_lib.mfu(64000, expected, 8, 989e12),
                             8000 * expected / 989e12)
  assert metrics_lib.mfu(1000, expected, 8, None) is None
