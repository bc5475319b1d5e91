"""Rotary position embeddings, HF rotate-half convention, with Llama 3.1 frequency scaling."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from swallow_jax.model.config import RopeScaling


def inv_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
  """[head_dim // 2] float32 inverse frequencies; mirrors HF `_compute_llama3_parameters` op by op
  in float32 so the angles agree with transformers to the last bit or two."""
  f32 = np.float32
  inv_freq = f32(1.0) / (f32(theta) ** (np.arange(0, head_dim, 2).astype(f32) / f32(head_dim)))
  if scaling is None:
    return inv_freq
  factor, low = f32(scaling.factor), f32(scaling.low_freq_factor)
  high = f32(scaling.high_freq_factor)
  old_len = f32(scaling.original_max_position_embeddings)
  low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
  wavelen = f32(2 * math.pi) / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (f32(1) - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(medium, smoothed, scaled).astype(f32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates x [B, T, N, Dh] by positions [B, T]; angles in float32, result in x.dtype."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, Dh/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * cos + rotated * sin
