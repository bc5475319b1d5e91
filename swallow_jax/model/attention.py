"""Attention backends over packed sequences: the one place that decides the attention kernel.

Masking rule (every backend): query i sees key j iff segment_ids[j] == segment_ids[i] and
positions[j] <= positions[i]. Queries arrive unscaled (HF layout); the 1/sqrt(Dh) scale is applied
here. Shapes: q [B, T, H, Dh], k/v [B, S, KV, Dh] with H a multiple of KV (grouped-query attention).

Backends:
  reference    the spec: K/V repeated to H heads, one token-major einsum, logits and softmax in
               float32, explicit [B, T, S] mask. Every other backend is tested against it.
  xla          the same numbers laid out for XLA:CPU: heads-first batched GEMMs, and under
               `plain_causal` the key blocks above the diagonal skipped (timing:
               docs/performance.md, "CPU kernels"). Reads the heads-first KV cache in place.
  dot_product  `jax.nn.dot_product_attention(implementation=None)` with the same mask.
  cudnn        `jax.nn.dot_product_attention(implementation='cudnn')`: GPU only, float16/bfloat16,
               head_dim <= 128 and a multiple of 8. Packed documents become an additive
               [B, 1, T, S] bias (O(T*S) memory); plain causal batches use `is_causal=True`, no
               mask (docs/model.md, "Attention and packed documents").
  splash       TPU Splash attention (Pallas): causal-by-index mask + `SegmentIds`, which equals the
               rule above for packed batches (positions rise by one inside each document).
               Needs T % 128 == 0 (or T < 128); not used with a KV cache. Under a mesh it runs
               per shard (`jax.shard_map`), batch and heads split by the logical rules for
               'batch', 'act_heads', 'act_kv_heads'; the sequence must be whole.
  auto         GPU: with a KV cache xla (decoding reads the heads-first cache without transposing
               it), else cudnn when the dtype/head_dim allow, else dot_product; TPU: splash when
               T % 128 == 0 and there is no KV cache, else xla; CPU: xla.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_NEG_INF = -0.7 * float(np.finfo(np.float32).max)  # finite: fully masked rows give no NaNs


def make_mask(q_positions: jax.Array, q_segment_ids: jax.Array, kv_positions: jax.Array,
              kv_segment_ids: jax.Array) -> jax.Array:
  """Boolean [B, 1, T, S] mask implementing the rule above."""
  same_doc = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  causal = kv_positions[:, None, :] <= q_positions[:, :, None]
  return (same_doc & causal)[:, None]


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """The spec: softmax(mask(q k^T / sqrt(Dh))) v with K/V repeated to H heads; q [B, T, H, Dh],
  k/v [B, S, KV, Dh], boolean mask [B, 1, T, S] -> [B, T, H, Dh] in v.dtype."""
  groups = q.shape[2] // k.shape[2]
  k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  logits = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
  logits = jnp.where(mask, logits * np.float32(1.0 / np.sqrt(q.shape[-1])), _NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhts,bshd->bthd", probs, v)


# The "xla" backend: `reference_attention`'s numbers in the layouts XLA:CPU runs fastest.


def _attend(qh: jax.Array, kh: jax.Array, vh: jax.Array, mask: jax.Array) -> jax.Array:
  """Heads-first attention: qh [B, KV, G, T, Dh], kh/vh [B, KV, S, Dh], boolean mask
  broadcastable to [B, KV, G, T, S] -> [B, KV, G, T, Dh]. A KV head's G query heads are stacked
  along the query axis, so both einsums are batched [G*T, Dh] x [Dh, S] GEMMs over (B, KV)."""
  b, kv, g, t, dh = qh.shape
  s = kh.shape[2]
  logits = jnp.einsum("bkqd,bksd->bkqs", qh.reshape(b, kv, g * t, dh), kh,
                      preferred_element_type=jnp.float32)
  logits = logits.reshape(b, kv, g, t, s) * np.float32(1.0 / np.sqrt(dh))
  logits = jnp.where(mask, logits, _NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1).astype(vh.dtype).reshape(b, kv, g * t, s)
  return jnp.einsum("bkqs,bksd->bkqd", probs, vh).reshape(b, kv, g, t, dh)


def _group_queries(q: jax.Array, kv: int) -> jax.Array:  # [B, T, H, Dh] -> [B, KV, G, T, Dh]
  b, t, h, dh = q.shape
  return q.reshape(b, t, kv, h // kv, dh).transpose(0, 2, 3, 1, 4)


def _tokens_first(out: jax.Array) -> jax.Array:  # [B, KV, G, T, Dh] -> [B, T, H, Dh]
  b, kv, g, t, dh = out.shape
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, kv * g, dh)


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                  kv_heads_first: bool = False) -> jax.Array:
  """`reference_attention` computed heads-first; mask [B, 1, T, S] boolean; k/v [B, S, KV, Dh],
  or with `kv_heads_first` [B, KV, S, Dh] (the KV cache's layout)."""
  if not kv_heads_first:
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  return _tokens_first(_attend(_group_queries(q, k.shape[1]), k, v, mask[:, :, None]))


def causal_blocks(t: int) -> int:
  """How many query blocks `causal_xla_attention` splits T into: 8, 4 or 2 blocks of >= 64."""
  return next((n for n in (8, 4, 2) if t % n == 0 and t // n >= 64), 1)


def causal_xla_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """`xla_attention` under the plain causal mask (self-attention, positions 0..T-1), skipping
  the key blocks above the diagonal: query block i attends keys [0, (i+1)*T/n) only, so n blocks
  compute (n+1)/2n of the scores (timing: docs/performance.md, "CPU kernels")."""
  qh = _group_queries(q, k.shape[2])
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  n = causal_blocks(q.shape[1])
  size = q.shape[1] // n
  diagonal = np.tril(np.ones((size, size), bool))
  outs = []
  for i in range(n):
    end = (i + 1) * size
    mask = np.concatenate([np.ones((size, i * size), bool), diagonal], axis=1)
    outs.append(_attend(qh[:, :, :, i * size:end], kh[:, :, :end], vh[:, :, :end], mask))
  return _tokens_first(jnp.concatenate(outs, axis=3))


# The fused kernels (cudnn, splash) and the choice of backend.


def _cudnn_ok(q: jax.Array) -> bool:
  return q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128 and q.shape[-1] % 8 == 0


def resolve_backend(backend: str, q: jax.Array, with_cache: bool) -> str:
  """Turns 'auto' into a concrete backend for this platform and these shapes."""
  if backend != "auto":
    return backend
  platform = jax.default_backend()
  if platform == "gpu" and not with_cache:  # xla reads the heads-first cache as it lies
    return "cudnn" if _cudnn_ok(q) else "dot_product"
  if platform == "tpu" and not with_cache and q.shape[1] % 128 == 0:
    return "splash"
  return "xla"


def _splash_attention(q, k, v, segment_ids, interpret: bool = False):
  try:
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  except ImportError as e:
    raise ValueError(f"attention='splash' needs jax's Pallas TPU ops, which failed to import: {e}")
  b, t, h, dh = q.shape
  block = next((b for b in (512, 256, 128) if t % b == 0), t)  # the largest dividing T, or T
  if (t >= 128 and t % 128) or k.shape[1] != t:
    raise ValueError(f"attention='splash' needs self-attention with T % 128 == 0, got T={t}, "
                     f"S={k.shape[1]}")
  mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(h)])
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                        block_kv_dq=block)
  kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes,
                              interpret=interpret)
  q = q * jnp.asarray(1.0 / np.sqrt(dh), q.dtype)
  heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # [B, N, T, Dh]

  def local(q, k, v, segment_ids):
    seg = sk.SegmentIds(q=segment_ids, kv=segment_ids)
    return heads_first(jax.vmap(kernel)(heads_first(q), heads_first(k), heads_first(v),
                                        segment_ids=seg))

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(q, k, v, segment_ids)
  # A Pallas kernel cannot be auto-partitioned: run it per shard, batch and heads split as the
  # active logical axis rules say (sequence unsharded).
  q_spec = nn.logical_to_mesh_axes(("batch", None, "act_heads", None))
  kv_spec = nn.logical_to_mesh_axes(("batch", None, "act_kv_heads", None))
  seg_spec = nn.logical_to_mesh_axes(("batch", None))
  return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                       out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_positions: jax.Array,
              q_segment_ids: jax.Array, kv_positions: jax.Array, kv_segment_ids: jax.Array, *,
              backend: str = "xla", plain_causal: bool = False, with_cache: bool = False,
              splash_interpret: bool = False) -> jax.Array:
  """Masked grouped-query attention -> [B, T, H, Dh] in q.dtype. `plain_causal` promises
  positions == arange(T) and one segment per row (what `forward` uses when the caller passes
  neither), letting fused kernels use `is_causal` instead of a mask. `with_cache`: k/v are a KV
  cache, heads-first [B, KV, S, Dh] so that decoding reads it without transposing it every step."""
  backend = resolve_backend(backend, q, with_cache)
  mask = lambda: make_mask(q_positions, q_segment_ids, kv_positions, kv_segment_ids)
  if backend == "xla":
    if plain_causal:
      return causal_xla_attention(q, k, v)
    return xla_attention(q, k, v, mask(), kv_heads_first=with_cache)
  if with_cache:  # the other backends take [B, S, KV, Dh]
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  if backend == "reference":
    return reference_attention(q, k, v, mask())
  if backend in ("dot_product", "cudnn"):
    if backend == "cudnn" and jax.default_backend() != "gpu":
      raise ValueError("attention='cudnn' needs an NVIDIA GPU; this process runs on "
                       f"{jax.default_backend()!r} (use 'xla' or 'dot_product')")
    if backend == "cudnn" and not _cudnn_ok(q):
      raise ValueError("attention='cudnn' needs dtype bfloat16/float16 and head_dim <= 128, a "
                       f"multiple of 8; got {q.dtype} head_dim={q.shape[-1]}")
    impl = "cudnn" if backend == "cudnn" else None
    return jax.nn.dot_product_attention(q, k, v, mask=None if plain_causal else mask(),
                                        is_causal=plain_causal, implementation=impl)
  if backend == "splash":
    if with_cache:
      raise ValueError("attention='splash' does not support a KV cache; use 'xla' for decoding")
    if jax.default_backend() != "tpu" and not splash_interpret:
      raise ValueError("attention='splash' needs a TPU; this process runs on "
                       f"{jax.default_backend()!r} (use 'xla' or 'dot_product')")
    return _splash_attention(q, k, v, q_segment_ids, interpret=splash_interpret)
  raise ValueError(f"unknown attention backend {backend!r}")
