"""Every benchmark runs end to end in a tiny mode and prints sensible JSON.

The timings themselves are not asserted (shared CPU); only that each side ran, the numbers are
finite and positive, and the pieces agree where they must (same model on both sides, losses
near ln(vocab) at initialization, restored checkpoints equal to the saved ones).
"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _run(script, *args, env_extra=None, timeout=900):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(env_extra or {})
  proc = subprocess.run([sys.executable, os.path.join(BENCH, script), *args],
                        capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout[proc.stdout.index("{"):])


def test_checkpoint_bench_tiny(tmp_path):
  r = _run("checkpoint_bench.py", "--size_mb=4", "--repeats=1", f"--dir={tmp_path}")
  assert r["tree_bytes"] > 1 << 20
  for k in ("raw_write_gb_s", "raw_read_gb_s", "orbax_save_gb_s", "orbax_restore_gb_s"):
    assert math.isfinite(r[k]) and r[k] > 0, k
  assert not os.listdir(tmp_path)  # cleaned up


def test_compile_bench_tiny_scan():
  r = _run("compile_bench.py", "--preset=tiny", "--devices=2", "--seq_len=32", "--modes=scan")
  scan = r["results"]["scan"]
  assert scan["num_layers"] == 2 and scan["compile_s"] > 0 and scan["lower_s"] > 0


@pytest.mark.slow
def test_compile_bench_tiny_both_modes():
  r = _run("compile_bench.py", "--preset=tiny", "--layers=4", "--devices=2", "--seq_len=32")
  assert set(r["results"]) == {"scan", "unrolled"} and r["unrolled_over_scan"] > 0
  # Unrolling repeats the layer in the program text; the scan keeps one copy.
  assert r["results"]["unrolled"]["hlo_text_bytes"] > r["results"]["scan"]["hlo_text_bytes"]


def test_train_step_bench_tiny_jax_vs_torch():
  r = _run("train_step_bench.py", "--shape=smoke", "--batch=2", "--seq_len=32", "--steps=1",
           "--rounds=1", "--sides=jax,torch", "--jax_attention=xla")
  res = r["results"]
  assert set(res) == {"swallow_jax", "swallow_jax[scan_layers=False]", "transformers"}
  # Same parameters and batch: scanned and unrolled layers give the same first loss.
  assert res["swallow_jax[scan_layers=False]"]["first_loss"] == pytest.approx(
      res["swallow_jax"]["first_loss"], abs=1e-5)
  for side in res.values():
    assert side["tokens_per_sec"] > 0 and side["mfu_vs_measured_matmul_peak"] > 0
    assert abs(side["first_loss"] - math.log(256)) < 0.3  # random init: ~uniform predictions
  assert r["swallow_jax_over_transformers"] == pytest.approx(
      res["swallow_jax"]["tokens_per_sec"] / res["transformers"]["tokens_per_sec"])


def test_train_step_parts_tiny():
  r = _run("train_step_parts.py", "--shape=smoke", "--batch=2", "--seq_len=64", "--repeats=1")
  parts = r["parts"]
  assert set(parts) == {"mlp", "attention", "attention[masked reference]", "block", "head_loss",
                        "loss", "optimizer"}
  for name, row in parts.items():
    assert row["swallow_jax_s"] > 0
    if name != "attention[masked reference]":
      assert row["torch_over_jax"] == pytest.approx(row["transformers_s"] / row["swallow_jax_s"])


def test_lora_bench_tiny():
  r = _run("lora_bench.py", "--shape=smoke", "--batch=2", "--seq_len=32", "--steps=1",
           "--rounds=1", "--rank=4")
  full, lora = r["results"]["full"], r["results"]["lora"]
  # B = 0 at step 0: the adapted model is the base model, so the first losses agree.
  assert lora["first_loss"] == pytest.approx(full["first_loss"], abs=1e-6)
  assert abs(full["first_loss"] - math.log(256)) < 0.3
  d, f, layers, heads, kv, hd = 64, 128, 2, 4, 2, 16  # the smoke shape
  dims = [(d, heads * hd), (d, kv * hd), (d, kv * hd), (heads * hd, d), (d, f), (d, f), (f, d)]
  assert lora["trainable_params"] == layers * 4 * sum(i + o for i, o in dims)  # r (in + out)
  assert full["trainable_params"] == r["num_params"]
  # Adam keeps two fp32 moments of what trains; a LoRA checkpoint has no base weights.
  assert lora["opt_state_bytes"] < 2.1 * 4 * lora["trainable_params"] < full["opt_state_bytes"]
  assert lora["checkpoint_bytes"] < full["checkpoint_bytes"] - 4 * r["num_params"]
  assert lora["compiled_peak_bytes"] < full["compiled_peak_bytes"]
  for side in (full, lora):
    assert side["step_s"] > 0 and side["peak_rss_mib"] >= side["import_peak_rss_mib"] > 0
  assert r["lora_over_full"]["step_s"] == pytest.approx(lora["step_s"] / full["step_s"])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MAXTEXT_PYTHON"),
                    reason="set MAXTEXT_PYTHON to a Python 3.12 with maxtext[tpu] installed")
def test_train_step_bench_tiny_maxtext():
  r = _run("train_step_bench.py", "--shape=smoke", "--batch=2", "--seq_len=32", "--steps=2",
           "--rounds=1", "--sides=jax,maxtext", "--jax_attention=xla")
  assert r["results"]["maxtext"]["tokens_per_sec"] > 0, r["results"]["maxtext"]


def test_gpu_check_smoke_without_grain_or_ml_collections(tmp_path):
  """The GPU image has no grain / ml_collections / array_record / torch: block them and run."""
  blocked = tmp_path / "blocked"
  for name in ("grain", "ml_collections", "array_record", "torch", "transformers"):
    (blocked / name).mkdir(parents=True)
    (blocked / name / "__init__.py").write_text(
        f"raise ImportError('{name} is not installed on the GPU image')\n")
  out = tmp_path / "gpu.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHON=sys.executable, PYTHONPATH=f"{blocked}{os.pathsep}{ROOT}")
  proc = subprocess.run(["bash", os.path.join(BENCH, "gpu_check.sh"), str(out), "--smoke",
                         "--steps=1", "--cases=train_1b,decode"], capture_output=True, text=True,
                        env=env, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  r = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert json.loads(out.read_text()) == r
  train = r["results"]["train_1b"]
  assert "failed" not in train, train
  assert train["tokens_per_sec"] > 0 and train["batch"] == 2 and train["seq_len"] == 64
  assert abs(train["loss_first"] - math.log(256)) < 0.3
  assert "decode" in r["results"]
  decode = r["results"]["decode"]
  assert "failed" not in decode, decode
  # Tiny model on a busy CPU: the step time (a difference of two runs) is noise; only check it ran.
  assert decode["batch"] == 1 and math.isfinite(decode["fraction_of_hbm_bound"])
