"""Token-weighted cross-entropy with z-loss, returned as sums so microbatches add up exactly.

For logits z over the vocabulary and target y, per token:
    ce     = logsumexp(z) - z[y]
    z_loss = coef * logsumexp(z)**2          (PaLM; keeps the softmax normalizer near 1)
The training objective is sum(w * (ce + z_loss)) / sum(w) over the whole global batch, where w
is the per-token loss weight (0 on padding and, for SFT, on non-assistant tokens).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from swallow_jax.model.llama import token_matmul


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                           z_loss: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Returns (sum of w*ce, sum of w*z_loss) over all tokens; logits [..., V] (cast to f32)."""
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  # One-hot contraction rather than a gather: fuses, and partitions cleanly over a sharded vocab.
  target_logit = jnp.sum(logits * jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype),
                         axis=-1)
  z = jnp.sum(weights * (z_loss * jnp.square(lse))) if z_loss else jnp.zeros((), jnp.float32)
  return jnp.sum(weights * (lse - target_logit)), z


def chunked_cross_entropy(hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
                          weights: jax.Array, z_loss: float = 0.0,
                          chunk_size: int = 1024) -> tuple[jax.Array, jax.Array]:
  """`weighted_cross_entropy(hidden @ kernel, ...)` without materializing the logits.

  hidden [B, T, D] (compute dtype), kernel [D, V] (parameter dtype; cast per chunk so its gradient
  accumulates in it), targets/weights [B, T]. Scans over chunks of `chunk_size` positions of every
  row whose fp32 logits the backward pass recomputes (`jax.checkpoint`) instead of storing them:
  O(B * chunk_size * V) instead of O(B * T * V) temporaries (docs/training.md).
  """
  b, t = hidden.shape[:2]
  chunk_size = min(chunk_size, t)
  n = -(-t // chunk_size)

  def chunks(x):  # [B, T, ...] -> [n, B, c, ...]
    # Zero-weight padding positions: they add 0 to both sums and get zero gradients.
    x = jnp.pad(x, ((0, 0), (0, n * chunk_size - t)) + ((0, 0),) * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(b, n, chunk_size, *x.shape[2:]), 1, 0)

  @functools.partial(jax.checkpoint, prevent_cse=False)  # In a scan, CSE cannot undo the remat.
  def body(carry, xs):
    h, y, w = xs
    logits = token_matmul(h, kernel.astype(h.dtype), preferred_element_type=jnp.float32)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "act_vocab"))
    return jax.tree.map(jnp.add, carry, weighted_cross_entropy(logits, y, w, z_loss)), None

  zero = jnp.zeros((), jnp.float32)
  return jax.lax.scan(body, (zero, zero), (chunks(hidden), chunks(targets), chunks(weights)))[0]
