"""Llama 3 decoder in Flax linen, parameters in Hugging Face layout (kernel = HF weight.T).

Layers are one `nn.scan` over a remat'ed block, so parameters carry a leading layer axis L. With
`scan_layers=False` the same scan is fully unrolled (same parameter tree, no loop in the HLO).
Every parameter carries logical axis names (`nn.with_logical_partitioning`) and activations get
`nn.with_logical_constraint`; both are no-ops unless a mesh and logical axis rules are active.
"""

import functools
from typing import Any

from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from swallow_jax.model.attention import attention
from swallow_jax.model.config import LlamaConfig
from swallow_jax.model.rope import apply_rope, inv_frequencies
from swallow_jax.parallel.sharding import axes_size

Params = dict[str, Any]
_INIT = nn.initializers.normal(0.02)  # HF `initializer_range`

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "qkv_proj": jax.checkpoint_policies.save_only_these_names("query_proj", "key_proj",
                                                              "value_proj"),
    "qkv_proj_attn_out": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "attn_out"),
    # Weight matmuls plus the attention output: a fused (cuDNN/Splash) attention kernel is not a
    # dot, so 'dots_no_batch' alone would rerun its forward pass in the backward pass.
    "dots_no_batch_attn_out": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names("attn_out")),
}


def _residual(x_BxTxD: jax.Array) -> jax.Array:
  """Constrains the residual stream between layers. Its length is split over the mesh axes
  'act_length' maps to (`tensor`: Megatron-style sequence parallelism) when they divide T, so
  the layer inputs remat keeps for the backward pass take 1/tensor of the memory each; a length
  they do not divide (decoding) stays whole. The two layouts compute the same values."""
  mesh = jax.sharding.get_abstract_mesh()
  length = "length"
  if not mesh.empty and x_BxTxD.shape[1] % axes_size(
      nn.logical_to_mesh_axes(("act_length",))[0], mesh) == 0:
    length = "act_length"
  return nn.with_logical_constraint(x_BxTxD, ("batch", length, "act_embed"))


def token_matmul(x: jax.Array, kernel: jax.Array, contract: int = 0,
                 preferred_element_type: Any = None) -> jax.Array:
  """x [..., D] times kernel ([D, F] when `contract`=0, [F, D] when 1) -> [..., F]: the one place
  the model does its weight matmuls, as one 2-D matmul over all tokens."""
  # One implementation for every platform: flattening is a free reshape (length is never sharded,
  # so the batch sharding is kept) and XLA:GPU/TPU canonicalise a dot to this 2-D GEMM anyway;
  # XLA:CPU alone needs it spelled out (docs/performance.md, "CPU kernels").
  flat = x.reshape(-1, x.shape[-1])
  out = jax.lax.dot_general(flat, kernel, (((1,), (contract,)), ((), ())),
                            preferred_element_type=preferred_element_type)
  return out.reshape(*x.shape[:-1], out.shape[-1])


class Dense(nn.Module):
  """Bias-free linear layer with `nn.Dense`'s parameter ("kernel", [in, out]) and dtype rules,
  computed by `token_matmul`. With a LoRA adapter in the "lora" collection ("lora_a" [in, r],
  "lora_b" [r, out]; `swallow_jax.model.lora`) it adds `scale * dropout(x) @ A @ B`."""

  features: int
  axes: tuple[str, str]
  config: LlamaConfig
  lora: Any = None  # LoraConfig: the adapter's scale and dropout, when one is given

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kernel = self.param("kernel", nn.with_logical_partitioning(_INIT, self.axes),
                        (x.shape[-1], self.features), jnp.dtype(cfg.param_dtype))
    dtype = jnp.dtype(cfg.dtype)
    x = x.astype(dtype)
    y = token_matmul(x, kernel.astype(dtype))
    if self.lora is None or not self.has_variable("lora", "lora_a"):
      return y
    a = self.get_variable("lora", "lora_a").astype(dtype)
    b = self.get_variable("lora", "lora_b").astype(dtype)
    if self.lora.dropout > 0 and self.has_rng("lora_dropout"):
      keep = jax.random.bernoulli(self.make_rng("lora_dropout"), 1.0 - self.lora.dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - self.lora.dropout), 0).astype(dtype)
    return y + (self.lora.scale * token_matmul(token_matmul(x, a), b)).astype(dtype)


class RMSNorm(nn.Module):
  """HF LlamaRMSNorm: normalise in float32, multiply by the scale in the compute dtype."""

  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), jnp.dtype(cfg.param_dtype))
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.rms_norm_eps)
    dtype = jnp.dtype(cfg.dtype)
    return scale.astype(dtype) * x32.astype(dtype)


class Embed(nn.Module):
  """Token embedding; `attend` is the tied output projection (logits in float32)."""

  config: LlamaConfig

  def setup(self):
    cfg = self.config
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(_INIT, ("vocab", "embed")),
        (cfg.vocab_size, cfg.hidden_size), jnp.dtype(cfg.param_dtype))

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return jnp.take(self.embedding, tokens, axis=0).astype(jnp.dtype(self.config.dtype))

  def attend(self, x: jax.Array) -> jax.Array:
    """Logits against the embedding matrix (a tied output head), in float32."""
    return token_matmul(x, self.embedding.astype(x.dtype), contract=1,
                        preferred_element_type=jnp.float32)


class LMHead(nn.Module):
  """Untied output projection; logits accumulate and return in float32."""

  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kernel = self.param("kernel", nn.with_logical_partitioning(_INIT, ("embed", "vocab")),
                        (cfg.hidden_size, cfg.vocab_size), jnp.dtype(cfg.param_dtype))
    return token_matmul(x, kernel.astype(x.dtype), preferred_element_type=jnp.float32)


@struct.dataclass
class Mask:
  """What every layer's attention masks by (the rule of `swallow_jax.model.attention`) and the KV
  cache slot of the first new token. `plain_causal` (static) promises positions 0..T-1, one
  segment per row and no cache."""

  positions: jax.Array
  segment_ids: jax.Array
  kv_positions: jax.Array
  kv_segment_ids: jax.Array
  cache_index: jax.Array | int = 0
  plain_causal: bool = struct.field(pytree_node=False, default=False)


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE (Llama's q/k/v/o projections)."""

  config: LlamaConfig
  lora: Any = None

  @nn.compact
  def __call__(self, x, mask: Mask, cache):
    cfg = self.config
    b, t, _ = x.shape
    h, kv, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = Dense(h * dh, ("embed", "heads"), cfg, self.lora, name="q_proj")(x)
    k = Dense(kv * dh, ("embed", "kv_heads"), cfg, self.lora, name="k_proj")(x)
    v = Dense(kv * dh, ("embed", "kv_heads"), cfg, self.lora, name="v_proj")(x)
    q, k, v = q.reshape(b, t, h, dh), k.reshape(b, t, kv, dh), v.reshape(b, t, kv, dh)
    inv_freq = inv_frequencies(dh, cfg.rope_theta, cfg.rope_scaling)
    q = checkpoint_name(apply_rope(q, mask.positions, inv_freq), "query_proj")
    k = checkpoint_name(apply_rope(k, mask.positions, inv_freq), "key_proj")
    v = checkpoint_name(v, "value_proj")
    q = nn.with_logical_constraint(q, ("batch", "length", "act_heads", None))
    k, v = (nn.with_logical_constraint(x, ("batch", "length", "act_kv_heads", None))
            for x in (k, v))
    new_cache = None
    if cache is not None:  # write the T new entries into slots [index, index + T), heads first
      k, v = (jax.lax.dynamic_update_slice(c, x.transpose(0, 2, 1, 3).astype(c.dtype),
                                           (0, 0, mask.cache_index, 0))
              for c, x in zip(cache, (k, v)))
      new_cache = (k, v)
      k, v = k.astype(q.dtype), v.astype(q.dtype)
    out = attention(q, k, v, mask.positions, mask.segment_ids, mask.kv_positions,
                    mask.kv_segment_ids, backend=cfg.attention, plain_causal=mask.plain_causal,
                    with_cache=cache is not None)
    out = checkpoint_name(out.reshape(b, t, h * dh), "attn_out")
    out = Dense(cfg.hidden_size, ("heads", "embed"), cfg, self.lora, name="o_proj")(out)
    return out, new_cache


class MLP(nn.Module):
  """Llama's SwiGLU feed-forward block (gate, up, down projections)."""

  config: LlamaConfig
  lora: Any = None

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    gate = Dense(cfg.intermediate_size, ("embed", "mlp"), cfg, self.lora, name="gate_proj")(x)
    up = Dense(cfg.intermediate_size, ("embed", "mlp"), cfg, self.lora, name="up_proj")(x)
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "act_mlp"))
    return Dense(cfg.hidden_size, ("mlp", "embed"), cfg, self.lora, name="down_proj")(hidden)


class Block(nn.Module):
  """One decoder layer; signature shaped for nn.scan: (carry, scanned cache, broadcast mask)."""

  config: LlamaConfig
  lora: Any = None

  @nn.compact
  def __call__(self, x, cache, mask: Mask):
    cfg = self.config
    # Sublayer inputs and outputs (and so their cotangents) are whole-length here, where XLA
    # gathers within each tensor group: past the projections' token flattening it would have to
    # replicate over the whole mesh. Only the residual between them is sequence-split.
    whole = lambda h: nn.with_logical_constraint(h, ("batch", "length", "act_embed"))
    attn_out, new_cache = Attention(cfg, self.lora, name="attn")(
        whole(RMSNorm(cfg, name="attn_norm")(x)), mask, cache)
    x = _residual(x + whole(attn_out))
    mlp_out = MLP(cfg, self.lora, name="mlp")(whole(RMSNorm(cfg, name="mlp_norm")(x)))
    return _residual(x + whole(mlp_out)), new_cache


def _block_class(cfg: LlamaConfig, prevent_cse: bool) -> type[Block]:
  if cfg.remat_policy == "none":
    return Block
  return nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=prevent_cse)


class Llama(nn.Module):
  """Llama 3 causal LM. Returns float32 logits [B, T, V]; with `cache`, (logits, new_cache).

  `return_hidden=True` returns the final-normed hidden states [B, T, D] in the compute dtype
  instead of the logits (no cache), for `swallow_jax.train.loss.chunked_cross_entropy`.
  `per_layer=True` takes the params of `unstack_layers` and the cache of `init_cache(...,
  per_layer=True)`. `lora` (a LoraConfig) applies the adapter passed as the "lora" collection,
  in the params' layout; LoRA dropout runs only when a "lora_dropout" rng is given.
  """

  config: LlamaConfig
  per_layer: bool = False
  lora: Any = None

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, neftune_alpha: float | jax.Array = 0.0, *,
               cache: dict[str, jax.Array] | None = None, cache_index: jax.Array | int = 0,
               return_hidden: bool = False):
    cfg = self.config
    b, t = tokens.shape
    if return_hidden and cache is not None:
      raise ValueError("return_hidden=True is for training: it does not take a KV cache")
    plain_causal = positions is None and segment_ids is None and cache is None
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if segment_ids is None:
      segment_ids = jnp.ones((b, t), jnp.int32)
    embed = Embed(cfg, name="embed")
    x = _residual(embed(tokens))
    if not (isinstance(neftune_alpha, (int, float)) and neftune_alpha == 0):
      # NEFTune (Jain et al. 2023): uniform noise scaled by alpha / sqrt(T * D), not on padding.
      noise = jax.random.uniform(self.make_rng("neftune"), x.shape, jnp.float32, -1.0, 1.0)
      noise = noise * (neftune_alpha / jnp.sqrt(float(t * cfg.hidden_size)))
      x = x + (noise * (segment_ids != 0)[..., None]).astype(x.dtype)
    if cache is None:
      mask = Mask(positions, segment_ids, positions, segment_ids, plain_causal=plain_causal)
    else:
      kv_positions, kv_segment_ids = (
          jax.lax.dynamic_update_slice(cache[key], new.astype(jnp.int32), (0, cache_index))
          for key, new in (("positions", positions), ("segment_ids", segment_ids)))
      mask = Mask(positions, segment_ids, kv_positions, kv_segment_ids, cache_index)
    if self.per_layer:
      block = _block_class(cfg, prevent_cse=True)
      new_kv = []
      for i in range(cfg.num_layers):
        x, kv = block(cfg, self.lora, name=f"layers_{i}")(
            x, None if cache is None else (cache["k"][i], cache["v"][i]), mask)
        new_kv.append(kv)
      new_layer_cache = None if cache is None else tuple(map(tuple, zip(*new_kv)))
    else:  # prevent_cse is only needed outside a scan (the scan already stops CSE across layers)
      stack = nn.scan(_block_class(cfg, prevent_cse=not cfg.scan_layers),
                      variable_axes={"params": 0, "lora": 0},
                      split_rngs={"params": True, "lora_dropout": True}, in_axes=(0, nn.broadcast),
                      length=cfg.num_layers, unroll=1 if cfg.scan_layers else cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, new_layer_cache = stack(cfg, self.lora, name="layers")(
          x, None if cache is None else (cache["k"], cache["v"]), mask)
    x = nn.with_logical_constraint(RMSNorm(cfg, name="final_norm")(x),
                                   ("batch", "length", "act_embed"))
    if return_hidden:
      return x
    logits = embed.attend(x) if cfg.tie_word_embeddings else LMHead(cfg, name="lm_head")(x)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "act_vocab"))
    if cache is None:
      return logits
    return logits, {"k": new_layer_cache[0], "v": new_layer_cache[1],
                    "positions": mask.kv_positions, "segment_ids": mask.kv_segment_ids}


# Functional API --------------------------------------------------------------------------------


def _boxed_init(cfg: LlamaConfig, rng: jax.Array) -> Params:
  return Llama(cfg).init({"params": rng}, jnp.zeros((1, 1), jnp.int32))["params"]


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: LlamaConfig, rng: jax.Array) -> Params:
  """Random parameters (HF init: normal(0.02), norms 1) as a plain nested dict; wrap in
  `jax.jit(..., static_argnums=0, out_shardings=...)` to create them already sharded."""
  return nn.meta.unbox(_boxed_init(config, rng))


def param_logical_axes(config: LlamaConfig) -> Params:
  """The params tree with a tuple of logical axis names per array (leaves are tuples of str)."""
  boxed = jax.eval_shape(functools.partial(_boxed_init, config), jax.random.key(0))
  return jax.tree.map(tuple, nn.get_partition_spec(boxed),
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def head_kernel(config: LlamaConfig, params: Params) -> jax.Array:
  """The output projection as a [D, V] kernel: lm_head's, or the embedding transposed if tied."""
  return (params["embed"]["embedding"].T if config.tie_word_embeddings
          else params["lm_head"]["kernel"])


def is_per_layer(params: Params) -> bool:
  """True for the per-layer layout ("layers_0", ...) of `unstack_layers`."""
  return "layers" not in params


def unstack_layers(params: Params, consume: bool = False) -> Params:
  """The stacked "layers" (leading axis L) split into copies "layers_0" ... "layers_{L-1}" (other
  axes' shardings kept): decoding reads these in place; `forward*` take either layout. The copy
  doubles the layer weights' memory; `consume=True` splits and deletes one stacked array at a time
  (the caller's `params` become unusable), so the peak is one array more."""
  leaves, treedef = jax.tree.flatten(params["layers"])
  split = []
  for leaf in leaves:
    split.append(jnp.unstack(leaf))  # One jitted program per array: its shardings kept.
    if consume and isinstance(leaf, jax.Array):
      leaf.delete()
  out = {k: v for k, v in params.items() if k != "layers"}
  out.update((f"layers_{i}", treedef.unflatten(parts)) for i, parts in enumerate(zip(*split)))
  return out


def _variables(params: Params, lora: Params | None, lora_cfg: Any) -> dict[str, Params]:
  if (lora is None) != (lora_cfg is None):
    raise ValueError("pass both lora (the adapter) and lora_cfg (its LoraConfig), or neither")
  return {"params": params} if lora is None else {"params": params, "lora": lora}


@functools.partial(jax.jit, static_argnums=0, static_argnames="lora_cfg")
def forward(config: LlamaConfig, params: Params, tokens: jax.Array,
            positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
            lora: Params | None = None, lora_cfg: Any = None,
            lora_rng: jax.Array | None = None) -> jax.Array:
  """Float32 logits [B, T, V]; masking: same segment and key position <= query position.

  `lora`/`lora_cfg`: a LoRA adapter (`swallow_jax.model.lora.init_lora` / `load_peft`) in the
  params' layout and its LoraConfig; LoRA dropout only with `lora_rng`. To train the adapter
  alone, differentiate w.r.t. `lora` only: the frozen `params` then get no gradients."""
  rngs = {} if lora_rng is None else {"lora_dropout": lora_rng}
  return Llama(config, per_layer=is_per_layer(params), lora=lora_cfg).apply(
      _variables(params, lora, lora_cfg), tokens, positions, segment_ids, rngs=rngs)


def init_cache(config: LlamaConfig, batch: int, max_len: int, dtype: Any = None,
               per_layer: bool = False) -> dict[str, Any]:
  """Empty KV cache (segment id 0 marks empty slots, which no real query can see). "k"/"v" are
  [L, B, KV, S, Dh] (heads first: decoding reads them as attention's GEMM operands without a
  transpose), or with `per_layer` (for per-layer params) tuples of L [B, KV, S, Dh]."""
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (batch, config.num_kv_heads, max_len, config.head_dim)
  # k and v must be distinct buffers: forward_with_cache donates both.
  zeros = lambda: (tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)) if per_layer
                   else jnp.zeros((config.num_layers, *shape), dtype))
  return {"k": zeros(), "v": zeros(), "positions": jnp.zeros((batch, max_len), jnp.int32),
          "segment_ids": jnp.zeros((batch, max_len), jnp.int32)}


@functools.partial(jax.jit, static_argnums=0, static_argnames="lora_cfg", donate_argnums=5)
def forward_with_cache(config: LlamaConfig, params: Params, tokens: jax.Array,
                       positions: jax.Array, segment_ids: jax.Array, cache: dict[str, Any],
                       index: jax.Array | int, lora: Params | None = None,
                       lora_cfg: Any = None) -> tuple[jax.Array, dict[str, Any]]:
  """Writes the T new keys/values into cache slots [index, index+T) and attends over all slots;
  returns (float32 logits [B, T, V], new cache). The cache is donated; its layout (`init_cache`'s
  `per_layer`) must match the params'. `lora`/`lora_cfg`: an adapter, as in `forward`."""
  per_layer = is_per_layer(params)
  if isinstance(cache["k"], (tuple, list)) != per_layer:
    raise ValueError("KV cache layout does not match the params: use init_cache(..., per_layer="
                     f"{per_layer}) with {'per-layer' if per_layer else 'stacked'} params")
  return Llama(config, per_layer=per_layer, lora=lora_cfg).apply(
      _variables(params, lora, lora_cfg), tokens, positions, segment_ids, cache=cache,
      cache_index=index)
