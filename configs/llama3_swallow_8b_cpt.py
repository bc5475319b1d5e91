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

from configs import common

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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The 8B CPT training config for 'HARDWARE[,data_root=...,init_from=...]'."""
  hardware, opts = common.split_arg(arg, HARDWARE, default="v5p-128",
                                    data_root="data/swallow", init_from="hf/Meta-Llama-3-8B")
  return common.cpt_config(preset="llama3_8b", peak_lr=PEAK_LR, hw=HARDWARE[hardware],
                           data_root=opts.data_root, init_from=opts.init_from)
