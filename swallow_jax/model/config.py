"""LlamaConfig: the architecture and how it is computed, mapped to and from HF `config.json`."""

from __future__ import annotations

import dataclasses
from typing import Any

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "qkv_proj", "qkv_proj_attn_out",
                  "dots_no_batch_attn_out")
ATTENTION_BACKENDS = ("auto", "reference", "xla", "dot_product", "cudnn", "splash")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama 3.1 RoPE frequency scaling (HF `rope_type: llama3`)."""

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if not self.factor >= 1.0:
      raise ValueError(f"rope_scaling.factor must be >= 1, got {self.factor}")
    if not 0 < self.low_freq_factor < self.high_freq_factor:
      raise ValueError(
          "rope_scaling.low_freq_factor must be > 0 and < high_freq_factor, got "
          f"low_freq_factor={self.low_freq_factor} high_freq_factor={self.high_freq_factor}")
    if self.original_max_position_embeddings <= 0:
      raise ValueError("rope_scaling.original_max_position_embeddings must be > 0, got "
                       f"{self.original_max_position_embeddings}")

  @classmethod
  def from_hf(cls, d: dict[str, Any] | None) -> RopeScaling | None:
    """Reads HF's `rope_scaling` / `rope_parameters` dict; None or default type -> None."""
    if not d:
      return None
    kind = d.get("rope_type", d.get("type", "default"))
    if kind == "default":
      return None
    if kind != "llama3":
      raise ValueError(f"rope_scaling: only rope_type 'llama3' is supported, got {kind!r}")
    try:
      return cls(factor=float(d["factor"]), low_freq_factor=float(d["low_freq_factor"]),
                 high_freq_factor=float(d["high_freq_factor"]),
                 original_max_position_embeddings=int(d["original_max_position_embeddings"]))
    except KeyError as e:
      raise ValueError(f"rope_scaling: missing key {e.args[0]!r} in {d}") from None

  def to_hf(self) -> dict[str, Any]:
    return {"rope_type": "llama3", "factor": self.factor, "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Llama 3 architecture (HF semantics) plus how to compute it. Hashable: a valid jit static arg."""

  vocab_size: int = 128256
  hidden_size: int = 4096
  intermediate_size: int = 14336
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 8
  head_dim: int = 128
  rope_theta: float = 500000.0
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-5
  max_position_embeddings: int = 8192
  tie_word_embeddings: bool = False
  bos_token_id: int = 128000
  eos_token_id: tuple[int, ...] = (128001,)
  pad_token_id: int | None = None
  unk_token_id: int | None = None
  # How to compute (not part of the architecture; not written to config.json).
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = True
  attention: str = "auto"

  def __post_init__(self):
    if isinstance(self.eos_token_id, int):
      object.__setattr__(self, "eos_token_id", (self.eos_token_id,))
    elif isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", RopeScaling.from_hf(self.rope_scaling))
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_position_embeddings"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"LlamaConfig.{name} must be a positive int, got {v!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"LlamaConfig.num_kv_heads={self.num_kv_heads} must divide "
                       f"num_heads={self.num_heads}")
    if self.head_dim % 2:
      raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.head_dim}")
    if not self.rope_theta > 0:
      raise ValueError(f"LlamaConfig.rope_theta must be > 0, got {self.rope_theta}")
    if not self.rms_norm_eps > 0:
      raise ValueError(f"LlamaConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps}")
    if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
      raise ValueError(f"LlamaConfig.rope_scaling must be None or RopeScaling, got {self.rope_scaling!r}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"LlamaConfig.{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"LlamaConfig.remat_policy must be one of {REMAT_POLICIES}, "
                       f"got {self.remat_policy!r}")
    if self.attention not in ATTENTION_BACKENDS:
      raise ValueError(f"LlamaConfig.attention must be one of {ATTENTION_BACKENDS}, "
                       f"got {self.attention!r}")

  @property
  def num_params(self) -> int:
    d, f, v, l = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
    attn = d * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    per_layer = attn + 3 * d * f + 2 * d
    return v * d * (1 if self.tie_word_embeddings else 2) + l * per_layer + d

  @classmethod
  def from_hf(cls, d: dict[str, Any], **overrides: Any) -> LlamaConfig:
    """Builds a config from an HF `config.json` dict (transformers 4.x or 5.x layout)."""
    if d.get("model_type", "llama") != "llama":
      raise ValueError(f"model_type must be 'llama', got {d.get('model_type')!r}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads"):
      if key not in d:
        raise ValueError(f"HF config is missing {key!r}")
    if d.get("hidden_act", "silu") != "silu":
      raise ValueError(f"hidden_act must be 'silu', got {d['hidden_act']!r}")
    for key in ("attention_bias", "mlp_bias"):
      if d.get(key):
        raise ValueError(f"{key}=true is not supported (Llama 3 has no biases)")
    # transformers 5 keeps rope_theta and the scaling in `rope_parameters`; 4.x at the top level.
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
    heads = d["num_attention_heads"]
    eos = d.get("eos_token_id", 128001)
    kw = dict(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"], num_layers=d["num_hidden_layers"],
        num_heads=heads, num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // heads, rope_theta=float(theta),
        rope_scaling=RopeScaling.from_hf(rope), rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
        max_position_embeddings=d.get("max_position_embeddings", 8192),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        bos_token_id=d.get("bos_token_id", 128000),
        eos_token_id=tuple(eos) if isinstance(eos, (list, tuple)) else (eos,),
        pad_token_id=d.get("pad_token_id"), unk_token_id=d.get("unk_token_id"))
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    """The HF `config.json` dict (loadable by transformers 4.45+ and 5.x LlamaForCausalLM)."""
    eos = self.eos_token_id[0] if len(self.eos_token_id) == 1 else list(self.eos_token_id)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim, "hidden_act": "silu",
        "max_position_embeddings": self.max_position_embeddings, "initializer_range": 0.02,
        "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
        "rope_scaling": self.rope_scaling.to_hf() if self.rope_scaling else None,
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "pretraining_tp": 1, "tie_word_embeddings": self.tie_word_embeddings,
        "bos_token_id": self.bos_token_id, "eos_token_id": eos,
        **{k: getattr(self, k) for k in ("pad_token_id", "unk_token_id")
           if getattr(self, k) is not None},
        "use_cache": True,
        "torch_dtype": "bfloat16",
    }
