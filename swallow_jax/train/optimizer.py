"""AdamW with global-norm clipping, no decay on norm scales, warmup + cosine to a minimum LR.

Swallow (Megatron-LM): AdamW b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1, gradient clipping 1.0.
"""

from collections.abc import Mapping
from typing import Any

import jax
import optax

from swallow_jax.config_utils import OptimizerSpec, as_section

NO_DECAY_LEAVES = ("scale", "bias")


def schedule(opt_cfg: OptimizerSpec | Mapping[str, Any]) -> optax.Schedule:
  """lr(step): 0 -> peak_lr linearly over warmup_steps, then cosine to peak_lr * min_lr_ratio.

  `decay_steps` is the total length including warmup (optax); the LR stays at the minimum after.
  """
  opt = as_section(OptimizerSpec, opt_cfg, "optimizer")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.peak_lr, warmup_steps=opt.warmup_steps,
      decay_steps=opt.decay_steps, end_value=opt.peak_lr * opt.min_lr_ratio)


def decay_mask(params: Any) -> Any:
  """True where weight decay applies: every kernel and embedding, not norm scales or biases."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) not in NO_DECAY_LEAVES, params)


def make_optimizer(opt_cfg: OptimizerSpec | Mapping[str, Any]
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (transformation, lr schedule). Clipping happens before the Adam moments."""
  opt = as_section(OptimizerSpec, opt_cfg, "optimizer")
  lr = schedule(opt)
  clip = [optax.clip_by_global_norm(opt.clip_norm)] if opt.clip_norm else []
  return optax.chain(*clip, optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                                        weight_decay=opt.weight_decay, mask=decay_mask)), lr
