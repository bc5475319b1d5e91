"""LoRA adapters (Hu et al. 2021) for the Llama projections, PEFT-compatible files, merging.

An adapter is its own pytree mirroring the param paths it adapts, in either params layout:
stacked `adapter["layers"]["attn"]["q_proj"] = {"lora_a": [L, in, r], "lora_b": [L, r, out]}`
or per-layer ("layers_0", ... via `llama.unstack_layers`). In our kernel orientation (HF weight.T)
the update is `x @ A @ B * scale`; PEFT stores lora_A.weight = A.T [r, in], lora_B.weight = B.T.
"""

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from swallow_jax.fileio import atomic_dir, read_json, write_json
from swallow_jax.model.config import LlamaConfig
from swallow_jax.model.llama import Params, is_per_layer, param_logical_axes

# Projection name -> (parent module in our tree, parent module in HF/PEFT names).
TARGETS = {"q_proj": ("attn", "self_attn"), "k_proj": ("attn", "self_attn"),
           "v_proj": ("attn", "self_attn"), "o_proj": ("attn", "self_attn"),
           "gate_proj": ("mlp", "mlp"), "up_proj": ("mlp", "mlp"), "down_proj": ("mlp", "mlp")}
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
# Top-level params that `LoraConfig.trainable` may train in full beside the adapter.
EXTRA_TRAINABLE = ("embed", "lm_head", "final_norm")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank 0 = no adapter. scale = alpha / rank (alpha / sqrt(rank) with `rslora`).

  `trainable`: top-level params (of EXTRA_TRAINABLE, e.g. "embed" for the embeddings of added
  tokens) that training updates in full, in fp32, beside the adapter (PEFT's modules_to_save).
  """

  rank: int = 0
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple[str, ...] = tuple(TARGETS)
  rslora: bool = False
  trainable: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    object.__setattr__(self, "trainable", tuple(self.trainable))
    bad = sorted(set(self.trainable) - set(EXTRA_TRAINABLE))
    if bad:
      raise ValueError(f"LoraConfig.trainable: unknown {bad}; choose from "
                       f"{list(EXTRA_TRAINABLE)}")
    if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
      raise ValueError(f"LoraConfig.rank must be an int >= 0, got {self.rank!r}")
    if not 0 <= self.dropout < 1:
      raise ValueError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")
    unknown = sorted(set(self.targets) - set(TARGETS))
    if unknown or not self.targets:
      raise ValueError(f"LoraConfig.targets: unknown or empty {unknown}; choose from "
                       f"{list(TARGETS)}")

  @property
  def scale(self) -> float:
    """The factor on `x @ A @ B`."""
    return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "LoraConfig":
    """From a mapping such as the ml_collections `config.model.lora`; unknown keys are an error."""
    d = dict(d)
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"config.model.lora: unknown keys {unknown}")
    return cls(**d)


def _kernel_paths(lora_cfg: LoraConfig) -> list[tuple[str, ...]]:
  return [("layers", TARGETS[t][0], t) for t in lora_cfg.targets]


def lora_logical_axes(config: LlamaConfig, lora_cfg: LoraConfig) -> Params:
  """The stacked adapter's tree with logical axis names: A shards like its kernel's input axis,
  B like its output axis; the rank axis is replicated."""
  axes = traverse_util.flatten_dict(param_logical_axes(config),
                                    is_leaf=lambda _, x: isinstance(x, tuple))
  out = {}
  for path in _kernel_paths(lora_cfg):
    layers, d_in, d_out = axes[(*path, "kernel")]
    out[(*path, "lora_a")] = (layers, d_in, None)
    out[(*path, "lora_b")] = (layers, None, d_out)
  return traverse_util.unflatten_dict(out)


def init_lora(config: LlamaConfig, lora_cfg: LoraConfig, rng: jax.Array,
              dtype: Any = jnp.float32) -> Params:
  """A new stacked adapter: A as PEFT (kaiming-uniform a=sqrt(5): U(±1/sqrt(in))), B zero, so the
  adapted model starts equal to the base. Jit with out_shardings to create it sharded."""
  return _init_adapter(config.num_layers, projection_dims(config), lora_cfg, rng, dtype)


def init_lora_like(params: Params, lora_cfg: LoraConfig, rng: jax.Array,
                   dtype: Any = jnp.float32) -> Params:
  """`init_lora` with the shapes read from stacked `params` (or their ShapeDtypeStructs)."""
  dims = {}
  for path in _kernel_paths(lora_cfg):
    kernel = adapter_leaf(params, (*path, "kernel"))
    num_layers, *dims[path[-1]] = kernel.shape
  return _init_adapter(num_layers, dims, lora_cfg, rng, dtype)


def _init_adapter(l: int, dims: Mapping[str, tuple[int, int]], lora_cfg: LoraConfig,
                  rng: jax.Array, dtype: Any) -> Params:
  if lora_cfg.rank == 0:
    raise ValueError("init_lora: LoraConfig.rank is 0 (LoRA off)")
  r = lora_cfg.rank
  out = {}
  for key, path in zip(jax.random.split(rng, len(lora_cfg.targets)), _kernel_paths(lora_cfg)):
    d_in, d_out = dims[path[-1]]
    bound = 1.0 / math.sqrt(d_in)
    out[(*path, "lora_a")] = jax.random.uniform(key, (l, d_in, r), dtype, -bound, bound)
    out[(*path, "lora_b")] = jnp.zeros((l, r, d_out), dtype)
  return traverse_util.unflatten_dict(out)


def projection_dims(config: LlamaConfig) -> dict[str, tuple[int, int]]:
  """(in, out) features of each projection."""
  d, f = config.hidden_size, config.intermediate_size
  q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
          "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def merge_lora(config: LlamaConfig, params: Params, adapter: Params,
               lora_cfg: LoraConfig) -> Params:
  """params with `W + scale * A @ B` in every adapted kernel (fp32 products, cast back to each
  kernel's dtype); both must be in the same layout. The inputs are not modified."""
  if is_per_layer(params) != is_per_layer(adapter):
    raise ValueError("merge_lora: params and adapter must share a layout (stacked or per-layer)")
  flat = traverse_util.flatten_dict(params)
  for path, a in traverse_util.flatten_dict(adapter).items():
    if path[-1] != "lora_a":
      continue
    b = adapter_leaf(adapter, (*path[:-1], "lora_b"))
    kpath = (*path[:-1], "kernel")
    if kpath not in flat:
      raise ValueError(f"merge_lora: adapter tensor {'/'.join(path)} has no kernel in params")
    w = flat[kpath]
    flat[kpath] = (jnp.asarray(w, jnp.float32) + lora_delta(a, b, lora_cfg.scale)).astype(w.dtype)
  return traverse_util.unflatten_dict(flat)


def lora_delta(a: Any, b: Any, scale: float) -> jax.Array:
  """scale * A @ B in fp32 (HIGHEST precision): the update `merge_lora` adds to a kernel, for
  stacked [L, in, r] @ [L, r, out] or one layer's [in, r] @ [r, out] (the same bits per layer)."""
  return scale * jnp.matmul(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                            precision=jax.lax.Precision.HIGHEST)


def adapter_leaf(adapter: Params, path: tuple[str, ...]) -> Any:
  """The adapter (or params) array at `path`; a missing one is an error naming it."""
  node = adapter
  for k in path:
    if not isinstance(node, Mapping) or k not in node:
      raise ValueError(f"LoRA adapter or params have no tensor {'/'.join(path)}")
    node = node[k]
  return node


def save_peft(path: str, config: LlamaConfig, adapter: Params, lora_cfg: LoraConfig,
              base_model_name_or_path: str = "", overwrite: bool = False) -> None:
  """Writes a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors) atomically,
  loadable by `peft.PeftModel.from_pretrained` over the HF model of `config`."""
  if lora_cfg.trainable:
    raise ValueError(f"save_peft: LoraConfig.trainable={list(lora_cfg.trainable)} (fully trained "
                     "tensors) has no PEFT file form here; export the merged model instead")
  if is_per_layer(adapter):
    adapter = {"layers": jax.tree.map(lambda *xs: np.stack(xs), *(
        adapter[f"layers_{i}"] for i in range(config.num_layers)))}
  tensors = {}
  for target in lora_cfg.targets:
    ours, hf = TARGETS[target]
    a = np.asarray(adapter_leaf(adapter, ("layers", ours, target, "lora_a")), np.float32)
    b = np.asarray(adapter_leaf(adapter, ("layers", ours, target, "lora_b")), np.float32)
    for i in range(config.num_layers):
      prefix = f"base_model.model.model.layers.{i}.{hf}.{target}"
      tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
      tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
  peft_cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora_cfg.rank,
              "lora_alpha": lora_cfg.alpha, "lora_dropout": lora_cfg.dropout,
              "target_modules": list(lora_cfg.targets), "bias": "none", "fan_in_fan_out": False,
              "use_rslora": lora_cfg.rslora, "use_dora": False, "modules_to_save": None,
              "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True,
              "base_model_name_or_path": base_model_name_or_path}
  with atomic_dir(path, overwrite=overwrite) as tmp:
    write_json(os.path.join(tmp, CONFIG_FILE), peft_cfg)
    save_file(tensors, os.path.join(tmp, WEIGHTS_FILE))


_NAME_RE = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\."
                      r"lora_(A|B)(?:\.default)?\.weight$")


def _peft_config(file: str) -> LoraConfig:
  d = read_json(file)
  if d.get("peft_type") != "LORA":
    raise ValueError(f"{file}: peft_type {d.get('peft_type')!r} is not supported (only LORA)")
  bad = {k: d[k] for k in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save",
                           "fan_in_fan_out", "lora_bias", "layers_to_transform") if d.get(k)}
  if d.get("bias", "none") != "none":
    bad["bias"] = d["bias"]
  if bad:
    raise ValueError(f"{file}: unsupported LoRA options {bad}")
  targets = d.get("target_modules")
  if isinstance(targets, str) or not targets or set(targets) - set(TARGETS):
    raise ValueError(f"{file}: target_modules {targets!r} must be a list of {list(TARGETS)}")
  return LoraConfig(rank=int(d["r"]), alpha=float(d["lora_alpha"]),
                    dropout=float(d.get("lora_dropout") or 0.0),
                    targets=tuple(t for t in TARGETS if t in targets),
                    rslora=bool(d.get("use_rslora")))


def load_peft(path: str, config: LlamaConfig) -> tuple[Params, LoraConfig]:
  """Reads a PEFT LoRA directory made for the HF Llama of `config` -> (stacked fp32 adapter,
  LoraConfig). What we do not support (DoRA, rank/alpha patterns, biases, modules_to_save,
  fan_in_fan_out, partial layers, non-Llama tensor names) is refused in one line."""
  lora_cfg = _peft_config(os.path.join(path, CONFIG_FILE))
  file = os.path.join(path, WEIGHTS_FILE)
  tensors = load_file(file)
  dims, r, l = projection_dims(config), lora_cfg.rank, config.num_layers
  stacks = {(t, ab): [None] * l for t in lora_cfg.targets for ab in "AB"}
  for name, value in tensors.items():
    m = _NAME_RE.match(name)
    if not m or (m[3], m[4]) not in stacks or int(m[1]) >= l or TARGETS[m[3]][1] != m[2]:
      raise ValueError(f"{file}: tensor {name} is not a LoRA tensor of this {l}-layer Llama "
                       f"with targets {list(lora_cfg.targets)}")
    d_in, d_out = dims[m[3]]
    want = (r, d_in) if m[4] == "A" else (d_out, r)
    if value.shape != want:
      raise ValueError(f"{file}: tensor {name} has shape {value.shape}, expected {want}")
    stacks[(m[3], m[4])][int(m[1])] = np.asarray(value, np.float32).T
  out = {}
  for (target, ab), layers in stacks.items():
    missing = [i for i, x in enumerate(layers) if x is None]
    if missing:
      raise ValueError(f"{file}: no lora_{ab} for {target} in layers {missing}")
    path = ("layers", TARGETS[target][0], target, f"lora_{ab.lower()}")
    out[path] = jnp.asarray(np.stack(layers))
  return traverse_util.unflatten_dict(out), lora_cfg
