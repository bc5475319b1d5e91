"""AdamW with global-norm clipping, no decay on norm scales, warmup + cosine to a minimum LR.

Swallow (Megatron-LM): AdamW b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1, gradient clipping 1.0,
linear warmup then cosine decay to peak_lr * min_lr_ratio.
"""

from collections.abc import Mapping
from typing import Any

import jax
import optax

NO_DECAY_LEAVES = ("scale", "bias")


def schedule(opt_cfg: Mapping[str, Any]) -> optax.Schedule:
  """lr(step): 0 -> peak_lr linearly over warmup_steps, then cosine to peak_lr * min_lr_ratio.

  `decay_steps` is the schedule's total length including warmup (optax convention); the LR stays
  at the minimum after it.
  """
  peak = float(opt_cfg["peak_lr"])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=int(opt_cfg["warmup_steps"]),
      decay_steps=int(opt_cfg["decay_steps"]),
      end_value=peak * float(opt_cfg.get("min_lr_ratio", 0.1)))


def decay_mask(params: Any) -> Any:
  """True where weight decay applies: every kernel and embedding, not norm scales or biases."""
  def keep(path, _):
    return getattr(path[-1], "key", None) not in NO_DECAY_LEAVES
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(opt_cfg: Mapping[str, Any]) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (transformation, lr schedule). Clipping happens before the Adam moments."""
  lr = schedule(opt_cfg)
  parts = []
  if opt_cfg.get("clip_norm"):
    parts.append(optax.clip_by_global_norm(float(opt_cfg["clip_norm"])))
  parts.append(optax.adamw(lr, b1=float(opt_cfg.get("b1", 0.9)), b2=float(opt_cfg.get("b2", 0.95)),
                           eps=float(opt_cfg.get("eps", 1e-8)),
                           weight_decay=float(opt_cfg.get("weight_decay", 0.1)), mask=decay_mask))
  return optax.chain(*parts), lr
