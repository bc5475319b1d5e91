r"""Llama 3.1 Swallow 8B (v0.1), the whole recipe: CPT -> SFT -> evaluation.

    python -m swallow_jax.recipe --config=configs/llama3_1_swallow_8b.py:v5p-128,root=/mnt/swallow \
        --workdir=/mnt/swallow/runs/llama3_1_swallow_8b

What the model cards say: CPT of Llama 3.1 8B on about 200B tokens (Swallow Corpus Version 2,
Japanese and English Wikipedia, Laboro ParaCorpus, DCLM, Cosmopedia, code and math), and Instruct
models made by SFT on synthetic Japanese data (lmsys-chat-1m-synth, filtered Magpie-Ultra, and
Gemma-generated Magpie data). They mention no chat vector, so this recipe has none.
UNCONFIRMED here and marked as such: the mixture weights (swallow_jax.data.mixtures.
llama31_swallow_8b carries the Llama 3 Swallow shares over by role), the CPT learning rates (the
Llama 3 Swallow 8B ones), the step count (200B tokens / 8.4M tokens per step = 23,842 steps, our
arithmetic), and the SFT settings (those of configs/llama3_swallow_8b.py, equal set weights).

Arg: HARDWARE[,root=...,data_root=...,models_root=...,tasks_root=...] as configs/llama3_swallow_8b.py;
models_root holds Llama-3.1-8B and Llama-3.1-8B-Instruct (the latter only for evaluation).
"""

import math
import os

import ml_collections

from swallow_jax import recipe
from swallow_jax.data import mixtures
from configs import common
from configs import llama3_swallow_8b as recipe_8b
from configs import llama3_swallow_8b_cpt as cpt_8b

CPT_TOKENS = 200e9
# SFT sets named by the Llama 3.1 Swallow 8B Instruct v0.1 card; sizes unconfirmed, so equal
# weights (the conversation counts only set the step count: one epoch over ~1M conversations is
# our guess, replace it with the real counts).
SFT_SETS = (("lmsys_chat_1m_synth_ja", 250_000), ("filtered_magpie_ultra_ja", 250_000),
            ("filtered_magpie_ultra_en", 250_000), ("gemma_magpie", 250_000))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The Llama 3.1 Swallow 8B recipe for 'HARDWARE[,root=...,...]'."""
  hardware, opts = common.split_arg(arg, cpt_8b.HARDWARE, "v5p-128", **common.ROOT_OPTIONS)
  opts = common.with_roots(opts)
  base = os.path.join(opts.models_root, "Llama-3.1-8B")
  cpt = common.cpt_config(preset="llama3_1_8b", peak_lr=cpt_8b.PEAK_LR,
                          hw=cpt_8b.HARDWARE[hardware], data_root=opts.data_root, init_from=base)
  cpt.data.sources = mixtures.llama31_swallow_8b(opts.data_root)
  steps = math.ceil(CPT_TOKENS / (cpt.data.global_batch_size * cpt.data.seq_len))
  cpt.train.num_steps = steps
  cpt.optimizer.decay_steps = steps

  config = ml_collections.ConfigDict()
  config.stages = ("cpt", "sft", "eval")
  config.cpt = common.train_stage(cpt)
  config.sft = common.sft_stage(cpt, init_from=recipe.stage("cpt"), tokenizer=base,
                                lr=recipe_8b.SFT_LR, sets=SFT_SETS, data_root=opts.data_root,
                                epochs=1)
  config.eval = common.eval_stage(
      {"llama3_1": base, "llama3_1_instruct": base + "-Instruct",
       "swallow_base": recipe.stage("cpt"), "swallow_instruct": recipe.stage("sft")},
      tokenizer=base, tasks_root=opts.tasks_root)
  config.report = dict(title="Llama 3.1 Swallow 8B", comparisons=[
      dict(what="Continual pretraining", before="llama3_1", after="swallow_base",
           expect=dict(ja_ppl="down")),
      dict(what="SFT", before="swallow_base", after="swallow_instruct"),
      dict(what="Swallow Instruct vs Meta's Instruct", before="llama3_1_instruct",
           after="swallow_instruct")])
  return config
