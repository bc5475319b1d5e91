"""Training-config checks and resolution: unknown keys are errors, the model config is built once.

Config files return a locked `ml_collections.ConfigDict`, so `--config.a.b=v` for a missing key
fails at flag parsing; `validate` catches the same mistakes in configs built in Python.
"""

from collections.abc import Mapping
import dataclasses
import json
import os
from typing import Any

import ml_collections

from swallow_jax.model import LlamaConfig, presets

# Section -> allowed keys (None: checked by the section's owner, e.g. data by the data pipeline).
SCHEMA: dict[str, frozenset[str] | None] = {
    "model": None,
    "data": None,
    "optimizer": frozenset({"peak_lr", "min_lr_ratio", "warmup_steps", "decay_steps", "b1", "b2",
                            "eps", "weight_decay", "clip_norm"}),
    "train": frozenset({"num_steps", "grad_accum_steps", "z_loss", "neftune_alpha", "seed",
                        "log_every", "loss_chunk_size", "document_masking"}),
    "mesh": frozenset({"data", "fsdp", "tensor", "dcn_data", "dcn_fsdp", "dcn_tensor"}),
    "checkpoint": frozenset({"every_steps", "every_minutes", "keep", "async_save"}),
    "eval": frozenset({"every_steps", "tasks"}),
}
TOP_LEVEL_SCALARS = frozenset({"init_from", "tokenizer"})
REQUIRED = {"optimizer": ("peak_lr", "warmup_steps", "decay_steps"), "train": ("num_steps",),
            "data": ("seq_len", "global_batch_size")}


def validate(config: Mapping[str, Any]) -> None:
  """Raises ValueError naming the first unknown or missing key."""
  known = set(SCHEMA) | TOP_LEVEL_SCALARS
  unknown = set(config.keys()) - known
  if unknown:
    raise ValueError(f"unknown config key(s) {sorted(unknown)}; known: {sorted(known)}")
  for section, keys in SCHEMA.items():
    if section not in config:
      if section in ("model", "data", "optimizer", "train"):
        raise ValueError(f"config.{section} is missing")
      continue
    if keys is not None:
      bad = set(config[section].keys()) - keys
      if bad:
        raise ValueError(f"unknown key(s) config.{section}.{sorted(bad)}; known: {sorted(keys)}")
  for section, keys in REQUIRED.items():
    for key in keys:
      if key not in config[section]:
        raise ValueError(f"config.{section}.{key} is required")


def hf_config_path(init_from: str) -> str | None:
  """config.json of an HF model directory (config.json + *.safetensors), else None."""
  if not init_from or not os.path.isdir(init_from):
    return None
  path = os.path.join(init_from, "config.json")
  has_weights = any(f.endswith(".safetensors") for f in os.listdir(init_from))
  return path if has_weights and os.path.isfile(path) else None


def model_config(config: Mapping[str, Any]) -> LlamaConfig:
  """LlamaConfig: the HF config.json of `init_from` if it is an HF dir, else `model.preset`;
  the other `model.*` keys override fields of either."""
  overrides = {k: v for k, v in dict(config["model"]).items() if k != "preset"}
  if isinstance(overrides.get("eos_token_id"), list):
    overrides["eos_token_id"] = tuple(overrides["eos_token_id"])
  hf = hf_config_path(config.get("init_from", ""))
  if hf:
    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    unknown = set(overrides) - fields
    if unknown:
      raise ValueError(f"unknown LlamaConfig field(s) config.model.{sorted(unknown)}")
    with open(hf, encoding="utf-8") as f:
      return LlamaConfig.from_hf(json.load(f), **overrides)
  if not config["model"].get("preset"):
    raise ValueError("config.model.preset is empty and config.init_from is not an HF directory")
  return presets.get(config["model"]["preset"], **overrides)


def resolved_dict(config: ml_collections.ConfigDict, model_cfg: LlamaConfig) -> dict[str, Any]:
  """The config with every model field filled in (written to the workdir as config.json)."""
  out = config.to_dict()
  model = {"preset": config.model.get("preset", "")}
  model.update({f.name: _plain(getattr(model_cfg, f.name)) for f in dataclasses.fields(model_cfg)})
  out["model"] = model
  return out


def model_config_from_resolved(resolved: Mapping[str, Any]) -> LlamaConfig:
  """The LlamaConfig stored by `resolved_dict` (a workdir's config.json)."""
  fields = {f.name for f in dataclasses.fields(LlamaConfig)}
  return LlamaConfig(**{k: v for k, v in resolved["model"].items() if k in fields})


def _plain(v: Any) -> Any:
  if hasattr(v, "to_hf"):  # RopeScaling: HF dict form, which LlamaConfig reads back.
    return v.to_hf()
  return list(v) if isinstance(v, tuple) else v
