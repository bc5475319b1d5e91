"""config_utils.TrainSpec: one place for every training-config key, its default and its check."""

import ml_collections
import pytest

from swallow_jax import config_utils
from swallow_jax.train import optimizer as optimizer_lib


def minimal(**sections):
  config = ml_collections.ConfigDict(dict(
      model=dict(preset="tiny"), data=dict(seq_len=16, global_batch_size=4, sources=[]),
      optimizer=dict(peak_lr=1e-3, warmup_steps=1, decay_steps=10), train=dict(num_steps=3)))
  for name, values in sections.items():
    config[name] = values
  return config


def test_defaults_live_in_the_spec():
  spec = config_utils.TrainSpec.from_config(minimal())
  assert spec.train.seed == 0 and spec.train.log_every == 1 and spec.train.tensorboard
  assert spec.train.wandb_project == ""
  assert spec.optimizer.b2 == 0.95 and spec.optimizer.clip_norm == 0.0
  assert spec.checkpoint == config_utils.CheckpointSpec(every_steps=0, every_minutes=0.0, keep=3,
                                                        async_save=True)
  assert spec.mesh.as_dict() == dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1,
                                     dcn_tensor=1)
  assert spec.data.shuffle_seed is None and spec.data.num_shards == 0
  assert spec.model.num_layers == 2 and spec.init_from == ""
  assert spec.train.step_options() == dict(z_loss=0.0, grad_accum_steps=1, neftune_alpha=0.0,
                                           loss_chunk_size=0, document_masking=True)


def test_spec_is_frozen_and_typed():
  spec = config_utils.TrainSpec.from_config(minimal(train=dict(num_steps="7", z_loss=1)))
  assert spec.train.num_steps == 7 and isinstance(spec.train.z_loss, float)
  with pytest.raises(AttributeError):
    spec.train.num_steps = 8  # type: ignore[misc]


def test_unknown_missing_and_bad_keys_are_one_line_errors():
  with pytest.raises(ValueError, match=r"unknown key\(s\) config.train.\['num_step'\]; known: "
                     r"\[.*'num_steps'"):
    config_utils.TrainSpec.from_config(minimal(train=dict(num_step=3)))
  with pytest.raises(ValueError, match=r"config.optimizer.peak_lr is required"):
    config_utils.TrainSpec.from_config(minimal(optimizer=dict(warmup_steps=1, decay_steps=2)))
  with pytest.raises(ValueError, match=r"unknown key\(s\) config.data.\['seqlen'\]"):
    config_utils.TrainSpec.from_config(minimal(data=dict(seq_len=8, global_batch_size=2,
                                                         seqlen=8)))
  with pytest.raises(ValueError, match=r"config.checkpoint.keep='x' is not a int"):
    config_utils.TrainSpec.from_config(minimal(checkpoint=dict(keep="x")))
  with pytest.raises(ValueError, match=r"config.train is missing"):
    config_utils.validate({"model": {}, "data": {}, "optimizer": {}})


def test_sections_accept_specs_and_mappings():
  spec = config_utils.as_section(config_utils.OptimizerSpec,
                                 dict(peak_lr=1.0, warmup_steps=0, decay_steps=10), "optimizer")
  assert config_utils.as_section(config_utils.OptimizerSpec, spec, "optimizer") is spec
  assert optimizer_lib.schedule(spec)(10) == pytest.approx(0.1)


def test_lora_section_is_parsed_once_and_kept_out_of_the_model():
  spec = config_utils.TrainSpec.from_config(minimal())
  assert spec.lora.rank == 0  # absent: off
  config = minimal(model=dict(preset="tiny", lora=dict(rank=4, alpha=8.0)))
  with pytest.raises(ValueError, match=r"config.model.lora.rank=4 needs config.init_from"):
    config_utils.TrainSpec.from_config(config)
  off = minimal(model=dict(preset="tiny", lora=dict(rank=0, alpha=16.0)))
  assert config_utils.model_config(off) == config_utils.model_config(minimal())
  with pytest.raises(ValueError, match="nope"):
    config_utils.TrainSpec.from_config(minimal(model=dict(preset="tiny", lora=dict(nope=1))))


def test_every_training_config_carries_lora_off():
  from swallow_jax.sweep import load_config  # pylint: disable=g-import-not-at-top
  config = load_config("configs/tiny_cpt.py")
  assert config.model.lora.rank == 0
  config.model.lora.rank = 16  # what --config.model.lora.rank=16 does
  config.init_from = "runs/base"
  assert config_utils.lora_config(config).rank == 16
