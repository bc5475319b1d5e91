r"""Convert model weights between HF safetensors and Orbax.

  python -m swallow_jax.convert --from_hf=Meta-Llama-3-8B --to_orbax=/ckpt/llama3_8b
  python -m swallow_jax.convert --from_orbax=WORKDIR --to_hf=out_hf --tokenizer_dir=Meta-Llama-3-8B

Orbax side:
  * written by this tool: DIR/params/ (orbax StandardCheckpointer of the params tree) and
    DIR/hf_config.json (the model's HF config.json);
  * read by this tool: that layout, or a training run (its workdir, its checkpoints/ dir or one
    step dir), whose parameters come through `swallow_jax.checkpoint.load_params`.
The whole model passes through host memory once (8B: 32 GB in float32, 16 GB in bfloat16).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from swallow_jax.model import LlamaConfig, init_params
from swallow_jax.model import hf

_PARAMS, _CONFIG = "params", "hf_config.json"


class ConvertError(ValueError):
  pass


def save_orbax(path: str, config: LlamaConfig, params: Any) -> None:
  """Writes params (any sharding) + config to a new directory `path`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  if os.path.exists(path) and os.listdir(path):
    raise ConvertError(f"{path} exists and is not empty")
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, _PARAMS), params)
  with open(os.path.join(path, _CONFIG), "w") as f:  # last: marks the directory complete
    json.dump({**config.to_hf(), "torch_dtype": config.param_dtype}, f, indent=2)


def load_orbax(path: str, dtype: Any = None, shardings: Any = None) -> tuple[LlamaConfig, Any]:
  """(config, params) from this tool's layout or from a training checkpoint.

  `dtype` (default: as saved) and `shardings` (default: first local device) apply to this tool's
  layout; training checkpoints load as `swallow_jax.checkpoint.load_params` does, then are cast.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ConvertError(f"{path} is not a directory")
  if os.path.exists(os.path.join(path, _CONFIG)):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    with open(os.path.join(path, _CONFIG)) as f:
      d = json.load(f)
    config = LlamaConfig.from_hf(d, param_dtype=d.get("torch_dtype", "float32"))
    abstract = jax.eval_shape(init_params, config, jax.random.key(0))
    if shardings is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: device, abstract)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(os.path.join(path, _PARAMS), abstract)
  else:
    from swallow_jax import checkpoint  # pylint: disable=g-import-not-at-top
    config, params = checkpoint.load_params(path)
  if dtype is not None and jnp.dtype(dtype).name != config.param_dtype:
    params = jax.tree.map(lambda x: x.astype(dtype), params)
    config = LlamaConfig(**{**config.__dict__, "param_dtype": jnp.dtype(dtype).name})
  return config, params


def convert(*, from_hf: str = "", to_orbax: str = "", from_orbax: str = "", to_hf: str = "",
            dtype: str = "", tokenizer_dir: str = "", max_shard_gb: float = 5.0,
            progress: bool = True) -> str:
  """Runs one conversion; returns the output directory."""
  if from_hf and to_orbax and not (from_orbax or to_hf):
    if not os.path.exists(os.path.join(from_hf, "config.json")):
      raise ConvertError(f"--from_hf={from_hf}: no config.json (expected an HF Llama dir)")
    config, params = hf.load_hf(from_hf, dtype=jnp.dtype(dtype or "float32"), progress=progress)
    save_orbax(to_orbax, config, params)
    return to_orbax
  if from_orbax and to_hf and not (from_hf or to_orbax):
    config, params = load_orbax(from_orbax)
    hf.save_hf(to_hf, config, params, dtype=jnp.dtype(dtype or "bfloat16"),
               tokenizer_dir=tokenizer_dir or None, max_shard_bytes=int(max_shard_gb * 1e9),
               progress=progress)
    return to_hf
  raise ConvertError("give either --from_hf and --to_orbax, or --from_orbax and --to_hf")


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    sys.exit(f"convert: error: unexpected arguments {argv[1:]} (see --help)")
  f = flags.FLAGS
  try:
    if f.dtype and f.dtype not in ("float32", "bfloat16", "float16"):
      raise ConvertError(f"--dtype={f.dtype}: expected float32, bfloat16 or float16")
    out = convert(from_hf=f.from_hf, to_orbax=f.to_orbax, from_orbax=f.from_orbax,
                  to_hf=f.to_hf, dtype=f.dtype, tokenizer_dir=f.tokenizer_dir,
                  max_shard_gb=f.max_shard_gb, progress=not f.quiet)
  except (ValueError, KeyError, OSError) as e:
    sys.exit(f"convert: error: {e}")
  print(out)


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("from_hf", "", "HF Llama safetensors dir to read (config.json + "
                      "model.safetensors or model-*.safetensors + index).")
  flags.DEFINE_string("to_orbax", "", "New Orbax directory to write (with --from_hf).")
  flags.DEFINE_string("from_orbax", "", "Orbax dir to read: one written by --to_orbax, or a "
                      "training workdir / its checkpoints dir / one step dir.")
  flags.DEFINE_string("to_hf", "", "HF dir to write (with --from_orbax); replaced if it exists.")
  flags.DEFINE_string("dtype", "", "Weights dtype written: float32, bfloat16 or float16 "
                      "(default float32 for --to_orbax, bfloat16 for --to_hf).")
  flags.DEFINE_string("tokenizer_dir", "", "Copy tokenizer files (tokenizer.json, "
                      "tokenizer_config.json, *.model, ...) from this dir or file into --to_hf.")
  flags.DEFINE_float("max_shard_gb", 5.0, "Largest safetensors shard written by --to_hf (GB).")
  flags.DEFINE_bool("quiet", False, "No progress bars.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
