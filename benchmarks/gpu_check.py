"""One-GPU check (H100/H200): training MFU and memory at sequence 8,192 in bf16, and batch-1 decode
as a fraction of the HBM bound. Prints one JSON object.

    python benchmarks/gpu_check.py [--out=gpu_check.json] [--budget_s=450]
    python benchmarks/gpu_check.py --smoke          # tiny shapes on CPU (what the tests run)

Cases, each in its own process (clean `peak_bytes_in_use`, an OOM cannot take the others down):
  train_1b    Llama 3.2 1B shape (16 layers, tied 128k vocabulary)
  train_8b    Llama 3 8B shape with --layers_8b layers (8 by default: fits one GPU with AdamW)
  decode      batch-1 greedy decode of the 1B shape in bf16 vs the HBM-bandwidth bound
              (benchmarks/decode_bench.decode_hbm_fraction)
Training uses the trainer's own step (swallow_jax.train.step: AdamW, clipping, z-loss) on a
1-device mesh, bf16 compute with fp32 parameters and optimizer state, unpacked causal batches so
attention='cudnn' runs jax.nn.dot_product_attention(is_causal=True) (the cuDNN flash kernel).
Each train case compiles its (batch, remat) candidates in order and runs the first whose compiled
memory (XLA's own estimate on that GPU) fits; a runtime OOM moves on to the next candidate, any
other failure retries once with attention='dot_product' (reported in the result).
MFU = tokens/s x FLOPs/token (swallow_jax.train.metrics: 6N + causal attention) / peak bf16.

Imports only jax, flax, optax, numpy and swallow_jax's model/train/parallel modules: the GPU box
has no grain, ml_collections or array_record (checked by tests/test_benchmarks_smoke.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Any

from absl import app, flags

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny shapes, CPU, seconds (for tests).")
_OUT = flags.DEFINE_string("out", "", "Also write the JSON here.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed training steps per case (after 1 compile step).")
_LAYERS_8B = flags.DEFINE_integer("layers_8b", 8, "Layers of the 8B-shaped case.")
_CASES = flags.DEFINE_list("cases", ["train_1b", "train_8b", "decode"], "Cases to run.")
_BUDGET = flags.DEFINE_integer("budget_s", 450, "Stop starting new cases/candidates after this.")
_CASE = flags.DEFINE_string("case", "", "Internal: run one case in this process.")
_CANDIDATES = flags.DEFINE_string("candidates", "", "Internal: 'batch,remat;...' for --case.")
_ATTENTION = flags.DEFINE_string("attention", "cudnn", "Internal: attention backend for --case.")
_PROFILE = flags.DEFINE_string("profile_dir", "", "Write a jax.profiler trace of the timed steps "
                               "of each train case under this directory (TensorBoard/XProf).")

SEQ_LEN = 8192
# (batch, remat) candidates per case, most throughput first; the first whose compiled memory fits
# the device runs. Per-device peaks estimated by `python -m swallow_jax.plan` (XLA:CPU with the
# flash-attention memory model): 1B (2, none) 118 GB, (1, none) 71 GB, (2, dots_no_batch) 70 GB,
# (2, full) 48 GB; 8B with 8 layers (1, none) 96 GB, (1, dots_no_batch) 69 GB, (1, full) 59 GB.
# 'none' first: the other policies also recompute the cuDNN attention forward in the backward.
CANDIDATES = {
    "train_1b": [(2, "none"), (1, "none"), (2, "dots_no_batch"), (2, "full")],
    "train_8b": [(1, "none"), (1, "dots_no_batch"), (1, "full")],
}
SMOKE_CANDIDATES = [(2, "none"), (1, "full")]
OPT = dict(peak_lr=1e-4, warmup_steps=10, decay_steps=1000, clip_norm=1.0)


def case_config(case: str, smoke: bool, layers_8b: int, remat: str, attention: str = "cudnn"):
  from swallow_jax.model import presets  # pylint: disable=g-import-not-at-top
  if smoke:  # CPU: the XLA attention instead of cuDNN
    return presets.get("tiny_gqa", vocab_size=256, max_position_embeddings=128,
                       dtype="bfloat16", attention="xla", remat_policy=remat)
  name, extra = ("llama3_2_1b", {}) if case in ("train_1b", "decode") else (
      "llama3_8b", {"num_layers": layers_8b})
  return presets.get(name, dtype="bfloat16", attention=attention, remat_policy=remat, **extra)


def device_info() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.local_devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind, "jax": jax.__version__}


def _needed_bytes(compiled) -> int | None:
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)


def train_case(case: str, candidates: list[tuple[int, str]], smoke: bool, layers_8b: int,
               steps: int, profile_dir: str = "", attention: str = "cudnn") -> dict[str, Any]:
  """Compiles each (batch, remat) candidate until the compiler's memory estimate fits the device,
  then initializes and times the trainer's step with it. A runtime OOM propagates (the parent
  retries with the candidates after it; stderr names the one that ran)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from swallow_jax import parallel, plan  # pylint: disable=g-import-not-at-top
  from swallow_jax.train import metrics, optimizer, step  # pylint: disable=g-import-not-at-top

  seq_len = 64 if smoke else SEQ_LEN
  dev = jax.local_devices()[0]
  limit = (dev.memory_stats() or {}).get("bytes_limit")
  mesh = parallel.make_mesh({"fsdp": 1}, [dev])
  tx, lr = optimizer.make_optimizer(OPT)
  rejected = []
  with parallel.mesh_context(mesh):
    for batch, remat in candidates:
      cfg = case_config(case, smoke, layers_8b, remat, attention)
      step_fn, abstract, abstract_batch, shardings = plan.abstract_train_step(
          cfg, tx, lr, mesh, batch, seq_len, z_loss=1e-4, loss_chunk_size=1024, plain_causal=True)
      t0 = time.perf_counter()
      compiled = step_fn.lower(abstract, abstract_batch).compile()
      compile_s = time.perf_counter() - t0
      needed = _needed_bytes(compiled)
      if limit and needed and needed > limit:
        rejected.append({"candidate": f"{batch},{remat}", "needs_bytes": needed,
                         "compile_s": compile_s})
        continue
      break
    else:
      raise MemoryError(f"RESOURCE_EXHAUSTED: no candidate fits {limit} bytes: {rejected}")
    print(f"RUNNING {batch},{remat}", file=sys.stderr, flush=True)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq_len + 1), np.int32)
    data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_weights": np.ones((batch, seq_len), np.float32),
            "positions": None, "segment_ids": None}  # unpacked: cuDNN's is_causal path
    state = step.jit_init(cfg, tx, 0, shardings)()
    data = jax.device_put(data, parallel.batch_sharding(mesh))
    state, m = compiled(state, data)
    first_loss = float(m["loss"])
    if profile_dir:
      jax.profiler.start_trace(profile_dir)
    t0 = time.perf_counter()
    for _ in range(steps):
      state, m = compiled(state, data)
    last_loss = float(m["loss"])  # blocks on the last step
    step_s = (time.perf_counter() - t0) / steps
    if profile_dir:
      jax.profiler.stop_trace()
  tps = batch * seq_len / step_s
  flops_token = metrics.flops_per_token(cfg, seq_len)
  peak = metrics.peak_flops_per_device(dev.device_kind)
  stats = dev.memory_stats() or {}
  return {
      "model": {"layers": cfg.num_layers, "hidden": cfg.hidden_size, "params": cfg.num_params,
                "vocab": cfg.vocab_size, "attention": cfg.attention, "remat": remat},
      "batch": batch, "seq_len": seq_len, "step_s": step_s, "tokens_per_sec": tps,
      "flops_per_token": flops_token, "tflops_per_sec": tps * flops_token / 1e12,
      "peak_tflops": peak / 1e12 if peak else None,
      "mfu": metrics.mfu(tps, flops_token, 1, peak), "compile_s": compile_s,
      "loss_first": first_loss, "loss_last": last_loss,
      "peak_bytes_in_use": stats.get("peak_bytes_in_use"), "bytes_limit": stats.get("bytes_limit"),
      "compiled_needs_bytes": needed, "rejected_by_compiler_estimate": rejected,
  }


def decode_case(smoke: bool) -> dict[str, Any]:
  """Batch-1 decode vs the HBM bound, measured by the eval engineer's decode_bench."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import decode_bench  # pylint: disable=g-import-not-at-top
  if smoke:  # CPU has no HBM entry: a nominal 20 GB/s only exercises the code path.
    return decode_bench.decode_hbm_fraction("tiny", prompt_len=8, new_tokens=(17, 30),
                                            dtype="bfloat16", hbm_bytes_per_s=20e9, repeats=1)
  return decode_bench.decode_hbm_fraction("llama3_2_1b", prompt_len=128, new_tokens=(130, 256),
                                          dtype="bfloat16")


def parse_candidates(text: str) -> list[tuple[int, str]]:
  """'2,dots_no_batch;1,full' -> [(2, 'dots_no_batch'), (1, 'full')]."""
  out = []
  for item in filter(None, text.split(";")):
    batch, remat = item.split(",")
    out.append((int(batch), remat))
  return out


def run_one(case: str, candidates: str, smoke: bool, layers_8b: int, steps: int,
            profile_dir: str = "", attention: str = "cudnn") -> dict[str, Any]:
  out = {"case": case, **device_info()}
  if case == "decode":
    out.update(decode_case(smoke))
  else:
    out.update(train_case(case, parse_candidates(candidates), smoke, layers_8b, steps,
                          profile_dir, attention))
  return out


def _is_oom(text: str) -> bool:
  return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory",
                                 "OOM", "Allocator"))


def run_all(cases: list[str], smoke: bool, layers_8b: int, steps: int, budget_s: int,
            out_path: str = "", profile_dir: str = "") -> dict[str, Any]:
  """Runs each case (and its candidates) in a child process; never touches the GPU itself."""
  start = time.perf_counter()
  env = dict(os.environ)
  if smoke:
    env.update(JAX_PLATFORMS="cpu")
  else:
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  results: dict[str, Any] = {}
  for i, case in enumerate(cases):
    # Leave each later case at least 90 s of the budget (decode: compile + 6 timed generations).
    deadline = start + budget_s - 90 * (len(cases) - 1 - i)
    todo = [] if case == "decode" else (SMOKE_CANDIDATES if smoke else CANDIDATES[case])
    attention = "cudnn"
    attempts = []
    while True:
      left = deadline - time.perf_counter()
      if left < 30:
        attempts.append({"skipped": "time budget spent", "untried": todo})
        break
      cands = ";".join(f"{b},{r}" for b, r in todo)
      cmd = [sys.executable, os.path.abspath(__file__), f"--case={case}",
             f"--candidates={cands}", f"--layers_8b={layers_8b}", f"--steps={steps}",
             f"--attention={attention}"]
      cmd += ["--smoke"] if smoke else []
      cmd += [f"--profile_dir={profile_dir}/{case}"] if profile_dir and case != "decode" else []
      try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=left,
                              check=False)
      except subprocess.TimeoutExpired:
        attempts.append({"error": "timed out (budget)", "candidates": todo})
        break
      lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
      if proc.returncode == 0 and lines:
        results[case] = json.loads(lines[-1])
        break
      ran = re.findall(r"^RUNNING (\d+),(\w+)$", proc.stderr, re.M)
      attempts.append({"ran": ",".join(ran[-1]) if ran else None, "attention": attention,
                       "error": "out of memory" if _is_oom(proc.stderr) else
                       f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"})
      if not _is_oom(proc.stderr) and not smoke and case != "decode" and attention == "cudnn":
        attention = "dot_product"  # cuDNN unavailable/unsupported: XLA's fused attention instead
        continue
      if not (_is_oom(proc.stderr) and ran):
        break
      failed = (int(ran[-1][0]), ran[-1][1])
      todo = todo[todo.index(failed) + 1:]
      if not todo:
        break
    if case not in results:
      results[case] = {"case": case, "failed": attempts}
    elif attempts:
      results[case]["earlier_attempts"] = attempts
  report = {"benchmark": "gpu_check", "smoke": smoke, "seq_len": 64 if smoke else SEQ_LEN,
            "wall_s": time.perf_counter() - start, "results": results,
            "targets": {"mfu": 0.55, "decode_fraction_of_hbm_bound": 0.70}}
  if out_path:
    with open(out_path, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)
  return report


def main(argv):
  if len(argv) > 1:
    sys.exit(f"unexpected arguments: {argv[1:]}")
  unknown = set(_CASES.value) - {"train_1b", "train_8b", "decode"}
  if unknown or (_CASE.value and _CASE.value not in ("train_1b", "train_8b", "decode")):
    sys.exit(f"unknown case(s): {sorted(unknown) or _CASE.value}")
  if _STEPS.value < 1 or _LAYERS_8B.value < 1:
    sys.exit("--steps and --layers_8b must be positive")
  if _CASE.value:
    if _SMOKE.value:
      import jax  # pylint: disable=g-import-not-at-top
      jax.config.update("jax_platforms", "cpu")
      jax.config.update("jax_num_cpu_devices", 1)
    print(json.dumps(run_one(_CASE.value, _CANDIDATES.value, _SMOKE.value, _LAYERS_8B.value,
                             _STEPS.value, _PROFILE.value, _ATTENTION.value)))
    return
  print(json.dumps(run_all(_CASES.value, _SMOKE.value, _LAYERS_8B.value, _STEPS.value,
                           _BUDGET.value, _OUT.value, _PROFILE.value), indent=1))


if __name__ == "__main__":
  app.run(main)
