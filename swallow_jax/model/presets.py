"""Named LlamaConfigs: the Llama 3 family (HF config.json values), tiny sizes for tests and demos.

    cfg = presets.get('llama3_1_8b')
    cfg = dataclasses.replace(presets.get('tiny'), dtype='bfloat16')
"""

import dataclasses
from typing import Any

from swallow_jax.model.config import LlamaConfig, RopeScaling

_LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                  num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
                  max_position_embeddings=8192, bos_token_id=128000, eos_token_id=(128001,))
_LLAMA3_70B = dict(_LLAMA3_8B, hidden_size=8192, intermediate_size=28672, num_layers=80,
                   num_heads=64)
# Test and demo sizes (vocab_size is usually overridden to the tokenizer's).
_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
             num_kv_heads=4, head_dim=16, max_position_embeddings=512, bos_token_id=1,
             eos_token_id=(2,))
_LLAMA31 = dict(rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), max_position_embeddings=131072)

PRESETS: dict[str, dict[str, Any]] = {
    "llama3_8b": _LLAMA3_8B,
    "llama3_70b": _LLAMA3_70B,
    "llama3_1_8b": dict(_LLAMA3_8B, **_LLAMA31),
    "llama3_1_70b": dict(_LLAMA3_70B, **_LLAMA31),
    "llama3_2_1b": dict(_LLAMA3_8B, hidden_size=2048, intermediate_size=8192, num_layers=16,
                        head_dim=64, tie_word_embeddings=True, max_position_embeddings=131072,
                        rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192)),
    "tiny": _TINY,
    "tiny_gqa": dict(_TINY, num_kv_heads=2, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64)),
    # ~7M parameters: trains a few hundred steps on CPU in minutes.
    "small": dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_layers=4,
                  num_heads=4, num_kv_heads=2, head_dim=64, max_position_embeddings=2048,
                  bos_token_id=1, eos_token_id=(2,)),
}


def get(name: str, **overrides: Any) -> LlamaConfig:
  """Returns the preset `name` with `overrides` applied (any LlamaConfig field)."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
  unknown = set(overrides) - {f.name for f in dataclasses.fields(LlamaConfig)}
  if unknown:
    raise ValueError(f"unknown LlamaConfig field(s) {sorted(unknown)} for preset {name!r}")
  return LlamaConfig(**{**PRESETS[name], **overrides})
