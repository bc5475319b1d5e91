r"""Llama 3 Swallow 8B, the whole recipe: CPT -> chat vector -> SFT -> evaluation.

    python -m swallow_jax.recipe --config=configs/llama3_swallow_8b.py:v5p-128,root=/mnt/swallow \
        --workdir=/mnt/swallow/runs/llama3_swallow_8b

Stages (each in WORKDIR/<stage>; see swallow_jax/recipe.py):
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

import math
import os

import ml_collections

from swallow_jax.sweep import load_module

_HERE = os.path.dirname(os.path.abspath(__file__))
_CPT = load_module(os.path.join(_HERE, "llama3_swallow_8b_cpt.py"))

# (name, conversations): Swallow-Instruct-v0.1, the SFT data of Llama 3 Swallow Instruct v0.1.
SFT_SETS = (("oasst2_top1_en", 5334), ("oasst1_21k_ja_imitation_alpha", 21120),
            ("oasst1_21k_ja_imitation_beta", 21035))
SFT_LR = 2e-6
SFT_BATCH = 256
SFT_EPOCHS = 2              # our choice
NEFTUNE_ALPHA = 5.0         # our choice (NEFTune paper); Swallow publishes no value
CHAT_VECTOR_SCALE = 0.5
# Task files (swallow_jax.evaluate format) expected under TASKS_ROOT: the Japanese tasks of the
# Swallow evaluation that the harness supports, plus held-out perplexity text per language.
# Build them from the public releases with `python -m swallow_jax.evaluate.prepare` (docs/evaluation.md).
TASKS = ("jcommonsenseqa", "jemhopqa", "niilc", "jsquad", "mgsm_ja", "wmt20_en_ja",
         "wmt20_ja_en", "ja_ppl", "en_ppl")


def recipe_options(arg: str | None, hardware_table: dict, default_hardware: str,
                   base_name: str, split_arg):
  """(hardware, options with every root filled in) from 'HARDWARE,key=value,...'."""
  hardware, opts = split_arg(arg, hardware_table, default=default_hardware, root=".",
                             data_root="", models_root="", tasks_root="")
  opts.data_root = opts.data_root or os.path.join(opts.root, "data")
  opts.models_root = opts.models_root or os.path.join(opts.root, "hf")
  opts.tasks_root = opts.tasks_root or os.path.join(opts.root, "tasks")
  opts.base_name = base_name
  return hardware, opts


def train_stage(train_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A recipe stage from a training config: train, then export an HF directory (bf16)."""
  stage = ml_collections.ConfigDict(train_config.to_dict())
  stage.kind = "train"
  stage.export_hf = True
  stage.export_dtype = "bfloat16"
  return stage


def sft_stage(cpt: ml_collections.ConfigDict, *, init_from: str, tokenizer: str, lr: float,
              sets, data_root: str, epochs: int = SFT_EPOCHS) -> ml_collections.ConfigDict:
  """SFT on chat data, reusing the CPT config's model, mesh and hardware settings."""
  sft = train_stage(cpt)
  sft.init_from = init_from
  sft.tokenizer = tokenizer
  conversations = sum(n for _, n in sets)
  steps = math.ceil(epochs * conversations / SFT_BATCH)
  # Weights are shares of conversations, so each set is seen `epochs` times on average.
  sft.data = dict(sources=[dict(name=name, path=os.path.join(data_root, "sft", name),
                                weight=n / conversations, filter=None) for name, n in sets],
                  seq_len=cpt.data.seq_len, global_batch_size=SFT_BATCH, shuffle_seed=0,
                  kind="sft")
  sft.optimizer.peak_lr = lr
  sft.optimizer.warmup_steps = max(1, round(0.05 * steps))
  sft.optimizer.decay_steps = steps
  sft.train.num_steps = steps
  # 1,024 -> 256 sequences per step: a quarter of the CPT microbatches.
  sft.train.grad_accum_steps = max(1, cpt.train.grad_accum_steps // (cpt.data.global_batch_size
                                                                     // SFT_BATCH))
  sft.train.neftune_alpha = NEFTUNE_ALPHA
  sft.checkpoint.every_steps = 100
  return sft


def eval_stage(models: dict, tokenizer: str, tasks_root: str, tasks=TASKS) -> dict:
  return dict(kind="eval", tokenizer=tokenizer, dtype="bfloat16", batch_size=8, max_len=4096,
              max_examples=0, models=models,
              tasks=[os.path.join(tasks_root, f"{t}.jsonl") for t in tasks])


def report(title: str, base: str) -> dict:
  return dict(
      title=title,
      comparisons=[
          dict(what="Continual pretraining", before=base, after="swallow_base",
               expect=dict(ja_ppl="down")),
          dict(what="Chat vector", before="swallow_base", after="swallow_base_cv"),
          dict(what="SFT", before="swallow_base_cv", after="swallow_instruct"),
          dict(what="Swallow Instruct vs Meta's Instruct", before=f"{base}_instruct",
               after="swallow_instruct", expect=dict(ja_ppl="down")),
      ])


def build(cpt: ml_collections.ConfigDict, opts, *, sft_lr: float, title: str
          ) -> ml_collections.ConfigDict:
  """The four-stage recipe around a CPT training config."""
  base = os.path.join(opts.models_root, opts.base_name)
  instruct = base + "-Instruct"
  config = ml_collections.ConfigDict()
  config.stages = ("cpt", "chat_vector", "sft", "eval")
  config.cpt = train_stage(cpt)
  config.chat_vector = dict(kind="chat_vector", base=base, instruct=instruct,
                            target="${cpt.model}", scale=CHAT_VECTOR_SCALE, exclude=[],
                            dtype="bfloat16")
  config.sft = sft_stage(cpt, init_from="${chat_vector.model}", tokenizer=base, lr=sft_lr,
                         sets=SFT_SETS, data_root=opts.data_root)
  short = "llama3"
  config.eval = eval_stage(
      {short: base, f"{short}_instruct": instruct, "swallow_base": "${cpt.model}",
       "swallow_base_cv": "${chat_vector.model}", "swallow_instruct": "${sft.model}"},
      tokenizer=base, tasks_root=opts.tasks_root)
  config.report = report(title, short)
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  hardware, opts = recipe_options(arg, _CPT.HARDWARE, "v5p-128", "Meta-Llama-3-8B",
                                  _CPT.split_arg)
  cpt = _CPT.build_config(preset="llama3_8b", peak_lr=_CPT.PEAK_LR, hw=_CPT.HARDWARE[hardware],
                          data_root=opts.data_root,
                          init_from=os.path.join(opts.models_root, opts.base_name))
  return build(cpt, opts, sft_lr=SFT_LR, title="Llama 3 Swallow 8B")
