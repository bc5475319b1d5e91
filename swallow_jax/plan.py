"""Plan a training run before renting it: per-device memory and FLOPs of a config's train step.

    python -m swallow_jax.plan --config=configs/X.py [--devices=N] [--mesh=data:1,fsdp:8,tensor:1]
        [--remat=full] [--hbm_gb=80] [--json]

Builds the real train step of the config (model, optimizer, z-loss, gradient accumulation,
shardings: the trainer's own functions) from abstract shapes only (`jax.eval_shape`, no weights
are allocated), sets up N fake CPU devices, and compiles it ahead of time
(`jit(...).lower(...).compile()`) for the mesh. It prints, per device:

  params / opt_state   bytes of the sharded parameters and optimizer state (exact, from the
                       shardings)
  trainable            with LoRA: the adapter (+ `lora.trainable` tensors), fp32; params is then
                       the frozen base and opt_state covers the adapter only
  temp                 the compiler's temporaries (activations, gradients, collectives' buffers)
  peak                 arguments + outputs - donated aliases + temporaries

and FLOPs per step: the analytical MaxText-style count (`swallow_jax.train.metrics`) beside XLA's
own cost analysis (of the compiled program, where a scanned layer loop counts once, and of the
same step lowered with layers unrolled, which counts remat recomputation).

The compiler here is XLA:CPU, so memory is an estimate of what XLA:GPU/TPU will need (their
fusion, collective and rematerialization passes differ); use it to rank meshes and remat
policies and to see what clearly does or does not fit, and leave ~10% headroom. Attention is
traced as `flash_memory_model` by default: XLA:CPU's own attention would hold [B, H, T, T] scores
that the cuDNN and Splash kernels never materialize (--noflash shows that CPU-only figure).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import sys
import time
from typing import Any
from unittest import mock

from absl import flags
import jax
import jax.numpy as jnp

from swallow_jax import cli
from swallow_jax import parallel
from swallow_jax.model import llama as llama_lib
from swallow_jax.train import metrics
from swallow_jax.train import optimizer as optimizer_lib
from swallow_jax.train import step as step_lib

FLAGS = flags.FLAGS


def parse_mesh(spec: str) -> dict[str, int]:
  """'data:1,fsdp:8,tensor:1' -> {'data': 1, 'fsdp': 8, 'tensor': 1}."""
  items = [p.strip() for p in spec.split(",") if p.strip()]
  for part in items:
    if not re.fullmatch(r"\w+\s*:\s*-?\d+", part):
      raise ValueError(f"--mesh: expected 'axis:size' items with int sizes, got {part!r}")
  return {name.strip(): int(size) for name, size in (p.split(":") for p in items)}


def num_devices_for(mesh_cfg: dict[str, int], devices: int) -> int:
  """The device count: `devices` if given, else the product of the (positive) mesh sizes."""
  if -1 in mesh_cfg.values() and not devices:
    raise ValueError(f"mesh {mesh_cfg} has a -1 axis: pass --devices")
  return devices or max(1, math.prod(mesh_cfg.values()))


def abstract_train_step(model_cfg: Any, tx: Any, lr: Any, mesh: Any, global_batch: int,
                        seq_len: int, *, seed: int = 0, plain_causal: bool = False,
                        lora_cfg: Any = None, **step_options: Any) -> tuple[Any, Any, Any, Any]:
  """(jitted step, abstract state, abstract batch, state shardings) of `train.loop.run`'s step
  (`train.step.sharded_train_step`), as sharded ShapeDtypeStructs; call inside
  `parallel.mesh_context(mesh)`. `plain_causal` drops positions/segment_ids (`is_causal` kernels);
  `lora_cfg` (rank > 0): the LoRA step; `step_options`: `TrainSection.step_options()`."""
  step_fn, abstract, shardings = step_lib.sharded_train_step(
      model_cfg, tx, lr, mesh, seed=seed, lora_cfg=lora_cfg, **step_options)
  batch = {k: jax.ShapeDtypeStruct((global_batch, seq_len),
                                   jnp.float32 if k == "loss_weights" else jnp.int32,
                                   sharding=parallel.batch_sharding(mesh))
           for k in step_lib.BATCH_KEYS}
  if plain_causal:
    batch["positions"] = batch["segment_ids"] = None
  return step_fn, abstract, batch, shardings


def flash_memory_model(q: jax.Array, k: jax.Array, v: jax.Array, *args, **kwargs) -> jax.Array:
  """Memory stand-in for a flash kernel (cuDNN, Splash) on CPU: real output/gradient shapes, only
  O(T) tensors (no [B, H, T, T] scores); its numbers are meaningless and its FLOPs negligible."""
  del args, kwargs
  b, t, h, dh = q.shape
  kv = k.shape[2]
  summary = (jnp.sum(k, axis=1) + jnp.sum(v, axis=1))[:, None, :, None, :]  # [B, 1, KV, 1, Dh]
  return (q.reshape(b, t, kv, h // kv, dh) * summary).reshape(b, t, h, dh)


def _per_device_bytes(tree: Any) -> int:
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def _xla_flops(cost: Any, scale: int = 1) -> float | None:
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0] if cost else None
  return float(cost["flops"]) * scale if cost and "flops" in cost else None


def plan(config: Any, devices: int = 0, mesh_override: dict[str, int] | None = None,
         remat: str = "", hbm_gb: float = 0.0, hlo_flops: bool = True,
         flash: bool = True) -> dict[str, Any]:
  """Compiles the config's train step for the mesh on fake CPU devices; returns the report dict.

  `flash`: trace attention as `flash_memory_model` (else as XLA:CPU runs the config's backend).
  Must run before anything in the process touched a JAX backend (it sets the CPU device count).
  """
  from swallow_jax import config_utils  # pylint: disable=g-import-not-at-top  (ml_collections)
  from swallow_jax.model import io as model_io  # pylint: disable=g-import-not-at-top

  try:
    spec = config_utils.TrainSpec.from_config(config)
  except model_io.ModelPathError as e:  # Planning before the checkpoint is downloaded.
    print(f"plan: init_from is not readable here ({e}); planning with the architecture of "
          f"model.preset={dict(config['model']).get('preset')!r}", file=sys.stderr)
    spec = config_utils.TrainSpec.from_config(config, read_init_from=False)
  mesh_cfg = dict(mesh_override or spec.mesh.as_dict())
  n = num_devices_for(mesh_cfg, devices)
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", n)
  if jax.device_count() != n:
    raise RuntimeError(f"wanted {n} fake CPU devices, JAX has {jax.device_count()} (a backend "
                       "was initialised before plan() ran)")
  model_cfg = dataclasses.replace(spec.model, remat_policy=remat) if remat else spec.model
  seq_len, global_batch = spec.data.seq_len, spec.data.global_batch_size
  kwargs = spec.train.step_options()
  accum = kwargs["grad_accum_steps"]
  mesh = parallel.make_mesh(mesh_cfg)

  tx, lr = optimizer_lib.make_optimizer(spec.optimizer)
  attention = (mock.patch.object(llama_lib, "attention", flash_memory_model) if flash
               else contextlib.nullcontext())
  with parallel.mesh_context(mesh), attention:
    trace = lambda cfg: abstract_train_step(cfg, tx, lr, mesh, global_batch, seq_len,
                                            lora_cfg=spec.lora, **kwargs)
    step_fn, state, batch, _ = trace(model_cfg)
    t0 = time.perf_counter()
    lowered = step_fn.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    lower_s, compile_s = t1 - t0, time.perf_counter() - t1
    hlo = None
    if hlo_flops:
      step_u, state_u, batch_u, _ = trace(dataclasses.replace(model_cfg, scan_layers=False))
      # The gradient-accumulation loop is still a loop: its body (one microbatch) counts once.
      hlo = _xla_flops(step_u.lower(state_u, batch_u).cost_analysis(), scale=accum)

  mem = compiled.memory_analysis()
  per_device = {k: _per_device_bytes(state[k]) for k in ("params", "opt_state")}
  if "lora" in state:
    per_device["trainable"] = _per_device_bytes(step_lib.trainable(state))
  if mem is not None:
    per_device.update(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
                      aliased=mem.alias_size_in_bytes, temp=mem.temp_size_in_bytes)
    per_device["peak"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                          - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
  flops_token = metrics.flops_per_token(model_cfg, seq_len, spec.lora)
  tokens = global_batch * seq_len
  report = {
      "num_devices": n, "mesh": dict(mesh.shape),
      "model": {k: getattr(model_cfg, k) for k in ("num_params", "num_layers", "hidden_size",
                "remat_policy", "scan_layers", "dtype", "param_dtype")},
      "lora": ({"rank": spec.lora.rank, "alpha": spec.lora.alpha,
                "targets": list(spec.lora.targets), "trainable": list(spec.lora.trainable),
                "num_trainable": sum(math.prod(x.shape)
                                     for x in jax.tree.leaves(step_lib.trainable(state)))}
               if spec.lora.rank else None),
      "seq_len": seq_len, "global_batch_size": global_batch, "grad_accum_steps": accum,
      "tokens_per_step": tokens,
      "per_device_bytes": per_device,
      "flops_per_step": {
          "analytical": flops_token * tokens,
          "analytical_per_device": flops_token * tokens / n,
          "xla_compiled_per_device": _xla_flops(compiled.cost_analysis()),
          "xla_hlo_unrolled": hlo,  # x grad_accum_steps; incl. remat recomputation
      },
      "lower_s": lower_s, "compile_s": compile_s,
      "attention": ("flash memory model (cuDNN/Splash-like: no T x T buffers)" if flash
                    else f"{model_cfg.attention} as compiled by XLA:CPU"),
      "backend": "cpu (XLA:CPU memory analysis: an estimate for GPU/TPU)",
      "jax": jax.__version__,
  }
  if hbm_gb and "peak" in per_device:
    report["hbm_bytes"] = int(hbm_gb * 1e9)
    report["fits"] = per_device["peak"] <= hbm_gb * 1e9
  return report


def format_table(r: dict[str, Any]) -> str:
  """The human-readable form of a `plan` report."""
  m = r["model"]
  lines = [f"model      {m['num_params'] / 1e9:.2f}B params, {m['num_layers']} layers, remat="
           f"{m['remat_policy']}, scan={m['scan_layers']}, compute {m['dtype']}",
           f"mesh       {' '.join(f'{k}={v}' for k, v in r['mesh'].items())} "
           f"({r['num_devices']} devices)"]
  if lo := r.get("lora"):
    lines.append(f"lora       rank {lo['rank']} on {','.join(lo['targets'])}"
                 + (f" + {','.join(lo['trainable'])}" if lo["trainable"] else "")
                 + f": {lo['num_trainable'] / 1e6:.1f}M trainable; base frozen in "
                 f"{m['param_dtype']}")
  lines += [f"batch      {r['global_batch_size']} x {r['seq_len']} tokens, grad_accum "
            f"{r['grad_accum_steps']}", "per device (XLA:CPU estimate)"]
  per_device = r["per_device_bytes"]
  keys = ("params", "trainable", "opt_state", "temp", "arguments", "outputs", "aliased", "peak")
  lines += [f"  {k:<10} {per_device[k] / 1e9:8.2f} GB" for k in keys if k in per_device]
  if "fits" in r:
    lines.append(f"  fits in {r['hbm_bytes'] / 1e9:g} GB: {'yes' if r['fits'] else 'NO'}")
  f = r["flops_per_step"]
  lines += ["FLOPs per step",
            f"  analytical (MaxText formula)   {f['analytical']:.4g} "
            f"({f['analytical_per_device']:.4g} per device)",
            f"  XLA compiled, per device       {f['xla_compiled_per_device'] or float('nan'):.4g} "
            "(a scanned layer loop counted once)"]
  if f["xla_hlo_unrolled"]:
    flash_note = ("; without the T x T attention matmuls under the flash model"
                  if r["attention"].startswith("flash") else "")
    lines.append(f"  XLA HLO, layers unrolled       {f['xla_hlo_unrolled']:.4g} (x grad_accum; "
                 f"remat recomputation{flash_note})")
  lines.append(f"compile    lower {r['lower_s']:.1f}s, compile {r['compile_s']:.1f}s")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.config is None:
    raise cli.UsageError("--config is required, e.g. --config=configs/demo.py")
  mesh = parse_mesh(FLAGS.mesh) if FLAGS.mesh else None
  print(f"compiling the train step for {FLAGS.mesh or 'the config mesh'} ...", file=sys.stderr,
        flush=True)
  try:
    report = plan(FLAGS.config, FLAGS.devices, mesh, FLAGS.remat, FLAGS.hbm_gb, FLAGS.hlo_flops,
                  FLAGS.flash)
  except KeyError as e:
    raise cli.Failure(f"config key {e}") from e
  print(json.dumps(report) if FLAGS.json else format_table(report))


if __name__ == "__main__":
  # Flags only when run as a program, so importing this module adds no flags to others.
  from ml_collections import config_flags  # Not on every GPU image; only the CLI needs it.
  config_flags.DEFINE_config_file("config", None, "Training config file (configs/X.py).")
  flags.DEFINE_integer(
      "devices", 0, "Fake devices to plan for (0: the product of the mesh sizes; required if the "
      "mesh has a -1).")
  flags.DEFINE_string("mesh", "", "Mesh override 'data:1,fsdp:8,tensor:1' (else config.mesh).")
  flags.DEFINE_string("remat", "", "Override model.remat_policy (none, full, dots, ...).")
  flags.DEFINE_float("hbm_gb", 0.0, "Device memory in GB (1e9 bytes) to check the fit against, "
                     "e.g. 80 (H100), 95 (TPU v5p); 0: no check.")
  flags.DEFINE_bool(
      "hlo_flops", True, "Also lower the step with layers unrolled and report its HLO FLOPs "
      "(counts remat recomputation; XLA counts a scanned layer loop's body only once).")
  flags.DEFINE_bool(
      "flash", True, "Compile attention as a flash-kernel memory model (GPU/TPU plans); "
      "--noflash compiles the config's attention as XLA:CPU runs it (materializes T x T scores).")
  flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
  cli.run(main, prog="plan")
