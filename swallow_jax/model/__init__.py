"""Llama 3 in Flax linen: config + presets, the module, functional forward / KV-cache decoding."""

from swallow_jax.model import lora, presets
from swallow_jax.model.config import LlamaConfig, RopeScaling
from swallow_jax.model.llama import (Llama, forward, forward_with_cache, init_cache, init_params,
                                     is_per_layer, param_logical_axes, unstack_layers)

__all__ = ["LlamaConfig", "RopeScaling", "Llama", "lora", "presets", "init_params", "forward",
           "init_cache", "forward_with_cache", "param_logical_axes", "unstack_layers",
           "is_per_layer"]
