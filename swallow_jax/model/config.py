"""LlamaConfig: the architecture and how it is computed, mapped to and from HF `config.json`."""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "qkv_proj", "qkv_proj_attn_out",
                  "dots_no_batch_attn_out")
ATTENTION_BACKENDS = ("auto", "reference", "xla", "dot_product", "cudnn", "splash")
DTYPES = ("float32", "bfloat16", "float16")


def _checked(default: Any, ok: Callable[[Any], bool], want: str) -> Any:
  """A dataclass field whose value must pass `ok`; `want` ends the error "X.name must be ..."."""
  return dataclasses.field(default=default, metadata={"ok": ok, "want": want})


def _positive_int(default: int) -> Any:
  return _checked(default, lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
                  "a positive int")


def _one_of(default: str, choices: tuple[str, ...]) -> Any:
  return _checked(default, lambda v: v in choices, f"one of {choices}")


def _check_fields(obj: Any, prefix: str) -> None:
  """Raises ValueError for the first field of `obj` (in field order) that fails its check."""
  for f in dataclasses.fields(obj):
    value = getattr(obj, f.name)
    if "ok" in f.metadata and not f.metadata["ok"](value):
      raise ValueError(f"{prefix}.{f.name} must be {f.metadata['want']}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama 3.1 RoPE frequency scaling (HF `rope_type: llama3`)."""

  factor: float = _checked(8.0, lambda v: v >= 1.0, ">= 1")
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = _checked(8192, lambda v: v > 0, "> 0")

  def __post_init__(self):
    _check_fields(self, "rope_scaling")
    if not 0 < self.low_freq_factor < self.high_freq_factor:
      raise ValueError(
          "rope_scaling.low_freq_factor must be > 0 and < high_freq_factor, got "
          f"low_freq_factor={self.low_freq_factor} high_freq_factor={self.high_freq_factor}")

  @classmethod
  def from_hf(cls, d: dict[str, Any] | None) -> RopeScaling | None:
    """Reads HF's `rope_scaling` / `rope_parameters` dict; None or default type -> None."""
    kind = d.get("rope_type", d.get("type", "default")) if d else "default"
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
    """The `rope_scaling` entry of an HF config.json."""
    return {"rope_type": "llama3", "factor": self.factor, "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Llama 3 architecture (HF semantics) plus how to compute it. Hashable: a jit static arg."""

  vocab_size: int = _positive_int(128256)
  hidden_size: int = _positive_int(4096)
  intermediate_size: int = _positive_int(14336)
  num_layers: int = _positive_int(32)
  num_heads: int = _positive_int(32)
  num_kv_heads: int = _positive_int(8)
  head_dim: int = _positive_int(128)
  rope_theta: float = _checked(500000.0, lambda v: v > 0, "> 0")
  rope_scaling: RopeScaling | None = _checked(
      None, lambda v: v is None or isinstance(v, RopeScaling), "None or RopeScaling")
  rms_norm_eps: float = _checked(1e-5, lambda v: v > 0, "> 0")
  max_position_embeddings: int = _positive_int(8192)
  tie_word_embeddings: bool = False
  bos_token_id: int = 128000
  eos_token_id: tuple[int, ...] = (128001,)
  pad_token_id: int | None = None
  unk_token_id: int | None = None
  # How to compute (not part of the architecture; not written to config.json).
  param_dtype: str = _one_of("float32", DTYPES)
  dtype: str = _one_of("float32", DTYPES)
  remat_policy: str = _one_of("none", REMAT_POLICIES)
  scan_layers: bool = True
  attention: str = _one_of("auto", ATTENTION_BACKENDS)

  def __post_init__(self):
    if isinstance(eos := self.eos_token_id, (int, list)):
      object.__setattr__(self, "eos_token_id", tuple(eos) if isinstance(eos, list) else (eos,))
    if isinstance(self.rope_scaling, dict):
      object.__setattr__(self, "rope_scaling", RopeScaling.from_hf(self.rope_scaling))
    _check_fields(self, "LlamaConfig")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"LlamaConfig.num_kv_heads={self.num_kv_heads} must divide "
                       f"num_heads={self.num_heads}")
    if self.head_dim % 2:
      raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.head_dim}")

  @property
  def num_params(self) -> int:
    """Parameter count: embeddings (and an untied head), layers, final norm."""
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
    kw = dict(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"], num_layers=d["num_hidden_layers"],
        num_heads=heads, num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // heads, rope_theta=float(theta),
        rope_scaling=RopeScaling.from_hf(rope), rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
        max_position_embeddings=d.get("max_position_embeddings", 8192),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        bos_token_id=d.get("bos_token_id", 128000),
        eos_token_id=d.get("eos_token_id", 128001),
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
        "use_cache": True, "torch_dtype": "bfloat16",
    }
