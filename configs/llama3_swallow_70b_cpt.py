r"""Llama 3 Swallow 70B continual pretraining: the 8B recipe (configs/llama3_swallow_8b_cpt.py)
with Llama 3 70B, peak LR 1e-5 (min 1e-6) and meshes sized for 70.6B parameters.

Arg: HARDWARE[,data_root=...,init_from=...]  (default v5p-512)
    --config=configs/llama3_swallow_70b_cpt.py:v5p-512,data_root=gs://b/swallow,init_from=/m/llama3-70b
    --config=configs/llama3_swallow_70b_cpt.py:64xh100,data_root=/data/swallow,init_from=/m/llama3-70b

The mixture is the 8B one (swallow_jax.data.mixtures.llama3_swallow_8b). fp32 master weights and
Adam moments take 16 bytes x 70.6B = 1.13 TB, more than 8 H100 80GB hold (640 GB): '8xh100' says
so instead of failing later with an out-of-memory error.
"""

import ml_collections

from configs import common

HARDWARE = {
    # 256 v5p chips (v5p-512): FSDP over all of them (4.4 GB of train state per chip),
    # 1 sequence per chip per microbatch.
    "v5p-512": dict(mesh=dict(data=1, fsdp=-1, tensor=1), accum=4, remat="full"),
    # 8 nodes x 8 H100: FSDP within (NVLink) and across (InfiniBand) nodes, 1 sequence per GPU.
    "64xh100": dict(mesh=dict(data=1, fsdp=8, tensor=1, dcn_fsdp=8), accum=16, remat="full"),
    "8xh100": None,
}
PEAK_LR = 1e-5


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The 70B CPT training config for 'HARDWARE[,data_root=...,init_from=...]'."""
  hardware, opts = common.split_arg(arg, HARDWARE, default="v5p-512",
                                    data_root="data/swallow", init_from="hf/Meta-Llama-3-70B")
  if HARDWARE[hardware] is None:
    raise ValueError("70B on 8xh100: the fp32 train state (1.13 TB) exceeds 8 x 80 GB; use "
                     "64xh100 (8 nodes) or a v5p slice")
  return common.cpt_config(preset="llama3_70b", peak_lr=PEAK_LR, hw=HARDWARE[hardware],
                           data_root=opts.data_root, init_from=opts.init_from)
