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

from swallow_jax.sweep import load_module

_HERE = os.path.dirname(os.path.abspath(__file__))
_CPT = load_module(os.path.join(_HERE, "llama3_swallow_70b_cpt.py"))
_8B = load_module(os.path.join(_HERE, "llama3_swallow_8b.py"))
SFT_LR = 1e-6


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  hardware, opts = _8B.recipe_options(arg, _CPT.HARDWARE, "v5p-512", "Meta-Llama-3-70B",
                                      _CPT._8B.split_arg)  # pylint: disable=protected-access
  cpt = _CPT.get_config(f"{hardware},data_root={opts.data_root},"
                        f"init_from={os.path.join(opts.models_root, opts.base_name)}")
  return _8B.build(cpt, opts, sft_lr=SFT_LR, title="Llama 3 Swallow 70B")
