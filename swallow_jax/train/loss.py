"""Token-weighted cross-entropy with z-loss, returned as sums so microbatches add up exactly.

For logits z over the vocabulary and target y, per token:
    ce     = logsumexp(z) - z[y]
    z_loss = coef * logsumexp(z)**2          (PaLM; keeps the softmax normalizer near 1)
The training objective is sum(w * (ce + z_loss)) / sum(w) over the whole global batch, where w
is the per-token loss weight (0 on padding and, for SFT, on non-assistant tokens).
"""

import jax
import jax.numpy as jnp


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                           z_loss: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Returns (sum of w*ce, sum of w*z_loss) over all tokens; logits [..., V] (cast to f32)."""
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  # One-hot contraction rather than a gather: fuses, and partitions cleanly over a sharded vocab.
  target_logit = jnp.sum(logits * jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype),
                         axis=-1)
  ce = jnp.sum(weights * (lse - target_logit))
  z = jnp.sum(weights * (z_loss * jnp.square(lse))) if z_loss else jnp.zeros((), jnp.float32)
  return ce, z
