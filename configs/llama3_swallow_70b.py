r"""Llama 3 Swallow 70B, the whole recipe: the 8B recipe (configs/llama3_swallow_8b.py) with
Llama 3 70B, the 70B CPT config (configs/llama3_swallow_70b_cpt.py: peak LR 1e-5 -> 1e-6) and
SFT at peak LR 1e-6.

    python -m swallow_jax.recipe --config=configs/llama3_swallow_70b.py:v5p-512,root=/mnt/swallow \
        --workdir=/mnt/swallow/runs/llama3_swallow_70b

Arg: HARDWARE[,root=...,data_root=...,models_root=...,tasks_root=...] with HARDWARE v5p-512
(default) or 64xh100; models_root holds Meta-Llama-3-70B and Meta-Llama-3-70B-Instruct.
The chat vector stage streams tensors, so it runs on one host of modest memory; the training
stages need the slice (start them with --stages=cpt / --stages=sft on every host).
"""

import os

import ml_collections

from configs import common
from configs import llama3_swallow_70b_cpt as cpt_70b
from configs import llama3_swallow_8b as recipe_8b

SFT_LR = 1e-6


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The 70B recipe for 'HARDWARE[,root=...,data_root=...,models_root=...,tasks_root=...]'."""
  hardware, opts = common.split_arg(arg, cpt_70b.HARDWARE, "v5p-512", **common.ROOT_OPTIONS)
  opts = common.with_roots(opts)
  base_name = "Meta-Llama-3-70B"
  cpt = cpt_70b.get_config(f"{hardware},data_root={opts.data_root},"
                           f"init_from={os.path.join(opts.models_root, base_name)}")
  return common.swallow_recipe(cpt, opts, base_name=base_name, sft_lr=SFT_LR,
                               sft_sets=recipe_8b.SFT_SETS, title="Llama 3 Swallow 70B")
