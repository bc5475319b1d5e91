"""LoRA vs full-parameter training on this CPU: step time and peak memory, same shape, one run.

    python benchmarks/lora_bench.py [--shape=bench] [--batch=4] [--seq_len=512] [--rank=16]
        [--steps=3] [--rounds=3]

The model, batch and update are those of benchmarks/train_step_bench.py (Llama-3-shaped, fp32,
AdamW with clipping, no remat, one CPU device); LoRA adapts all seven projections (alpha = 2 r,
no dropout) and the base stays fp32, so the two differ only in what trains. Both steps are the
trainer's own (`swallow_jax.train.step`: `state_from_params`, `make_train_step`,
`jit_train_step`), built from the same initial params: at step 0 (B = 0) both give the same loss.

  time     the two steps alternate in rounds of --steps steps in this process, so both see the
           same background load; best round reported (other jobs only add time), median beside.
  memory   per side (a) the compiled step's XLA memory analysis: arguments + outputs - donated
           aliases + temporaries, as `python -m swallow_jax.plan` counts it; (b) the bytes of
           the state, of what trains and of what a checkpoint holds; (c) the peak RSS of a fresh
           process (`--rss_side`, VmHWM) that builds the state and runs --steps steps, minus
           that process's peak right after importing JAX and the model (the import is the same
           for both and would hide the difference at small shapes).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step_bench  # pylint: disable=g-import-not-at-top,wrong-import-position

SIDES = ("full", "lora")


def _peak_rss_mib() -> float:
  """This process's peak RSS: VmHWM, which exec resets (ru_maxrss would carry the parent's)."""
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024  # kB
  raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _bytes(tree: Any) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _count(tree: Any) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return sum(x.size for x in jax.tree.leaves(tree))


def build(side: str, shape: str, batch: int, seq_len: int, rank: int) -> dict[str, Any]:
  """One side's jitted step, state and batch, as the trainer builds them, on one CPU device."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from swallow_jax import parallel  # pylint: disable=g-import-not-at-top
  from swallow_jax import model  # pylint: disable=g-import-not-at-top
  from swallow_jax.model.lora import LoraConfig  # pylint: disable=g-import-not-at-top
  from swallow_jax.train import optimizer, step  # pylint: disable=g-import-not-at-top

  cfg = train_step_bench.model_config(shape, seq_len)
  lora_cfg = LoraConfig(rank=rank, alpha=2.0 * rank) if side == "lora" else None
  mesh = parallel.make_mesh({"fsdp": 1}, jax.devices()[:1])
  tx, lr = optimizer.make_optimizer(train_step_bench.OPT)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (batch, seq_len + 1), dtype=np.int32)
  data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "loss_weights": np.ones((batch, seq_len), np.float32),
          "positions": None, "segment_ids": None}
  with parallel.mesh_context(mesh):
    params = jax.jit(model.init_params, static_argnums=0)(cfg, jax.random.key(0))
    state = step.state_from_params(params, tx, 0, lora_cfg)
    del params
    abstract = jax.eval_shape(lambda: state)
    param_sh = parallel.param_shardings(abstract["params"], model.param_logical_axes(cfg),
                                          mesh)
    lora_sh = (step.lora_shardings(cfg, lora_cfg, abstract["lora"], mesh)
               if lora_cfg else None)
    shardings = step.state_shardings(abstract, tx, param_sh, mesh, lora_sh)
    step_fn = step.jit_train_step(step.make_train_step(
        cfg, tx, lr, param_shardings=param_sh, lora_cfg=lora_cfg, lora_shardings=lora_sh),
                                  shardings, mesh)
    state = jax.device_put(state, shardings)
    data = jax.device_put(data, parallel.batch_sharding(mesh))
  return {"cfg": cfg, "mesh": mesh, "step_fn": step_fn, "state": state, "data": data}


def steps(side: dict[str, Any], k: int) -> float:
  """Runs k steps in place; the last loss (blocks)."""
  from swallow_jax import parallel  # pylint: disable=g-import-not-at-top
  with parallel.mesh_context(side["mesh"]):
    for _ in range(k):
      side["state"], metrics = side["step_fn"](side["state"], side["data"])
    return float(metrics["loss"])


def sizes(side: dict[str, Any]) -> dict[str, Any]:
  """The compiled step's memory analysis and the state's byte counts."""
  from swallow_jax import parallel  # pylint: disable=g-import-not-at-top
  from swallow_jax.train import step  # pylint: disable=g-import-not-at-top
  with parallel.mesh_context(side["mesh"]):
    mem = side["step_fn"].lower(side["state"], side["data"]).compile().memory_analysis()
  state = side["state"]
  out = {"trainable_params": _count(step.trainable(state)),
         "state_bytes": _bytes(state), "opt_state_bytes": _bytes(state["opt_state"]),
         "checkpoint_bytes": _bytes(step.checkpointed(state))}
  if mem is not None:
    out.update(compiled_temp_bytes=mem.temp_size_in_bytes,
               compiled_peak_bytes=(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                    - mem.alias_size_in_bytes + mem.temp_size_in_bytes))
  return out


def rss_side(side: str, shape: str, batch: int, seq_len: int, rank: int, k: int) -> dict[str, Any]:
  """Peak RSS of this (fresh) process: after the imports, and after building and k steps."""
  import jax  # pylint: disable=g-import-not-at-top
  import swallow_jax.train.step  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  jax.devices()
  imported = _peak_rss_mib()
  steps(build(side, shape, batch, seq_len, rank), k)
  peak = _peak_rss_mib()
  return {"side": side, "import_peak_rss_mib": imported, "peak_rss_mib": peak,
          "peak_rss_over_import_mib": peak - imported}


def _rss_subprocess(side: str, argv: list[str]) -> dict[str, Any]:
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, f"--rss_side={side}"],
                        capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"--rss_side={side} failed:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout)


def run(shape: str, batch: int, seq_len: int, rank: int, k: int, rounds: int,
        rss: bool) -> dict[str, Any]:
  """Both sides timed in alternating rounds, their memory, and the LoRA / full ratios."""
  import jax  # pylint: disable=g-import-not-at-top
  built, first = {}, {}
  for name in SIDES:
    built[name] = build(name, shape, batch, seq_len, rank)
    t0 = time.perf_counter()
    first[name] = (steps(built[name], 1), time.perf_counter() - t0)
  times = {name: [] for name in SIDES}
  for _ in range(rounds):
    for name in SIDES:
      t0 = time.perf_counter()
      steps(built[name], k)
      times[name].append((time.perf_counter() - t0) / k)
  results = {}
  for name in SIDES:
    results[name] = {"step_s": min(times[name]), "step_s_median": statistics.median(times[name]),
                     "step_s_rounds": times[name], "first_step_s": first[name][1],
                     "first_loss": first[name][0], **sizes(built[name])}
  del built
  if rss:
    argv = [f"--shape={shape}", f"--batch={batch}", f"--seq_len={seq_len}", f"--rank={rank}",
            f"--steps={k}"]
    for name in SIDES:
      results[name].update({key: v for key, v in _rss_subprocess(name, argv).items()
                            if key != "side"})
  full, lora = results["full"], results["lora"]
  ratios = {key: lora[key] / full[key] for key in (
      "step_s", "trainable_params", "opt_state_bytes", "checkpoint_bytes", "state_bytes",
      "compiled_peak_bytes", "peak_rss_over_import_mib") if full.get(key)}
  cfg = train_step_bench.model_config(shape, seq_len)
  return {"benchmark": "lora_vs_full", "shape": train_step_bench.SHAPES[shape],
          "num_params": cfg.num_params, "batch": batch, "seq_len": seq_len,
          "lora": {"rank": rank, "alpha": 2.0 * rank, "targets": "all seven projections"},
          "dtype": "float32", "cpu_threads": os.cpu_count(), "jax": jax.__version__,
          "results": results, "lora_over_full": ratios,
          "note": "best of alternating rounds (median beside it) on a machine shared with other "
                  "jobs; peak RSS from a fresh process per side, minus its post-import peak"}


def _define_flags() -> None:
  flags.DEFINE_enum("shape", "bench", list(train_step_bench.SHAPES), "Model shape.")
  flags.DEFINE_integer("batch", 4, "Sequences per step.")
  flags.DEFINE_integer("seq_len", 512, "Tokens per sequence.")
  flags.DEFINE_integer("rank", 16, "LoRA rank (alpha = 2 * rank).")
  flags.DEFINE_integer("steps", 3, "Timed steps per round (and steps of each RSS process).")
  flags.DEFINE_integer("rounds", 3, "Alternating rounds (full, lora).")
  flags.DEFINE_bool("rss", True, "Also measure peak RSS in a fresh process per side.")
  flags.DEFINE_enum("rss_side", None, list(SIDES), "Internal: be one side's RSS process.")


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    sys.exit(f"unexpected arguments: {argv[1:]}")
  if min(FLAGS.batch, FLAGS.seq_len, FLAGS.steps, FLAGS.rounds, FLAGS.rank) < 1:
    sys.exit("--batch, --seq_len, --steps, --rounds and --rank must be positive")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", 1)  # one device: no fake-device split of the 2 cores
  if FLAGS.rss_side:
    print(json.dumps(rss_side(FLAGS.rss_side, FLAGS.shape, FLAGS.batch, FLAGS.seq_len,
                              FLAGS.rank, FLAGS.steps)))
    return
  print(json.dumps(run(FLAGS.shape, FLAGS.batch, FLAGS.seq_len, FLAGS.rank, FLAGS.steps,
                       FLAGS.rounds, FLAGS.rss), indent=1))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
