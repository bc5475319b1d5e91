"""Log-likelihood scoring: continuations (multiple choice) and whole texts (perplexity).

Sequences are right-padded (segment id 0) to a power-of-two length bucket and a fixed batch size, so
a whole evaluation compiles the forward pass only a few times. Requests are sorted by length first
to keep padding small.
"""

from collections.abc import Sequence
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from swallow_jax import model as model_lib
from swallow_jax.decode import bucket_length


@functools.partial(jax.jit, static_argnums=0)
def _next_token_logprobs(config, params, tokens, segment_ids):
  """log p(tokens[:, t+1] | tokens[:, :t+1]) for t < T-1; [B, T-1] float32."""
  logits = model_lib.forward(config, params, tokens, segment_ids=segment_ids)[:, :-1]
  target = jnp.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
  return target - jax.nn.logsumexp(logits, axis=-1)


def token_logprobs(config, params, sequences: Sequence[Sequence[int]], *, batch_size: int = 8,
                   max_len: int | None = None) -> list[np.ndarray]:
  """For each sequence s, the float64 array [log p(s[t] | s[:t]) for t in 1..len(s)-1]."""
  max_len = max_len or config.max_position_embeddings
  if too_long := [len(s) for s in sequences if len(s) > max_len]:
    raise ValueError(f"sequence of {max(too_long)} tokens exceeds max_len={max_len}")
  order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
  out: list[np.ndarray | None] = [None] * len(sequences)
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    length = bucket_length(max(len(sequences[i]) for i in idx), max_len)
    tokens, segs = np.zeros((2, batch_size, length), np.int32)
    for row, i in enumerate(idx):
      tokens[row, :len(sequences[i])] = sequences[i]
      segs[row, :len(sequences[i])] = 1
    lp = np.asarray(_next_token_logprobs(config, params, jnp.asarray(tokens), jnp.asarray(segs)),
                    np.float64)
    for row, i in enumerate(idx):
      out[i] = lp[row, :len(sequences[i]) - 1]
  return out  # type: ignore[return-value]


def continuation_logprobs(config, params, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                          *, batch_size: int = 8, max_len: int | None = None) -> list[float]:
  """Summed log p(continuation | context) per (context_ids, continuation_ids) request; the
  context keeps its last tokens when context + continuation exceed max_len."""
  max_len = max_len or config.max_position_embeddings
  seqs = []
  for ctx, cont in requests:
    if not cont or not ctx:
      raise ValueError("context and continuation must both be non-empty token lists")
    if len(cont) >= max_len:
      raise ValueError(f"continuation of {len(cont)} tokens does not fit max_len={max_len}")
    seqs.append((list(ctx) + list(cont))[-max_len:])
  lps = token_logprobs(config, params, seqs, batch_size=batch_size, max_len=max_len)
  return [float(lp[-len(cont):].sum()) for lp, (_, cont) in zip(lps, requests)]


def text_nll(config, params, sequences: Sequence[Sequence[int]], *, batch_size: int = 8,
             max_len: int | None = None) -> list[tuple[float, int]]:
  """(total negative log-likelihood in nats, tokens predicted) per token sequence, which should
  start with BOS (every later token is predicted once). Sequences longer than max_len are cut into
  max_len-token windows overlapping by one token, so context resets at window boundaries."""
  max_len = max_len or config.max_position_embeddings
  windows, owner = [], []
  for i, seq in enumerate(sequences):
    if len(seq) < 2:
      raise ValueError("each sequence needs at least 2 tokens (BOS and one token to predict)")
    for start in range(0, len(seq) - 1, max_len - 1):
      windows.append(list(seq[start:start + max_len]))
      owner.append(i)
  lps = token_logprobs(config, params, windows, batch_size=batch_size, max_len=max_len)
  nll = [0.0] * len(sequences)
  for i, lp in zip(owner, lps):
    nll[i] -= float(lp.sum())
  return [(nll[i], len(seq) - 1) for i, seq in enumerate(sequences)]


def perplexity_metrics(nll_nats: float, num_tokens: int, num_chars: int,
                       num_bytes: int) -> dict[str, float]:
  """Token perplexity plus tokenizer-independent bits per character and per UTF-8 byte."""
  return {
      "token_perplexity": math.exp(nll_nats / num_tokens),
      "nll_per_token": nll_nats / num_tokens,
      "bits_per_char": nll_nats / math.log(2) / num_chars,
      "bits_per_byte": nll_nats / math.log(2) / num_bytes,
      "tokens_per_char": num_tokens / num_chars,
  }
