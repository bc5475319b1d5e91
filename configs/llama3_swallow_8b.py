r"""Llama 3 Swallow 8B, the whole recipe: CPT -> chat vector -> SFT -> evaluation.

    python -m swallow_jax.recipe --config=configs/llama3_swallow_8b.py:v5p-128,root=/mnt/swallow \
        --workdir=/mnt/swallow/runs/llama3_swallow_8b

Stages (each in WORKDIR/<stage>; see swallow_jax/recipe.py; the builders are configs/common.py):
  cpt          Meta-Llama-3-8B continually pretrained on the Swallow mixture: exactly
               configs/llama3_swallow_8b_cpt.py (peak LR 2.5e-5 -> 2.5e-6, 1,000 warmup, 12,500
               steps of 1,024 x 8,192 tokens), exported as an HF directory.
  chat_vector  swallow_base + 0.5 * (Meta-Llama-3-8B-Instruct - Meta-Llama-3-8B), all tensors (the
               vocabulary is Llama 3's, unchanged).
  sft          SFT of that on Swallow-Instruct-v0.1 (the data the Llama 3 Swallow Instruct v0.1 card
               names: oasst2-top1-en 5,334 conversations, oasst1-21k-ja-imitation_alpha 21,120 and
               _beta 21,035), Llama 3 chat template, loss on assistant turns only (as the dataset
               card recommends), peak LR 2e-6, global batch 256 sequences of 8,192 tokens.
  eval         the five models below on the task files in ROOT/tasks.

Numbers that are OUR CHOICE, not published: NEFTune alpha 5 (the NEFTune paper's usual setting;
the Swallow pages give no value), 2 SFT epochs, 5% warmup and cosine decay to 10% for SFT, the
task file names, and the evaluation batch/length.

Arg: HARDWARE[,root=DIR][,data_root=...][,models_root=...][,tasks_root=...]
  HARDWARE: v5p-128 (default), v5p-128x2, 8xh100 (configs/llama3_swallow_8b_cpt.py).
  root: base directory; data_root defaults to ROOT/data (each corpus preprocessed to
  DATA_ROOT/<source>, SFT sets to DATA_ROOT/sft/<name>), models_root to ROOT/hf (HF directories
  Meta-Llama-3-8B and Meta-Llama-3-8B-Instruct), tasks_root to ROOT/tasks.
"""

import os

import ml_collections

from configs import common
from configs import llama3_swallow_8b_cpt as cpt_8b

# (name, conversations): Swallow-Instruct-v0.1, the SFT data of Llama 3 Swallow Instruct v0.1.
SFT_SETS = (("oasst2_top1_en", 5334), ("oasst1_21k_ja_imitation_alpha", 21120),
            ("oasst1_21k_ja_imitation_beta", 21035))
SFT_LR = 2e-6


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The 8B recipe for 'HARDWARE[,root=...,data_root=...,models_root=...,tasks_root=...]'."""
  hardware, opts = common.split_arg(arg, cpt_8b.HARDWARE, "v5p-128", **common.ROOT_OPTIONS)
  opts = common.with_roots(opts)
  base_name = "Meta-Llama-3-8B"
  cpt = common.cpt_config(preset="llama3_8b", peak_lr=cpt_8b.PEAK_LR,
                          hw=cpt_8b.HARDWARE[hardware], data_root=opts.data_root,
                          init_from=os.path.join(opts.models_root, base_name))
  return common.swallow_recipe(cpt, opts, base_name=base_name, sft_lr=SFT_LR, sft_sets=SFT_SETS,
                               title="Llama 3 Swallow 8B")
