"""Compile time of the full train step for the 80-layer Llama 3 70B shape: scanned vs unrolled layers.

    python benchmarks/compile_bench.py [--preset=llama3_70b] [--devices=8] [--seq_len=2048]
        [--remat=full] [--modes=scan,unrolled]

The step is the trainer's (AdamW, clipping, z-loss, FSDP shardings over fake CPU devices), built
from abstract shapes by `swallow_jax.plan.abstract_train_step`: no weights are allocated. Each
mode is timed as trace+lower and XLA compile, in a fresh subprocess so neither warms the other's
caches. Compiling is on XLA:CPU; GPU/TPU compilers take different (usually longer) times, but the
scan/unrolled ratio is what this shows: a scan compiles one layer body, unrolling compiles L.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from absl import app, flags

_PRESET = flags.DEFINE_string("preset", "llama3_70b", "Model preset (swallow_jax.model.presets).")
_LAYERS = flags.DEFINE_integer("layers", 0, "Override num_layers (0: the preset's).")
_DEVICES = flags.DEFINE_integer("devices", 8, "Fake CPU devices; the mesh is fsdp=devices.")
_SEQ = flags.DEFINE_integer("seq_len", 2048, "Sequence length (one sequence per device).")
_REMAT = flags.DEFINE_string("remat", "full", "remat_policy of the model.")
_MODES = flags.DEFINE_list("modes", ["scan", "unrolled"], "Which of scan, unrolled to time.")
_ONE = flags.DEFINE_string("one", "", "Internal: time one mode in this process and print JSON.")

_OPT = dict(peak_lr=1e-5, warmup_steps=100, decay_steps=1000, clip_norm=1.0)


def time_one(preset: str, layers: int, devices: int, seq_len: int, remat: str,
             scan: bool) -> dict:
  """Seconds to trace+lower and to compile the train step (call in a fresh process)."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", devices)
  from swallow_jax import parallel, plan  # pylint: disable=g-import-not-at-top
  from swallow_jax.model import presets  # pylint: disable=g-import-not-at-top
  from swallow_jax.train import optimizer  # pylint: disable=g-import-not-at-top

  overrides = dict(dtype="bfloat16", remat_policy=remat, scan_layers=scan)
  if layers:
    overrides["num_layers"] = layers
  cfg = presets.get(preset, **overrides)
  mesh = parallel.make_mesh({"fsdp": devices})
  with parallel.mesh_context(mesh):
    t0 = time.perf_counter()
    step_fn, state, batch, _ = plan.abstract_train_step(cfg, *optimizer.make_optimizer(_OPT), mesh,
                                                        devices, seq_len, z_loss=1e-4)
    lowered = step_fn.lower(state, batch)
    lower_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lowered.compile()
    compile_s = time.perf_counter() - t0
  return {"mode": "scan" if scan else "unrolled", "num_layers": cfg.num_layers,
          "num_params": cfg.num_params, "lower_s": lower_s, "compile_s": compile_s,
          "hlo_text_bytes": len(lowered.as_text())}


def run(preset: str, layers: int, devices: int, seq_len: int, remat: str,
        modes: list[str]) -> dict:
  results = {}
  for mode in modes:
    cmd = [sys.executable, __file__, f"--one={mode}", f"--preset={preset}", f"--layers={layers}",
           f"--devices={devices}", f"--seq_len={seq_len}", f"--remat={remat}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
      raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    results[mode]["process_s"] = time.perf_counter() - t0
  out = {"benchmark": "compile", "preset": preset, "devices": devices, "seq_len": seq_len,
         "remat": remat, "results": results,
         "note": "XLA:CPU compile on a 2-core machine shared with other jobs; abstract shapes only"}
  if "scan" in results and "unrolled" in results:
    total = lambda r: r["lower_s"] + r["compile_s"]
    out["unrolled_over_scan"] = total(results["unrolled"]) / total(results["scan"])
  return out


def main(argv):
  if len(argv) > 1:
    sys.exit(f"unexpected arguments: {argv[1:]}")
  bad = set(_MODES.value) - {"scan", "unrolled"}
  if bad or not _MODES.value:
    sys.exit(f"--modes must be from scan,unrolled; got {_MODES.value}")
  if _DEVICES.value < 1 or _SEQ.value < 1 or _LAYERS.value < 0:
    sys.exit("--devices and --seq_len must be positive, --layers >= 0")
  if _ONE.value:
    print(json.dumps(time_one(_PRESET.value, _LAYERS.value, _DEVICES.value, _SEQ.value,
                              _REMAT.value, _ONE.value == "scan")))
    return
  try:
    print(json.dumps(run(_PRESET.value, _LAYERS.value, _DEVICES.value, _SEQ.value, _REMAT.value,
                         _MODES.value), indent=1))
  except (RuntimeError, ValueError) as e:
    sys.exit(f"compile_bench: {e}")


if __name__ == "__main__":
  app.run(main)
