"""convert CLI: HF -> Orbax -> HF round trip, training-checkpoint layout, errors."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from swallow_jax import convert
from swallow_jax.model import init_params, presets
from swallow_jax.model import io as model_io

CFG = presets.get("tiny_gqa", num_layers=1)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("hf") / "model")
  params = init_params(CFG, jax.random.key(0))
  model_io.save_hf(path, CFG, params, dtype="float32", progress=False)
  with open(os.path.join(path, "tokenizer.json"), "w") as f:
    f.write("{}")
  return path, params


def _cli(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "swallow_jax.convert", *args],
                        capture_output=True, text=True, env=env, timeout=120)


def test_cli_round_trip(hf_dir, tmp_path):
  path, params = hf_dir
  orbax_dir, out = str(tmp_path / "orbax"), str(tmp_path / "hf_out")
  r = _cli(f"--model={path}", f"--to_orbax={orbax_dir}", "--quiet")
  assert r.returncode == 0, r.stderr
  assert model_io.resolve(orbax_dir).kind == "orbax"
  config, restored = model_io.load(orbax_dir)
  assert config == CFG
  jax.tree.map(np.testing.assert_array_equal, restored, params)
  convert.convert(orbax_dir, to_hf=out, dtype="float32", tokenizer=path, progress=False)
  assert os.path.exists(os.path.join(out, "tokenizer.json"))
  config2, again = model_io.load(out, progress=False)
  assert config2 == CFG
  jax.tree.map(np.testing.assert_array_equal, again, params)
  # An existing non-empty output is refused before any work, unless overwrite.
  with pytest.raises(convert.ConvertError, match=r"hf_out exists and is not empty"):
    convert.convert(orbax_dir, to_hf=out, progress=False)
  convert.convert(orbax_dir, to_hf=out, dtype="float32", overwrite=True, progress=False)


def test_deprecated_aliases(hf_dir, tmp_path):
  path, params = hf_dir
  orbax_dir = str(tmp_path / "orbax")
  r = _cli(f"--from_hf={path}", f"--to_orbax={orbax_dir}", "--quiet")
  assert r.returncode == 0, r.stderr
  assert "--from_hf is deprecated" in r.stderr
  r = _cli(f"--from_orbax={orbax_dir}", f"--to_hf={tmp_path / 'h'}", f"--tokenizer_dir={path}",
           "--quiet")
  assert r.returncode == 0, r.stderr
  assert "--tokenizer_dir is deprecated" in r.stderr
  assert os.path.exists(tmp_path / "h" / "tokenizer.json")


def test_cli_help_and_bad_input(tmp_path):
  r = _cli("--help")
  assert r.returncode == 0 and "--model" in r.stdout and "--to_orbax" in r.stdout
  r = _cli(f"--model={tmp_path}")
  assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("convert: error:")
  r = _cli(f"--model={tmp_path}", f"--to_orbax={tmp_path / 'o'}")
  assert r.returncode != 0 and "config.json" in r.stderr.strip().splitlines()[-1]
  assert len(r.stderr.strip().splitlines()) == 1


def test_to_peft_needs_a_lora_run(hf_dir, tmp_path):
  path, _ = hf_dir
  r = _cli(f"--model={path}", f"--to_peft={tmp_path / 'p'}", "--quiet")
  assert r.returncode == 2, r.stderr
  [line] = r.stderr.strip().splitlines()
  assert line.startswith("convert: error: --to_peft:") and "not a LoRA training run" in line
  assert not os.path.exists(tmp_path / "p")
  r = _cli(f"--model={path}", f"--to_peft={tmp_path / 'p'}", f"--to_hf={tmp_path / 'h'}")
  assert r.returncode == 2 and "exactly one of" in r.stderr
