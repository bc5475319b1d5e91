"""The Llama 3 Swallow recipe in JAX: continual pretraining, chat vector, SFT, evaluation.

The public API is small and imported lazily so that `import swallow_jax` stays cheap:

    config, params = sj.load_hf(path, dtype=jnp.float32)  # any model path (swallow_jax.model.io)
    sj.save_hf(path, config, params, dtype=jnp.bfloat16)
    logits = sj.forward(config, params, tokens, positions=None, segment_ids=None)
    new_tokens = sj.generate(config, params, prompts, max_new_tokens, temperature=0.0)
"""

import importlib
import sys
import types
from typing import Any

# public name -> (module, attribute)
_PUBLIC = {
    "load_hf": ("swallow_jax.model.io", "load"),
    "save_hf": ("swallow_jax.model.io", "save_hf"),
    "resolve_model": ("swallow_jax.model.io", "resolve"),
    "forward": ("swallow_jax.model", "forward"),
    "LlamaConfig": ("swallow_jax.model", "LlamaConfig"),
    "generate": ("swallow_jax.decode", "generate"),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
  if name not in _PUBLIC:
    raise AttributeError(f"module 'swallow_jax' has no attribute {name!r}")
  module, attribute = _PUBLIC[name]
  globals()[name] = value = getattr(importlib.import_module(module), attribute)
  return value


class _Package(types.ModuleType):
  """Keeps each public name bound to its function.

  Importing a submodule makes Python bind it as an attribute of the package; the command-line
  module `swallow_jax.generate` would then shadow the function `sj.generate`.
  """

  def __setattr__(self, name: str, value: Any) -> None:
    if name in _PUBLIC and isinstance(value, types.ModuleType):
      return
    super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
