"""Config loading helpers and the sweep launcher (dry runs and a real launch of cheap runs)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from swallow_jax import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "swallow_jax.sweep", *args], cwd=cwd,
                        capture_output=True, text=True)


def test_parse_arg_types_and_errors():
  opts = sweep.parse_arg("steps=5,drop=cosmopedia,micro", steps=0, drop="", micro=False, lr=0.1)
  assert (opts.steps, opts.drop, opts.micro, opts.lr) == (5, "cosmopedia", True, 0.1)
  assert sweep.parse_arg(None, steps=3).steps == 3
  with pytest.raises(ValueError, match="expected one of"):
    sweep.parse_arg("stpes=5", steps=0)
  assert sweep.split_spec("configs/a.py:x=1,y") == ("configs/a.py", "x=1,y")
  assert sweep.split_spec("configs/a.py") == ("configs/a.py", None)


def test_ablation_sweep_dry_run_prints_exact_commands(tmp_path):
  out = _cli("--config=configs/ablation.py:8xh100,root=/mnt/s", "--dry-run",
             f"--workdir_root={tmp_path}")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert lines[0::2] == ["# full", "# no_cosmopedia", "# no_laboro_paracorpus", "# no_openwebmath"]
  assert lines[3] == (f"{sys.executable} -m swallow_jax.recipe "
                      "--config=configs/ablation.py:8xh100,root=/mnt/s,drop=cosmopedia "
                      f"--workdir={tmp_path}/no_cosmopedia")
  assert lines[1].endswith(f"--config=configs/ablation.py:8xh100,root=/mnt/s --workdir={tmp_path}/full")
  assert not os.listdir(tmp_path)  # a dry run creates nothing
  only = _cli("--config=configs/ablation.py", "--dry-run", "--only=no_openwebmath")
  assert only.stdout.count("#") == 1 and "drop=openwebmath" in only.stdout


def test_ablation_runs_remove_one_source_each():
  path = os.path.join(REPO, "configs", "ablation.py")
  full = sweep.load_config(f"{path}:v5p-128")
  names = {s["name"] for s in full.cpt.data.sources}
  for run in sweep.runs(path)[1:]:
    cfg = sweep.load_config(f"{path}:{sweep.run_arg(path, run)}")
    kept = {s["name"] for s in cfg.cpt.data.sources}
    assert names - kept == {run["name"][len("no_"):]}
    assert sum(s["weight"] for s in cfg.cpt.data.sources) == pytest.approx(
        sum(s["weight"] for s in full.cpt.data.sources))


def test_bad_input_exits_non_zero_with_a_reason(tmp_path):
  no_sweep = _cli("--config=configs/demo.py", "--dry-run")
  assert no_sweep.returncode != 0 and "has no sweep() function" in no_sweep.stderr
  missing = _cli("--config=configs/nope.py", "--dry-run")
  assert missing.returncode != 0 and "config file not found" in missing.stderr
  bad_only = _cli("--config=configs/ablation.py", "--dry-run", "--only=nope")
  assert bad_only.returncode != 0 and "'nope'" in bad_only.stderr
  dup = tmp_path / "dup.py"
  dup.write_text("def get_config(arg=None):\n  return {}\n"
                 "def sweep():\n  yield dict(name='a')\n  yield dict(name='a')\n")
  assert "duplicate run names" in _cli(f"--config={dup}", "--dry-run").stderr


def test_launch_runs_each_run_into_its_workdir(tmp_path):
  """A real (non-dry) sweep over two cheap recipe runs: the demo corpus at two seeds."""
  cfg = tmp_path / "tiny_sweep.py"
  cfg.write_text(textwrap.dedent("""
      import ml_collections
      from swallow_jax.sweep import parse_arg

      def get_config(arg=None):
        c = ml_collections.ConfigDict()
        c.stages = ("data",)
        c.data = dict(kind="demo_data", seed=parse_arg(arg, seed=0).seed, scale=0.02)
        return c

      def sweep():
        for seed in (1, 2):
          yield dict(name=f"seed{seed}", arg=f"seed={seed}", **{"data.scale": 0.03})
  """))
  out = _cli(f"--config={cfg}", f"--workdir_root={tmp_path / 'runs'}")
  assert out.returncode == 0, out.stderr
  assert "--config.data.scale=0.03" in out.stdout
  for seed in (1, 2):
    done = json.load(open(tmp_path / "runs" / f"seed{seed}" / "data" / "DONE.json"))
    assert done["config"]["seed"] == seed and done["config"]["scale"] == 0.03
