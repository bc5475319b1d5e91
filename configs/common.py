"""What the Swallow configs share: hardware arguments, root directories, stage builders.

    hardware, opts = common.split_arg("8xh100,root=/mnt/s", HARDWARE, default="v5p-128", root=".")
    opts = common.with_roots(opts)             # data_root, models_root, tasks_root from root
    cpt = common.cpt_config(preset="llama3_8b", peak_lr=2.5e-5, hw=HARDWARE["8xh100"], ...)
    recipe = common.swallow_recipe(cpt, opts, sft_lr=2e-6, title="Llama 3 Swallow 8B")

Stages refer to each other by name (`recipe.stage("cpt")`: the CPT stage's exported HF dir).
Mixture arithmetic (`drop_source`) is in swallow_jax.data.mixtures.
"""

import math
import os
from typing import Any

import ml_collections

from swallow_jax import recipe
from swallow_jax.data import mixtures
from swallow_jax.sweep import parse_arg

MESH_KEYS = dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1)
# config.model.lora: rank 0 = full-parameter training; `--config.model.lora.rank=16` turns it on.
LORA_OFF = dict(rank=0, alpha=16.0, dropout=0.0,
                targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                trainable=())
ROOT_OPTIONS = dict(root=".", data_root="", models_root="", tasks_root="")

# Swallow-Instruct-v0.1 SFT settings shared by the recipes. OUR CHOICE, not published: NEFTune
# alpha 5 (the NEFTune paper's usual setting), 2 epochs, 5% warmup.
SFT_BATCH = 256
SFT_EPOCHS = 2
NEFTUNE_ALPHA = 5.0
CHAT_VECTOR_SCALE = 0.5
# Task files (swallow_jax.evaluate format) expected under TASKS_ROOT: the Japanese tasks of the
# Swallow evaluation that the harness supports, plus held-out perplexity text per language.
# Build them with `python -m swallow_jax.evaluate.prepare` (docs/evaluation.md).
TASKS = ("jcommonsenseqa", "jemhopqa", "niilc", "jsquad", "mgsm_ja", "wmt20_en_ja",
         "wmt20_ja_en", "ja_ppl", "en_ppl")


def split_arg(arg: str | None, table: dict[str, Any], default: str,
              **defaults: Any) -> tuple[str, ml_collections.ConfigDict]:
  """'HARDWARE,k=v,...' -> (HARDWARE, parsed options); HARDWARE (a key of `table`, e.g.
  8xh100 or v5p-128) may be left out."""
  items = [x for x in (arg or "").split(",") if x]
  hardware = items.pop(0) if items and "=" not in items[0] else default
  if hardware not in table:
    raise ValueError(f"unknown hardware {hardware!r}; known: {sorted(table)}")
  return hardware, parse_arg(",".join(items), **defaults)


def with_roots(opts: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fills data_root (ROOT/data), models_root (ROOT/hf) and tasks_root (ROOT/tasks) where the
  argument left them empty."""
  opts.data_root = opts.data_root or os.path.join(opts.root, "data")
  opts.models_root = opts.models_root or os.path.join(opts.root, "hf")
  opts.tasks_root = opts.tasks_root or os.path.join(opts.root, "tasks")
  return opts


def cpt_config(*, preset: str, peak_lr: float, hw: dict[str, Any], data_root: str,
               init_from: str) -> ml_collections.ConfigDict:
  """The Swallow CPT training config for one model size and hardware (8B and 70B)."""
  config = ml_collections.ConfigDict()
  # The architecture comes from init_from's config.json; these fields say how to compute it.
  config.model = dict(preset=preset, lora=dict(LORA_OFF), param_dtype="float32", dtype="bfloat16",
                      remat_policy=hw["remat"], scan_layers=True, attention="auto")
  config.init_from = init_from
  config.tokenizer = init_from
  config.data = dict(sources=mixtures.llama3_swallow_8b(data_root), seq_len=8192,
                     global_batch_size=1024, shuffle_seed=0, kind="pretrain")
  config.optimizer = dict(peak_lr=peak_lr, min_lr_ratio=0.1, warmup_steps=1000,
                          decay_steps=12500, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                          clip_norm=1.0)
  # loss_chunk_size: the loss takes the 128k-vocabulary logits 1,024 positions at a time (an fp32
  # [8192, 128256] copy is 4.2 GB per sequence). document_masking: each packed document attends
  # only to itself (False = Megatron-LM's default, plain causal over the row; docs/training.md).
  config.train = dict(num_steps=12500, grad_accum_steps=hw["accum"], z_loss=1e-4,
                      neftune_alpha=0.0, seed=0, log_every=1, loss_chunk_size=1024,
                      document_masking=True, tensorboard=True, wandb_project="")
  config.mesh = {**MESH_KEYS, **hw["mesh"]}
  config.checkpoint = dict(every_steps=500, every_minutes=30.0, keep=3, async_save=True)
  config.eval = dict(every_steps=0, tasks=[])
  return config


def train_stage(train_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A recipe stage from a training config: train, then export an HF directory (bf16)."""
  stage = ml_collections.ConfigDict(train_config.to_dict())
  stage.kind = "train"
  stage.export_hf = True
  stage.export_dtype = "bfloat16"
  return stage


def sft_stage(cpt: ml_collections.ConfigDict, *, init_from: str, tokenizer: str, lr: float,
              sets: tuple[tuple[str, int], ...], data_root: str,
              epochs: int = SFT_EPOCHS) -> ml_collections.ConfigDict:
  """SFT on chat sets (name, conversations), reusing the CPT config's model, mesh and hardware."""
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


def eval_stage(models: dict[str, str], tokenizer: str, tasks_root: str,
               tasks: tuple[str, ...] = TASKS) -> dict[str, Any]:
  """An eval stage over the task files TASKS_ROOT/<task>.jsonl."""
  return dict(kind="eval", tokenizer=tokenizer, dtype="bfloat16", batch_size=8, max_len=4096,
              max_examples=0, models=models,
              tasks=[os.path.join(tasks_root, f"{t}.jsonl") for t in tasks])


def swallow_report(title: str, base: str) -> dict[str, Any]:
  """The report section of a CPT -> chat vector -> SFT recipe whose Meta models are `base` and
  `<base>_instruct`."""
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


def swallow_recipe(cpt: ml_collections.ConfigDict, opts: ml_collections.ConfigDict, *,
                   base_name: str, sft_lr: float, sft_sets: tuple[tuple[str, int], ...],
                   title: str) -> ml_collections.ConfigDict:
  """The four-stage recipe (cpt, chat_vector, sft, eval) around a CPT training config; the
  Meta models are MODELS_ROOT/<base_name> and MODELS_ROOT/<base_name>-Instruct."""
  base = os.path.join(opts.models_root, base_name)
  instruct = base + "-Instruct"
  config = ml_collections.ConfigDict()
  config.stages = ("cpt", "chat_vector", "sft", "eval")
  config.cpt = train_stage(cpt)
  config.chat_vector = dict(kind="chat_vector", base=base, instruct=instruct,
                            target=recipe.stage("cpt"), scale=CHAT_VECTOR_SCALE, exclude=[],
                            dtype="bfloat16")
  config.sft = sft_stage(cpt, init_from=recipe.stage("chat_vector"), tokenizer=base, lr=sft_lr,
                         sets=sft_sets, data_root=opts.data_root)
  short = "llama3"
  config.eval = eval_stage(
      {short: base, f"{short}_instruct": instruct, "swallow_base": recipe.stage("cpt"),
       "swallow_base_cv": recipe.stage("chat_vector"), "swallow_instruct": recipe.stage("sft")},
      tokenizer=base, tasks_root=opts.tasks_root)
  config.report = swallow_report(title, short)
  return config
