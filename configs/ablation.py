r"""The corpus ablation of Llama 3 Swallow 8B: CPT without Cosmopedia, without Laboro ParaCorpus,
without OpenWebMath, each evaluated beside CPT on the full mixture.

    python -m swallow_jax.sweep --config=configs/ablation.py --dry-run
    python -m swallow_jax.sweep --config=configs/ablation.py --workdir_root=/mnt/swallow/runs/ablation
    python -m swallow_jax.recipe --config=configs/ablation.py:v5p-128,drop=cosmopedia,root=/mnt/swallow \
        --workdir=/mnt/swallow/runs/ablation/no_cosmopedia

Each run is a recipe with two stages: `cpt` (configs/llama3_swallow_8b_cpt.py with one source
removed) and `eval` (the CPT model on the tasks of configs/llama3_swallow_8b.py). Removing a
source RENORMALISES the others: every remaining weight is multiplied by the same factor, so the
run trains on the same number of tokens and the removed share goes to the other sources in
proportion (swallow_jax.data.mixtures.drop_source) -- mostly to the Swallow Corpus, which holds 81%.

Arg: HARDWARE[,drop=SOURCE][,steps=N][,root=...,data_root=...,models_root=...,tasks_root=...]
  drop: '' (the full mixture) or one of cosmopedia, laboro_paracorpus, openwebmath (any source
  name of swallow_jax.data.mixtures.llama3_swallow_8b works). steps: 0 keeps the recipe's 12,500;
  a smaller number shortens every run alike (warmup and decay follow).
"""

import os

import ml_collections

from swallow_jax import recipe
from swallow_jax.data.mixtures import drop_source
from configs import common
from configs import llama3_swallow_8b_cpt as cpt_8b

ABLATIONS = ("cosmopedia", "laboro_paracorpus", "openwebmath")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """One ablation run for 'HARDWARE[,drop=SOURCE][,steps=N][,root=...,...]'."""
  hardware, opts = common.split_arg(arg, cpt_8b.HARDWARE, default="v5p-128", drop="", steps="0",
                                    **common.ROOT_OPTIONS)
  opts = common.with_roots(opts)
  base = os.path.join(opts.models_root, "Meta-Llama-3-8B")
  cpt = common.cpt_config(preset="llama3_8b", peak_lr=cpt_8b.PEAK_LR,
                          hw=cpt_8b.HARDWARE[hardware], data_root=opts.data_root, init_from=base)
  if opts.drop:
    cpt.data.sources = drop_source(cpt.data.sources, opts.drop)
  steps = int(opts.steps)
  if steps:
    cpt.train.num_steps = steps
    cpt.optimizer.decay_steps = steps
    cpt.optimizer.warmup_steps = max(1, round(steps * 1000 / 12500))

  name = f"no_{opts.drop}" if opts.drop else "full"
  config = ml_collections.ConfigDict()
  config.stages = ("cpt", "eval")
  config.cpt = common.train_stage(cpt)
  config.eval = common.eval_stage({name: recipe.stage("cpt")}, tokenizer=base,
                                  tasks_root=opts.tasks_root)
  config.report = dict(title=f"Llama 3 Swallow 8B CPT ablation: {name}")
  return config


def sweep():
  """The full mixture and one run per removed source. The hardware and roots come from the
  --config argument: --config=configs/ablation.py:8xh100,root=/data gives every run those."""
  yield dict(name="full")
  for source in ABLATIONS:
    yield dict(name=f"no_{source}", arg=f"drop={source}")
