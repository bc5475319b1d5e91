"""Hugging Face Llama safetensors <-> swallow_jax params (rename + transpose, nothing else).

Name mapping (kernel = HF weight.T; per-layer HF tensors stack on a leading layer axis):

    model.embed_tokens.weight                  embed/embedding            [V, D]
    model.layers.{i}.input_layernorm.weight    layers/attn_norm/scale     [L, D]
    model.layers.{i}.self_attn.q_proj.weight   layers/attn/q_proj/kernel  [L, D, H*Dh]   (.T)
    ... k_proj, v_proj, o_proj; post_attention_layernorm -> mlp_norm; mlp.{gate,up,down}_proj
    model.norm.weight                          final_norm/scale           [D]
    lm_head.weight                             lm_head/kernel             [D, V]        (.T)

Reading and writing live in `swallow_jax.model.io` (`load`, `save_hf`).
"""

from __future__ import annotations

import re

from swallow_jax.model.config import LlamaConfig

Path = tuple[str, ...]
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_GLOBAL = {
    "model.embed_tokens.weight": ("embed", "embedding"),
    "model.norm.weight": ("final_norm", "scale"),
    "lm_head.weight": ("lm_head", "kernel"),
}
_PER_LAYER = {
    "input_layernorm.weight": ("layers", "attn_norm", "scale"),
    "post_attention_layernorm.weight": ("layers", "mlp_norm", "scale"),
    **{f"self_attn.{p}.weight": ("layers", "attn", p, "kernel")
       for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
    **{f"mlp.{p}.weight": ("layers", "mlp", p, "kernel")
       for p in ("gate_proj", "up_proj", "down_proj")},
}
_HF_NAME = {p: n for n, p in {**_GLOBAL, **_PER_LAYER}.items()}  # global name or layer suffix
IGNORED = re.compile(r".*rotary_emb\.inv_freq$")  # buffers some old exports carry
# Every parameter path in HF file order (embed, layers, norm, lm_head).
PARAM_ORDER = (_GLOBAL["model.embed_tokens.weight"], *_PER_LAYER.values(),
               _GLOBAL["model.norm.weight"], _GLOBAL["lm_head.weight"])


def hf_to_param_name(name: str) -> tuple[Path, int | None]:
  """'model.layers.3.self_attn.q_proj.weight' -> (('layers', 'attn', 'q_proj', 'kernel'), 3);
  global tensors give layer None. Raises KeyError naming the tensor if it is not a Llama weight."""
  if name in _GLOBAL:
    return _GLOBAL[name], None
  m = _LAYER_RE.fullmatch(name)
  if m and m.group(2) in _PER_LAYER:
    return _PER_LAYER[m.group(2)], int(m.group(1))
  raise KeyError(f"{name!r} is not a Llama weight name")


def param_to_hf_names(path: Path, num_layers: int) -> list[str]:
  """Param path -> HF tensor names: one per layer for stacked params, else a single name."""
  path = tuple(path)
  if path not in _HF_NAME:
    raise KeyError(f"{'/'.join(path)!r} is not a Llama parameter path")
  name = _HF_NAME[path]
  return [f"model.layers.{i}.{name}" for i in range(num_layers)] if path[0] == "layers" else [name]


def is_transposed(path: Path) -> bool:
  """Kernels are HF `weight.T`; embeddings and norm scales are stored as in HF."""
  return path[-1] == "kernel"


def param_paths(config: LlamaConfig) -> list[Path]:
  """Every parameter path of `config`, in HF file order (embed, layers, norm, lm_head)."""
  return list(PARAM_ORDER[:-1] if config.tie_word_embeddings else PARAM_ORDER)

