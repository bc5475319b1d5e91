"""swallow_jax: the Llama 3 Swallow recipe (continual pretraining, chat vector, SFT, evaluation) in JAX.

The public API is small and imported lazily so that `import swallow_jax` stays cheap:

    config, params = sj.load_hf(path, dtype=jnp.float32)
    sj.save_hf(path, config, params, dtype=jnp.bfloat16)
    logits = sj.forward(config, params, tokens, positions=None, segment_ids=None)
    new_tokens = sj.generate(config, params, prompts, max_new_tokens, temperature=0.0)
"""

import importlib
from typing import Any

_PUBLIC = {
    "load_hf": "swallow_jax.model.hf",
    "save_hf": "swallow_jax.model.hf",
    "forward": "swallow_jax.model",
    "LlamaConfig": "swallow_jax.model",
    "generate": "swallow_jax.generate",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
  if name in _PUBLIC:
    return getattr(importlib.import_module(_PUBLIC[name]), name)
  raise AttributeError(f"module 'swallow_jax' has no attribute {name!r}")
