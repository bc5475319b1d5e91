r"""Llama 3 Swallow 8B continual pretraining (Fujii et al. 2024; Okazaki et al. 2024).

Recipe: Llama 3 8B -> ~100B tokens of the Swallow mixture (swallow_jax.data.mixtures), AdamW
(b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1), peak LR 2.5e-5 with 1,000 warmup steps and cosine
decay to 2.5e-6 over 12,500 steps, global batch 1,024 x 8,192 tokens (8.4M tokens per step),
gradient clipping 1.0, z-loss 1e-4, bf16 compute with fp32 master weights.

Arg: HARDWARE[,key=value...]  (HARDWARE one of the keys of HARDWARE below, default v5p-128)
    --config=configs/llama3_swallow_8b_cpt.py:v5p-128,data_root=gs://b/swallow,init_from=/m/llama3-8b
    --config=configs/llama3_swallow_8b_cpt.py:8xh100,data_root=/data/swallow,init_from=/m/llama3-8b
Options: data_root (each source preprocessed to DATA_ROOT/<name>, see the README), init_from (the
Meta-Llama-3-8B HF directory: architecture, weights and tokenizer come from it).
"""

import ml_collections

from swallow_jax.data import mixtures
from swallow_jax.sweep import parse_arg

# mesh: per slice / node (-1 = the rest); accum: microbatches per step, so that each device
# sees (1,024 / accum) / num_devices sequences at a time.
HARDWARE = {
    # One v5p slice of 64 chips (128 TensorCores): FSDP over all chips, 2 sequences per chip.
    "v5p-128": dict(mesh=dict(data=1, fsdp=-1, tensor=1), accum=8, remat="full"),
    # Two v5p-128 slices over DCN: data parallel across slices, FSDP within each.
    "v5p-128x2": dict(mesh=dict(data=1, fsdp=-1, tensor=1, dcn_data=2), accum=4, remat="full"),
    # One node of 8 H100 80GB: FSDP over the 8 GPUs, 1 sequence per GPU per microbatch
    # (fp32 params + Adam moments: 16 bytes x 8.03B / 8 = 16 GB per GPU).
    "8xh100": dict(mesh=dict(data=1, fsdp=8, tensor=1), accum=128, remat="full"),
}
PEAK_LR = 2.5e-5
MESH_KEYS = dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  hardware, opts = split_arg(arg, HARDWARE, default="v5p-128",
                             data_root="data/swallow", init_from="hf/Meta-Llama-3-8B")
  return build_config(preset="llama3_8b", peak_lr=PEAK_LR, hw=HARDWARE[hardware],
                      data_root=opts.data_root, init_from=opts.init_from)


def build_config(*, preset: str, peak_lr: float, hw: dict, data_root: str,
                 init_from: str) -> ml_collections.ConfigDict:
  """The Swallow CPT config for one model size and hardware (shared with the 70B config)."""
  config = ml_collections.ConfigDict()
  # The architecture comes from init_from's config.json; these fields say how to compute it.
  config.model = dict(preset=preset, param_dtype="float32", dtype="bfloat16",
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
                      document_masking=True)
  config.mesh = {**MESH_KEYS, **hw["mesh"]}
  config.checkpoint = dict(every_steps=500, every_minutes=30.0, keep=3, async_save=True)
  config.eval = dict(every_steps=0, tasks=[])
  return config


def split_arg(arg: str | None, table: dict, default: str,
              **defaults: str) -> tuple[str, ml_collections.ConfigDict]:
  """'HARDWARE,k=v,...' -> (HARDWARE, parsed options); HARDWARE may be left out."""
  items = [x for x in (arg or "").split(",") if x]
  hardware = items.pop(0) if items and "=" not in items[0] else default
  if hardware not in table:
    raise ValueError(f"unknown hardware {hardware!r}; known: {sorted(table)}")
  return hardware, parse_arg(",".join(items), **defaults)
