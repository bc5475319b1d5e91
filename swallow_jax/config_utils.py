"""The training config's schema: one frozen dataclass per section, built once, then passed down.

`TrainSpec.from_config(config)` checks a config file's ConfigDict (every default and check of a
key lives here; an unknown key is an error naming the known ones); code reads `spec.train.seed`.
"""

from collections.abc import Mapping
import dataclasses
import json
from typing import Any, TypeVar

from swallow_jax.model import LlamaConfig, presets
from swallow_jax.model.lora import LoraConfig

_S = TypeVar("_S")


def as_section(cls: type[_S], values: "_S | Mapping[str, Any] | None", name: str) -> _S:
  """`values` if already a `cls`, else `cls(**values)` with one-line errors for unknown and
  missing keys and bad scalar types; `name` is the section (`optimizer`) for the messages."""
  if isinstance(values, cls):
    return values
  values = dict(values or {})
  fields = {f.name: f for f in dataclasses.fields(cls)}
  if bad := set(values) - set(fields):
    raise ValueError(f"unknown key(s) config.{name}.{sorted(bad)}; known: {sorted(fields)}")
  for key, f in fields.items():
    if key not in values and f.default is f.default_factory is dataclasses.MISSING:
      raise ValueError(f"config.{name}.{key} is required")
  for key, value in values.items():
    kind = fields[key].type
    try:
      if kind is tuple:
        value = tuple(value or ())
      elif kind in (int, float, str, bool) and (value is not None or kind is bool):
        value = kind(value)
    except (TypeError, ValueError):
      raise ValueError(f"config.{name}.{key}={value!r} is not a {kind.__name__}") from None
    values[key] = value
  return cls(**values)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """config.optimizer: AdamW, global-norm clipping (0 = off), warmup + cosine schedule."""
  peak_lr: float
  warmup_steps: int
  decay_steps: int
  min_lr_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainSection:
  """config.train: length, step options, seed, logging writers."""
  num_steps: int
  grad_accum_steps: int = 1
  z_loss: float = 0.0
  neftune_alpha: float = 0.0
  seed: int = 0
  log_every: int = 1
  loss_chunk_size: int = 0
  document_masking: bool = True
  tensorboard: bool = True  # WORKDIR/tensorboard/ event files (tensorboardX).
  wandb_project: str = ""  # Non-empty: also log to Weights & Biases (`wandb` imported only then).

  def step_options(self) -> dict[str, Any]:
    """make_train_step's keyword options."""
    return {k: getattr(self, k) for k in ("z_loss", "grad_accum_steps", "neftune_alpha",
                                          "loss_chunk_size", "document_masking")}


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """config.mesh: see swallow_jax.parallel.mesh (-1 = the remaining devices)."""
  data: int = 1
  fsdp: int = -1
  tensor: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_tensor: int = 1

  def as_dict(self) -> dict[str, int]:
    """The mesh axis sizes by name."""
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
  """config.checkpoint: save every N steps and/or M minutes, keep the newest `keep` (0 = all)."""
  every_steps: int = 0
  every_minutes: float = 0.0
  keep: int = 3
  async_save: bool = True


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """config.eval: run swallow_jax.evaluate tasks every N steps (0 = never)."""
  every_steps: int = 0
  tasks: tuple = ()


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """config.data: the keys the trainer and swallow_jax.data.pipeline read."""
  seq_len: int
  global_batch_size: int
  sources: tuple = ()
  kind: str = "pretrain"
  shuffle_seed: int | None = None  # None: config.train.seed.
  num_shards: int = 0  # 0: one per process.
  packing_bins: int = 64

  def pipeline_config(self) -> dict[str, Any]:
    """What swallow_jax.data.pipeline.make_train_iterator reads."""
    return {"sources": list(self.sources), "kind": self.kind,
            "shuffle_seed": self.shuffle_seed, "packing_bins": self.packing_bins}


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """The whole training config, checked; `model` is the resolved LlamaConfig."""
  model: LlamaConfig
  data: DataSpec
  optimizer: OptimizerSpec
  train: TrainSection
  mesh: MeshSpec
  checkpoint: CheckpointSpec
  eval: EvalSpec
  init_from: str = ""
  tokenizer: str = ""
  lora: LoraConfig = LoraConfig()  # config.model.lora; rank 0 = full-parameter training.

  @classmethod
  def from_config(cls, config: Mapping[str, Any], *,
                  read_init_from: bool = True) -> "TrainSpec":
    """Checks `config` (unknown/missing keys, types) and resolves the model config; with LoRA,
    `init_from` becomes the base's pinned path (`model.io.base_model_path`).
    `read_init_from=False` (planning without the checkpoint) takes `model.preset` instead."""
    sections = validate(config)
    lora = lora_config(config)
    init_from = str(config.get("init_from") or "")
    if lora.rank and read_init_from:
      from swallow_jax.model import io as model_io  # pylint: disable=g-import-not-at-top
      init_from = model_io.base_model_path(init_from)
    return cls(model=model_config(config, read_init_from), lora=lora, init_from=init_from,
               tokenizer=str(config.get("tokenizer") or ""), **sections)


SECTIONS: dict[str, type] = {"data": DataSpec, "optimizer": OptimizerSpec, "train": TrainSection,
                             "mesh": MeshSpec, "checkpoint": CheckpointSpec, "eval": EvalSpec}


def validate(config: Mapping[str, Any]) -> dict[str, Any]:
  """Each section of SECTIONS as its dataclass; ValueError naming the first unknown/missing key."""
  known = set(SECTIONS) | {"model", "init_from", "tokenizer"}
  if unknown := set(config.keys()) - known:
    raise ValueError(f"unknown config key(s) {sorted(unknown)}; known: {sorted(known)}")
  if missing := [s for s in ("model", "data", "optimizer", "train") if s not in config]:
    raise ValueError(f"config.{missing[0]} is missing")
  return {name: as_section(cls, config.get(name), name) for name, cls in SECTIONS.items()}


def lora_config(config: Mapping[str, Any]) -> LoraConfig:
  """`config.model.lora` (absent = rank 0); an adapter needs `init_from`, the base it adapts."""
  lora = LoraConfig.from_dict(dict(config["model"]).get("lora") or {})
  if lora.rank and not config.get("init_from"):
    raise ValueError(f"config.model.lora.rank={lora.rank} needs config.init_from (the base model)")
  return lora


def model_config(config: Mapping[str, Any], read_init_from: bool = True) -> LlamaConfig:
  """LlamaConfig: that of `init_from` (any path swallow_jax.model.io resolves) if set and
  `read_init_from`, else `model.preset`; the other `model.*` keys override fields of either."""
  overrides = {k: v for k, v in dict(config["model"]).items() if k not in ("preset", "lora")}
  fields = {f.name for f in dataclasses.fields(LlamaConfig)}
  if unknown := set(overrides) - fields:
    raise ValueError(f"unknown LlamaConfig field(s) config.model.{sorted(unknown)}; "
                     f"known: {sorted(fields)}")
  init_from = config.get("init_from")
  if init_from and read_init_from:
    from swallow_jax.model import io as model_io  # pylint: disable=g-import-not-at-top
    return dataclasses.replace(model_io.resolve(init_from).config, **overrides)
  preset = dict(config["model"]).get("preset")
  if not preset:
    raise ValueError("config.model.preset is empty and config.init_from is not set")
  return presets.get(preset, **overrides)


def resolved_dict(config: Mapping[str, Any], spec: TrainSpec) -> dict[str, Any]:
  """The config with every model field of `spec.model` filled in (written to the workdir as
  config.json); a LoRA run records its base's pinned path, `spec.init_from`."""
  out = config.to_dict() if hasattr(config, "to_dict") else json.loads(json.dumps(dict(config)))
  if spec.lora.rank:
    out["init_from"] = spec.init_from
  written = dict(config["model"])
  out["model"] = model = {"preset": written.get("preset", "")}
  if "lora" in written:
    model["lora"] = {k: _plain(v) for k, v in dict(written["lora"]).items()}
  model.update({f.name: _plain(getattr(spec.model, f.name))
                for f in dataclasses.fields(spec.model)})
  return out


def _plain(v: Any) -> Any:
  if hasattr(v, "to_hf"):  # RopeScaling: HF dict form, which LlamaConfig reads back.
    return v.to_hf()
  return list(v) if isinstance(v, tuple) else v
