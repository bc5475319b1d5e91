r"""KV-cache decoding with greedy / temperature / top-k / top-p sampling (`sj.generate`).

    new_tokens = sj.generate(config, params, prompts, max_new_tokens, temperature=0.0,
                             top_k=0, top_p=1.0, stop_tokens=(eot_id,), seed=0)

One jit per (batch, prompt length P, new-token bucket); docs/evaluation.md describes the left
padding, the sampling order and the per-prompt keys. Prefill writes prompt tokens [0, P-1) into
the KV cache (their logits are unused, so XLA drops the vocabulary projection); the last prompt
token is step 0 of a `lax.while_loop` that writes slot P-1+i at step i. Decoding runs on the
per-layer layout: stacked params are copied into it on every call unless the caller passes
`model.unstack_layers(params)`. `load_for_decoding` gives (config, params, tokenizer) for any path.
"""

from collections.abc import Sequence
import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from swallow_jax import cli
from swallow_jax import model as model_lib
from swallow_jax import tokenizer as tokenizer_lib
from swallow_jax.model import io as model_io

MIN_BUCKET = 16


class Generation(NamedTuple):
  """One prompt's generated tokens and why generation stopped."""

  tokens: list[int]  # new tokens, stop token excluded
  stopped: bool      # True if a stop token ended it (False: ran out of max_new_tokens)


def _pow2(n: int) -> int:
  return 1 << max(0, n - 1).bit_length()


def bucket_length(n: int, cap: int | None = None) -> int:
  """Smallest power of two >= max(n, MIN_BUCKET), at most `cap` (when n fits under it): few
  distinct shapes, so few compilations."""
  b = max(MIN_BUCKET, _pow2(n))
  return min(b, cap) if cap and n <= cap else b


def filter_logits(logits: jax.Array, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Temperature, then top-k, then top-p on [B, V] logits; removed tokens become -inf."""
  logits = logits / temperature
  if 0 < top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it < p.
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def sample_logits(logits: jax.Array, keys: jax.Array, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Next tokens [B] from float32 logits [B, V], one key per row; greedy if temperature is 0."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits, temperature, top_k, top_p)
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 6, 7, 8, 9))
def _decode(config, params, tokens, segment_ids, row_ids, key, num_slots: int, temperature: float,
            top_k: int, top_p: float, stops, max_new_tokens):
  """tokens/segment_ids [B, P] left-padded; returns (new tokens [B, N], number generated [B])."""
  b, p = tokens.shape
  n = num_slots - p + 1
  positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0).astype(jnp.int32)
  cache = model_lib.init_cache(config, b, num_slots, per_layer=True)
  _, cache = model_lib.forward_with_cache(config, params, tokens[:, :-1], positions[:, :-1],
                                          segment_ids[:, :-1], cache, 0)
  done0 = segment_ids[:, -1] == 0  # dummy rows that only fill the batch bucket

  def body(state):
    i, cache, token, pos, out, length, done = state
    logits, cache = model_lib.forward_with_cache(config, params, token[:, None], pos[:, None],
                                                 jnp.ones((b, 1), jnp.int32), cache, p - 1 + i)
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(key, r), i))(row_ids)
    nxt = sample_logits(logits[:, 0], keys, temperature, top_k, top_p)
    out = out.at[:, i].set(jnp.where(done, 0, nxt))
    length = jnp.where(done, length, i + 1)
    done = done | jnp.isin(nxt, stops)
    return i + 1, cache, nxt, pos + 1, out, length, done

  state = (jnp.int32(0), cache, tokens[:, -1], positions[:, -1], jnp.zeros((b, n), jnp.int32),
           jnp.zeros((b,), jnp.int32), done0)
  # Steps until max_new_tokens or until every row is done (state[-1]).
  _, _, _, _, out, length, _ = jax.lax.while_loop(
      lambda s: (s[0] < max_new_tokens) & ~jnp.all(s[-1]), body, state)
  return out, length


def generate_detailed(config: model_lib.LlamaConfig, params: Any, prompts: Sequence[Sequence[int]],
                      max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
                      top_p: float = 1.0, stop_tokens: Sequence[int] = (), seed: int = 0,
                      batch_size: int | None = None, progress: str = "") -> list[Generation]:
  """Like `generate`, also saying whether each generation ended on a stop token; `progress`: a
  label for a bar over the batches on stderr (`cli.progress`) ("" = none)."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("prompts must be a non-empty list of non-empty token lists")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
    raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got "
                     f"{temperature}, {top_k}, {top_p}")
  longest = max(len(p) for p in prompts)
  if longest + max_new_tokens > config.max_position_embeddings:
    raise ValueError(f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds "
                     f"max_position_embeddings={config.max_position_embeddings}")
  batch = min(batch_size, _pow2(len(prompts))) if batch_size else _pow2(len(prompts))
  stops = tuple(sorted({int(s) for s in stop_tokens})) or (-1,)
  key = jax.random.key(seed)
  if not model_lib.is_per_layer(params):  # a transient copy: callers may unstack once themselves
    params = model_lib.unstack_layers(params)
  # Chunks of similar lengths pad less; row ids (the sampling keys) stay the prompts' indices.
  order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
  results: list[Generation | None] = [None] * len(prompts)
  for start in cli.progress(range(0, len(order), batch), desc=progress, unit="batch",
                            enabled=bool(progress)):
    idx = order[start:start + batch]
    p = bucket_length(max(len(prompts[i]) for i in idx))
    tokens, segs = np.zeros((2, batch, p), np.int32)
    row_ids = np.pad(np.asarray(idx, np.int32), (0, batch - len(idx)))
    for row, i in enumerate(idx):
      tokens[row, p - len(prompts[i]):] = prompts[i]
      segs[row, p - len(prompts[i]):] = 1
    out, length = _decode(config, params, jnp.asarray(tokens), jnp.asarray(segs),
                          jnp.asarray(row_ids), key, p - 1 + bucket_length(max_new_tokens),
                          float(temperature), int(top_k), float(top_p),
                          jnp.asarray(stops, jnp.int32), jnp.int32(max_new_tokens))
    out, length = np.asarray(out), np.asarray(length)
    for row, i in enumerate(idx):
      toks = out[row, :length[row]].tolist()
      stopped = bool(toks) and toks[-1] in stops
      results[i] = Generation(toks[:-1] if stopped else toks, stopped)
  return results  # type: ignore[return-value]


def generate(config: model_lib.LlamaConfig, params: Any, prompts: Sequence[Sequence[int]],
             max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             stop_tokens: Sequence[int] = (), seed: int = 0,
             batch_size: int | None = None) -> list[list[int]]:
  """New tokens per prompt (stop token excluded). batch_size=None decodes all prompts at once."""
  return [g.tokens for g in generate_detailed(
      config, params, prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
      stop_tokens=stop_tokens, seed=seed, batch_size=batch_size)]


def stop_tokens_for(tokenizer) -> tuple[int, ...]:
  """The tokens that end a generation: the tokenizer's `stop_ids` when it has them, else its
  end tokens (<|end_of_text|>, <|eot_id|>) that exist."""
  stop_ids = getattr(tokenizer, "stop_ids", None)
  if stop_ids is not None:
    return tuple(stop_ids)
  return tuple(t for t in (tokenizer.eos_id, getattr(tokenizer, "eot_id", None)) if t is not None)


def load_for_decoding(model: str, tokenizer: str | None = None, dtype: str = "float32",
                      progress: bool = True) -> tuple[model_lib.LlamaConfig, Any, Any]:
  """(config computing in `dtype`, params in `dtype` and the decoding layout, tokenizer) from any
  path `model_io.resolve` accepts; the tokenizer defaults to the model's own. Raises
  ValueError/OSError with a one-line reason."""
  ref = model_io.resolve(model)
  tok_path = tokenizer or ref.tokenizer_dir
  if not tok_path:
    raise ValueError(f"{model}: no tokenizer found with the model; pass --tokenizer")
  tok = tokenizer_lib.load_tokenizer(tok_path)
  config, params = model_io.load(ref, dtype=jnp.dtype(dtype), decode=True, progress=progress)
  return dataclasses.replace(config, dtype=dtype), params, tok
