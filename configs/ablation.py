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
proportion (swallow_jax.sweep.drop_source) -- mostly to the Swallow Corpus, which holds 81%.

Arg: HARDWARE[,drop=SOURCE][,steps=N][,root=...,data_root=...,models_root=...,tasks_root=...]
  drop: '' (the full mixture) or one of cosmopedia, laboro_paracorpus, openwebmath (any source
  name of swallow_jax.data.mixtures.llama3_swallow_8b works). steps: 0 keeps the recipe's 12,500;
  a smaller number shortens every run alike (warmup and decay follow).
"""

import os

import ml_collections

from swallow_jax.sweep import drop_source, load_module

_HERE = os.path.dirname(os.path.abspath(__file__))
_CPT = load_module(os.path.join(_HERE, "llama3_swallow_8b_cpt.py"))
_8B = load_module(os.path.join(_HERE, "llama3_swallow_8b.py"))

ABLATIONS = ("cosmopedia", "laboro_paracorpus", "openwebmath")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  hardware, opts = _CPT.split_arg(arg, _CPT.HARDWARE, default="v5p-128", drop="", steps="0",
                                  root=".", data_root="", models_root="", tasks_root="")
  data_root = opts.data_root or os.path.join(opts.root, "data")
  models_root = opts.models_root or os.path.join(opts.root, "hf")
  tasks_root = opts.tasks_root or os.path.join(opts.root, "tasks")
  base = os.path.join(models_root, "Meta-Llama-3-8B")
  cpt = _CPT.build_config(preset="llama3_8b", peak_lr=_CPT.PEAK_LR, hw=_CPT.HARDWARE[hardware],
                          data_root=data_root, init_from=base)
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
  config.cpt = _8B.train_stage(cpt)
  config.eval = _8B.eval_stage({name: "${cpt.model}"}, tokenizer=base, tasks_root=tasks_root)
  config.report = dict(title=f"Llama 3 Swallow 8B CPT ablation: {name}")
  return config


def sweep():
  """The full mixture and one run per removed source. The hardware and roots come from the
  --config argument: --config=configs/ablation.py:8xh100,root=/data gives every run those."""
  yield dict(name="full")
  for source in ABLATIONS:
    yield dict(name=f"no_{source}", arg=f"drop={source}")
