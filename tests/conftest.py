"""Test set-up: 8 fake CPU devices so sharding is exercised without accelerators."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import ml_collections  # noqa: E402  pylint: disable=g-import-not-at-top
import pytest  # noqa: E402  pylint: disable=g-import-not-at-top

from smollm2 import smollm2_dir  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A function returning a fresh configs/tiny_cpt.py config with `section__key` overrides."""
  from swallow_jax.sweep import load_config  # pylint: disable=g-import-not-at-top
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("SWALLOW_JAX_CACHE", str(tmp_path_factory.getbasetemp() / "swallow_cache"))
    base = load_config(os.path.join(os.path.dirname(__file__), os.pardir, "configs",
                                    "tiny_cpt.py"))

    def make(**overrides):
      config = ml_collections.ConfigDict(base.to_dict())
      for key, value in overrides.items():
        *section, name = key.split("__")
        (config[section[0]] if section else config)[name] = value
      return config
    yield make
