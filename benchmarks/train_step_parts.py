"""Where a CPU training step spends its time: swallow_jax vs transformers, part by part.

    python benchmarks/train_step_parts.py [--shape=bench] [--batch=4] [--seq_len=512] [--repeats=5]

The same Llama-3-shaped model and batch as benchmarks/train_step_bench.py, cut into the parts a
step is made of; each part is timed forward+backward (or one update) in both libraries on the same
float32 inputs, best of --repeats after a warm-up, alternating sides:

  mlp         SwiGLU MLP: swallow_jax.model.llama.MLP vs transformers' LlamaMLP
  attention   attention core under the causal mask (no projections): swallow_jax's `attention`
              (backend xla, plain causal = key blocks above the diagonal skipped) and the masked
              reference `xla_attention` vs torch scaled_dot_product_attention(is_causal, GQA)
  block       one decoder layer: swallow_jax Block vs LlamaDecoderLayer (RoPE included)
  head_loss   final projection + token cross-entropy: LMHead + weighted_cross_entropy vs
              nn.Linear + F.cross_entropy
  loss        cross-entropy alone on given logits
  optimizer   global-norm clipping + AdamW update of all parameters (optax vs torch foreach)

Prints one JSON object: per part the seconds of each side and `torch_over_jax` (> 1: swallow_jax
is faster). The full step is train_step_bench.py's job; the parts do not add up to it exactly
(the step also embeds tokens, and runs the layers inside a scan).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step_bench  # pylint: disable=g-import-not-at-top,wrong-import-position


def _best(fn: Callable[[], Any], repeats: int) -> float:
  fn()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def _jax_parts(cfg, batch: int, seq_len: int) -> dict[str, Callable[[], Any]]:
  """Each part as a zero-argument call that runs the jitted computation to completion."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from swallow_jax.model import attention as attn  # pylint: disable=g-import-not-at-top
  from swallow_jax.model import llama  # pylint: disable=g-import-not-at-top
  from swallow_jax.train import loss as loss_lib  # pylint: disable=g-import-not-at-top
  from swallow_jax.train import optimizer  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  b, t, d = batch, seq_len, cfg.hidden_size
  h, kv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  x = jnp.asarray(rng.standard_normal((b, t, d), np.float32))
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  seg = jnp.ones((b, t), jnp.int32)
  targets = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, t)), jnp.int32)
  weights = jnp.ones((b, t), jnp.float32)
  run = lambda f, *a: (lambda: jax.block_until_ready(f(*a)))
  sq = lambda y: jnp.sum(y * y)

  mlp = llama.MLP(cfg)
  p_mlp = mlp.init(jax.random.key(0), x)
  mlp_grad = jax.jit(jax.grad(lambda p, x: sq(mlp.apply(p, x)), argnums=(0, 1)))

  block = llama.Block(cfg)
  mask = llama.Mask(pos, seg, pos, seg, plain_causal=True)
  p_block = block.init(jax.random.key(0), x, None, mask)
  block_grad = jax.jit(jax.grad(
      lambda p, x: sq(block.apply(p, x, None, mask)[0]), argnums=(0, 1)))

  q = jnp.asarray(rng.standard_normal((b, t, h, dh), np.float32))
  k, v = (jnp.asarray(rng.standard_normal((b, t, kv, dh), np.float32)) for _ in range(2))
  causal = lambda q, k, v: attn.attention(q, k, v, pos, seg, pos, seg, backend="xla",
                                          plain_causal=True)
  masked = lambda q, k, v: attn.xla_attention(q, k, v, attn.make_mask(pos, seg, pos, seg))
  attn_grad = lambda f: jax.jit(jax.grad(lambda *a: sq(f(*a)), argnums=(0, 1, 2)))

  head = llama.LMHead(cfg)
  p_head = head.init(jax.random.key(0), x)
  head_grad = jax.jit(jax.grad(
      lambda p, x: loss_lib.weighted_cross_entropy(head.apply(p, x), targets, weights)[0],
      argnums=(0, 1)))
  logits = jnp.asarray(rng.standard_normal((b, t, cfg.vocab_size), np.float32))
  ce_grad = jax.jit(jax.grad(lambda l: loss_lib.weighted_cross_entropy(l, targets, weights)[0]))

  params = llama.init_params(cfg, jax.random.key(0))
  tx, _ = optimizer.make_optimizer(train_step_bench.OPT)
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda a: a * 1e-3, params)

  @jax.jit
  def update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, optax.tree.norm(grads)

  return {"mlp": run(mlp_grad, p_mlp, x), "attention": run(attn_grad(causal), q, k, v),
          "attention[masked reference]": run(attn_grad(masked), q, k, v),
          "block": run(block_grad, p_block, x), "head_loss": run(head_grad, p_head, x),
          "loss": run(ce_grad, logits), "optimizer": run(update, params, opt_state, grads)}


def _torch_parts(cfg, batch: int, seq_len: int) -> dict[str, Callable[[], Any]]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  model = train_step_bench.torch_llama(cfg)
  rng = np.random.default_rng(0)
  b, t, d = batch, seq_len, cfg.hidden_size
  h, kv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  leaf = lambda *shape: torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).requires_grad_()
  x = leaf(b, t, d)
  targets = torch.from_numpy(rng.integers(0, cfg.vocab_size, (b * t,)))
  layer = model.model.layers[0]
  pos_ids = torch.arange(t)[None].expand(b, -1)
  rope = model.model.rotary_emb(x, pos_ids)
  q, k, v = leaf(b, h, t, dh), leaf(b, kv, t, dh), leaf(b, kv, t, dh)
  logits = leaf(b * t, cfg.vocab_size)
  params = list(model.parameters())
  for p in params:
    p.grad = torch.randn_like(p) * 1e-3
  opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                          foreach=True)

  def backward(out: torch.Tensor, *leaves: torch.Tensor) -> None:
    for tensor in leaves:  # parameter grads accumulate, as under gradient accumulation
      tensor.grad = None
    out.backward()

  def block():
    out = layer(x, attention_mask=None, position_ids=pos_ids, position_embeddings=rope)
    backward(((out[0] if isinstance(out, tuple) else out) ** 2).sum(), x)

  def optimizer_step():
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()

  sdpa = torch.nn.functional.scaled_dot_product_attention
  cross_entropy = torch.nn.functional.cross_entropy
  return {
      "mlp": lambda: backward((layer.mlp(x) ** 2).sum(), x),
      "attention": lambda: backward((sdpa(q, k, v, is_causal=True, enable_gqa=True) ** 2).sum(),
                                    q, k, v),
      "block": block,
      "head_loss": lambda: backward(cross_entropy(model.lm_head(x).flatten(0, 1), targets,
                                                  reduction="sum"), x),
      "loss": lambda: backward(cross_entropy(logits, targets, reduction="sum"), logits),
      "optimizer": optimizer_step,
  }


def run(shape: str, batch: int, seq_len: int, repeats: int) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  cfg = dataclasses.replace(train_step_bench.model_config(shape, seq_len), attention="xla")
  ours, theirs = _jax_parts(cfg, batch, seq_len), _torch_parts(cfg, batch, seq_len)
  parts = {}
  for name, fn in ours.items():
    jax_s = _best(fn, repeats)
    row: dict[str, Any] = {"swallow_jax_s": jax_s}
    if name in theirs:
      row["transformers_s"] = _best(theirs[name], repeats)
      row["torch_over_jax"] = row["transformers_s"] / jax_s
    parts[name] = row
  return {"benchmark": "train_step_parts", "shape": train_step_bench.SHAPES[shape],
          "batch": batch, "seq_len": seq_len, "dtype": "float32", "repeats": repeats,
          "cpu_threads": os.cpu_count(), "jax": jax.__version__, "parts": parts}


def _define_flags() -> None:
  flags.DEFINE_enum("shape", "bench", list(train_step_bench.SHAPES), "Model shape.")
  flags.DEFINE_integer("batch", 4, "Sequences.")
  flags.DEFINE_integer("seq_len", 512, "Tokens per sequence.")
  flags.DEFINE_integer("repeats", 5, "Timed calls per side (the best is reported).")


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    sys.exit(f"unexpected arguments: {argv[1:]}")
  if min(FLAGS.batch, FLAGS.seq_len, FLAGS.repeats) < 1:
    sys.exit("--batch, --seq_len and --repeats must be positive")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", 1)
  print(json.dumps(run(FLAGS.shape, FLAGS.batch, FLAGS.seq_len, FLAGS.repeats), indent=1))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
