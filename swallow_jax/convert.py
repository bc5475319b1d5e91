r"""Convert model weights between HF safetensors and Orbax; export LoRA runs.

  python -m swallow_jax.convert --model=Meta-Llama-3-8B --to_orbax=/ckpt/llama3_8b
  python -m swallow_jax.convert --model=WORKDIR --to_hf=out_hf --tokenizer=Meta-Llama-3-8B
  python -m swallow_jax.convert --model=LORA_WORKDIR --to_peft=out_adapter

A LoRA run (`--config.model.lora.rank=R`) converts like any run, merged into its base
(`--to_hf`, `--to_orbax`); `--to_peft` writes its adapter alone in the Hugging Face PEFT layout
(adapter_config.json with `base_model_name_or_path` = the base's path, adapter_model.safetensors).

--model is any path `swallow_jax.model.io.resolve` accepts: an HF dir, a Hub id in the local
cache, a dir written by --to_orbax (DIR/params + DIR/hf_config.json), or a training run (its
workdir, checkpoints/ dir, one step dir). A training run's tokenizer defaults to the one its
config names. An existing non-empty output is refused unless --overwrite, before any work.
The whole model passes through host memory once (8B: 32 GB in float32, 16 GB in bfloat16).
"""

from __future__ import annotations

from collections.abc import Sequence
import os

from absl import flags
import jax.numpy as jnp

from swallow_jax import cli
from swallow_jax.model import io as model_io
from swallow_jax.model import lora as lora_lib


class ConvertError(ValueError):
  """Bad command-line input; the message is one line."""


def convert(model: str, *, to_hf: str = "", to_orbax: str = "", to_peft: str = "",
            dtype: str = "", tokenizer: str = "", overwrite: bool = False,
            max_shard_gb: float = 5.0, progress: bool = True) -> str:
  """Writes `model` to exactly one of `to_hf` / `to_orbax` / `to_peft`; returns the output dir.
  dtype: default float32 for Orbax, bfloat16 for HF (the PEFT adapter is always float32).
  tokenizer: files copied into an HF output (default: the model's own tokenizer dir, e.g. a
  training run's config.tokenizer). `to_peft` needs a LoRA training run."""
  if sum(map(bool, (to_hf, to_orbax, to_peft))) != 1:
    raise ConvertError("give exactly one of --to_hf=DIR, --to_orbax=DIR or --to_peft=DIR")
  out = to_hf or to_orbax or to_peft
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not overwrite:
    raise ConvertError(f"{out} exists and is not empty (pass --overwrite to replace it)")
  ref = model_io.resolve(model)
  if to_peft:
    if ref.lora is None:
      raise ConvertError(f"--to_peft: {model} is not a LoRA training run (it has no adapter); "
                         "use --to_hf or --to_orbax")
    if ref.lora.trainable:
      raise ConvertError(f"--to_peft: {model} also trains {list(ref.lora.trainable)} in full, "
                         "which a PEFT LoRA file cannot hold; use --to_hf (merged)")
    adapter, _, lora_cfg = model_io.load_adapter(ref)
    lora_lib.save_peft(to_peft, ref.config, adapter, lora_cfg,
                       base_model_name_or_path=ref.base, overwrite=True)
  elif to_orbax:
    config, params = model_io.load(ref, dtype=jnp.dtype(dtype or "float32"), progress=progress)
    model_io.save_orbax(to_orbax, config, params, overwrite=True)
  else:
    config, params = model_io.load(ref, progress=progress)
    model_io.save_hf(to_hf, config, params, dtype=jnp.dtype(dtype or "bfloat16"),
                     tokenizer_dir=tokenizer or ref.tokenizer_dir, overwrite=True,
                     max_shard_bytes=int(max_shard_gb * 1e9), progress=progress)
  return out


def main(argv: Sequence[str]) -> None:
  """Command-line entry point (absl, under swallow_jax.cli)."""
  del argv
  f = flags.FLAGS
  if not f.model:
    raise cli.UsageError("--model is required")
  try:
    out = convert(f.model, to_hf=f.to_hf, to_orbax=f.to_orbax, to_peft=f.to_peft,
                  dtype=f.dtype or "", tokenizer=f.tokenizer, overwrite=f.overwrite,
                  max_shard_gb=f.max_shard_gb, progress=not f.quiet)
  except ConvertError as e:
    raise cli.UsageError(str(e)) from e
  if f.json:
    cli.print_json({"output": out,
                    "format": "hf" if f.to_hf else "orbax" if f.to_orbax else "peft"})
  else:
    print(out)


if __name__ == "__main__":
  flags.DEFINE_string("model", "", "Model to read: HF dir, Hub id in the local HF cache, "
                      "--to_orbax output, or a training workdir / checkpoints dir / step dir.")
  flags.DEFINE_string("to_orbax", "", "New Orbax directory to write (params/ + hf_config.json).")
  flags.DEFINE_string("to_hf", "", "New HF safetensors directory to write (a LoRA run: merged).")
  flags.DEFINE_string("to_peft", "", "New PEFT adapter directory to write (LoRA runs only).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty output directory.")
  flags.DEFINE_enum("dtype", None, cli.DTYPES, "Weights dtype written (default float32 for "
                    "--to_orbax, bfloat16 for --to_hf).")
  flags.DEFINE_string("tokenizer", "", "Copy tokenizer files (tokenizer.json, "
                      "tokenizer_config.json, *.model, ...) from this dir or file into --to_hf "
                      "(default: the model's own, or a training run's config.tokenizer).")
  flags.DEFINE_float("max_shard_gb", 5.0, "Largest safetensors shard written by --to_hf (GB).")
  flags.DEFINE_bool("json", False, "Print one JSON object (output path, format).")
  flags.DEFINE_bool("quiet", False, "No progress bars.")
  cli.alias("from_hf", "model")
  cli.alias("from_orbax", "model")
  cli.alias("tokenizer_dir", "tokenizer")
  cli.run(main, prog="convert")
