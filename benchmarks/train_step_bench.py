"""Training-step tokens/s and MFU on this CPU: swallow_jax vs transformers (PyTorch) vs MaxText.

    python benchmarks/train_step_bench.py [--shape=bench] [--batch=4] [--seq_len=512]
        [--steps=3] [--rounds=3] [--maxtext_python=/path/to/py3.12/python]

One Llama-3-shaped model (GQA 4:1, SwiGLU, RoPE theta 5e5, untied head; narrower and shallower
than 8B so a step takes seconds on 2 cores), one batch of random tokens, float32 everywhere, and
the same update: cross-entropy, global-norm clipping 1.0, AdamW(0.9, 0.95, wd 0.1).

  swallow_jax   the trainer's jitted step (swallow_jax.train.step), 1 CPU device, no remat;
                once per --jax_attention backend ('xla' = what attention='auto' picks on CPU),
                layers scanned (the default) and, with --jax_unrolled, unrolled.
  transformers  LlamaForCausalLM (sdpa attention) + torch.optim.AdamW(foreach), eager; with
                --torch_compile also torch.compile'd.
  MaxText       `maxtext.trainers.pre_train.train` with hardware=cpu, dataset_type=synthetic and
                the same shape, run in the Python 3.12 interpreter given by --maxtext_python
                (MaxText needs >= 3.12); remat 'minimal_with_context' (its least remat).

swallow_jax and transformers alternate in rounds of --steps steps, so both see the same
background load (this machine is shared); the best round of each is reported (other jobs only
add time), the median beside it. MaxText runs
afterwards in its own process; its per-step times come from its log. MFU here is against the
measured fp32 matmul throughput of this CPU (best of a few 2048^3 jnp.dot), since a CPU has no
published bf16 peak; FLOPs per token are the trainer's formula (swallow_jax.train.metrics).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from absl import app, flags

SHAPES = {
    # ~38M parameters: 4 layers of a Llama-3-like block at width 512, 32k vocabulary.
    "bench": dict(vocab_size=32768, hidden_size=512, intermediate_size=1792, num_layers=4,
                  num_heads=8, num_kv_heads=2, head_dim=64),
    "smoke": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16),
}
OPT = dict(peak_lr=1e-4, warmup_steps=1, decay_steps=1000, b1=0.9, b2=0.95, eps=1e-8,
           weight_decay=0.1, clip_norm=1.0)

def model_config(shape: str, seq_len: int):
  from swallow_jax.model import presets  # pylint: disable=g-import-not-at-top
  return presets.get("llama3_8b", **SHAPES[shape], max_position_embeddings=max(seq_len, 8192))


def measured_peak_flops(n: int = 2048, repeats: int = 5) -> float:
  """Best fp32 matmul FLOP/s of this CPU through XLA (the 'peak' for CPU MFU)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def jax_runner(cfg, batch: int, seq_len: int) -> tuple[Callable[[int], float], float, float]:
  """(run(k) -> loss after k steps, first-step seconds incl. compile, first loss): swallow_jax."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from swallow_jax import parallel, plan  # pylint: disable=g-import-not-at-top
  from swallow_jax.train import optimizer, step  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh({"fsdp": 1}, jax.devices()[:1])
  tx, lr = optimizer.make_optimizer(OPT)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (batch, seq_len + 1), dtype=np.int32)
  data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "loss_weights": np.ones((batch, seq_len), np.float32),
          "positions": None, "segment_ids": None}  # plain causal, like the torch side
  with parallel.mesh_context(mesh):
    step_fn, _, _, shardings = plan.abstract_train_step(cfg, tx, lr, mesh, batch, seq_len,
                                                        plain_causal=True)
    holder = {"state": step.jit_init(cfg, tx, 0, shardings)()}
    data = jax.device_put(data, parallel.batch_sharding(mesh))

  def run(k: int) -> float:
    with parallel.mesh_context(mesh):
      for _ in range(k):
        holder["state"], metrics = step_fn(holder["state"], data)
      return float(metrics["loss"])  # blocks

  t0 = time.perf_counter()
  first = run(1)
  return run, time.perf_counter() - t0, first


def torch_llama(cfg):
  """transformers' LlamaForCausalLM of `cfg`'s shape (sdpa attention, float32, train mode, seed 0),
  with torch using every core."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  hf_cfg = transformers.LlamaConfig(**{
      k: v for k, v in cfg.to_hf().items()
      if k not in ("architectures", "torch_dtype", "bos_token_id", "eos_token_id")})
  hf_cfg._attn_implementation = "sdpa"  # pylint: disable=protected-access
  return transformers.LlamaForCausalLM(hf_cfg).float().train()


def torch_runner(cfg, batch: int, seq_len: int,
                 compile_model: bool = False) -> tuple[Callable[[int], float], float, float]:
  """Same contract as jax_runner for transformers' LlamaForCausalLM + AdamW."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  model = torch_llama(cfg)
  opt = torch.optim.AdamW(model.parameters(), lr=OPT["peak_lr"], betas=(OPT["b1"], OPT["b2"]),
                          eps=OPT["eps"], weight_decay=OPT["weight_decay"], foreach=True)
  forward = torch.compile(model) if compile_model else model
  tokens = torch.from_numpy(
      np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq_len + 1)).astype(np.int64))
  inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

  def run(k: int) -> float:
    for _ in range(k):
      logits = forward(input_ids=inputs).logits
      loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), OPT["clip_norm"])
      opt.step()
      opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  t0 = time.perf_counter()
  first = run(1)
  return run, time.perf_counter() - t0, first


def maxtext_side(python: str, cfg, batch: int, seq_len: int, steps: int) -> dict[str, Any]:
  """Runs MaxText's trainer on CPU with the same shape; per-step seconds parsed from its log."""
  if not python:
    return {"skipped": "no --maxtext_python / $MAXTEXT_PYTHON (MaxText needs Python >= 3.12)"}
  probe = subprocess.run([python, "-c", "import maxtext, os; print(os.path.dirname(maxtext.__file__))"],
                         capture_output=True, text=True, check=False)
  if probe.returncode:
    return {"skipped": f"{python} cannot import maxtext: {probe.stderr.strip()[-300:]}"}
  base_yml = os.path.join(probe.stdout.strip(), "configs", "base.yml")
  out_dir = tempfile.mkdtemp(prefix="maxtext_bench_")
  args = dict(run_name="bench", base_output_directory=out_dir, hardware="cpu",
              dataset_type="synthetic", steps=steps, per_device_batch_size=batch,
              max_target_length=seq_len, base_emb_dim=cfg.hidden_size,
              base_num_query_heads=cfg.num_heads, base_num_kv_heads=cfg.num_kv_heads,
              head_dim=cfg.head_dim, base_mlp_dim=cfg.intermediate_size,
              base_num_decoder_layers=cfg.num_layers, vocab_size=cfg.vocab_size,
              decoder_block="llama2", mlp_activations='["silu","linear"]',
              rope_max_timescale=int(cfg.rope_theta), normalization_layer_epsilon=cfg.rms_norm_eps,
              logits_via_embedding=False, enable_dropout=False, enable_checkpointing=False,
              dtype="float32", weight_dtype="float32", remat_policy="minimal_with_context",
              scan_layers=True, adam_b1=OPT["b1"], adam_b2=OPT["b2"],
              adam_weight_decay=OPT["weight_decay"], gradient_clipping_threshold=OPT["clip_norm"],
              learning_rate=OPT["peak_lr"], log_period=steps + 1)
  # hardware=cpu initialises jax.distributed as an XPK CPU job: one process, coordinator on loopback.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS="127.0.0.1", JOB_INDEX="0",
             JOB_COMPLETION_INDEX="0", PROCESSES_IN_JOB="1", JAX_PROCESS_COUNT="1")
  cmd = [python, "-m", "maxtext.trainers.pre_train.train", base_yml,
         *(f"{k}={v}" for k, v in args.items())]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
  wall = time.perf_counter() - t0
  log = proc.stdout + proc.stderr
  times = [float(s) for s in re.findall(r"completed step: \d+, seconds: ([0-9.]+)", log)]
  version = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('maxtext'), m.version('jax'))"],
                           capture_output=True, text=True, check=False).stdout.split()
  if proc.returncode or len(times) < 3:
    return {"error": f"exit {proc.returncode}, {len(times)} steps logged", "log_tail": log[-2000:]}
  # MaxText dispatches asynchronously: a step's "seconds" is measured when the next one is
  # issued; in steady state they average to the device time. Steps 0-1 include compilation.
  steady = times[2:]
  return {"step_s_median": statistics.median(steady), "step_s_mean": statistics.mean(steady),
          "steps_timed": len(steady), "wall_s": wall, "remat_policy": "minimal_with_context",
          "maxtext": version[0] if version else "?", "jax": version[1] if len(version) > 1 else "?"}


def run(shape: str, batch: int, seq_len: int, steps: int, rounds: int, sides: list[str],
        torch_compile: bool = False, maxtext_python: str = "",
        jax_attention: tuple[str, ...] = ("xla",), jax_unrolled: bool = False) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  from swallow_jax.train import metrics  # pylint: disable=g-import-not-at-top

  cfg = model_config(shape, seq_len)
  tokens = batch * seq_len
  flops_token = metrics.flops_per_token(cfg, seq_len)
  peak = measured_peak_flops()
  runners = {}
  if "jax" in sides:
    for i, attn in enumerate(jax_attention):
      name = "swallow_jax" if i == 0 else f"swallow_jax[attention={attn}]"
      runners[name] = jax_runner(dataclasses.replace(cfg, attention=attn), batch, seq_len)
    if jax_unrolled:
      runners["swallow_jax[scan_layers=False]"] = jax_runner(
          dataclasses.replace(cfg, attention=jax_attention[0], scan_layers=False), batch, seq_len)
  if "torch" in sides:
    runners["transformers"] = torch_runner(cfg, batch, seq_len)
    if torch_compile:
      runners["transformers_compiled"] = torch_runner(cfg, batch, seq_len, compile_model=True)
  step_times = {name: [] for name in runners}
  for _ in range(rounds):  # alternate so both sides see the same background load
    for name, (fn, _, _) in runners.items():
      t0 = time.perf_counter()
      fn(steps)
      step_times[name].append((time.perf_counter() - t0) / steps)

  def summary(step_s: float, **extra) -> dict[str, Any]:
    tps = tokens / step_s
    return {"step_s": step_s, "tokens_per_sec": tps,
            "mfu_vs_measured_matmul_peak": tps * flops_token / peak, **extra}

  # Best round: other jobs on the machine only ever add time. The median is kept beside it.
  results = {name: summary(min(step_times[name]), step_s_median=statistics.median(step_times[name]),
                           step_s_rounds=step_times[name], first_step_s=first_s,
                           first_loss=first_loss)
             for name, (_, first_s, first_loss) in runners.items()}
  if "swallow_jax" in results:
    results["swallow_jax"]["attention"] = jax_attention[0]
  if "maxtext" in sides:
    mt = maxtext_side(maxtext_python, cfg, batch, seq_len, steps * rounds + 2)
    results["maxtext"] = summary(mt.pop("step_s_median"), **mt) if "step_s_median" in mt else mt
  out = {
      "benchmark": "train_step", "shape": SHAPES[shape], "num_params": cfg.num_params,
      "batch": batch, "seq_len": seq_len, "tokens_per_step": tokens, "dtype": "float32",
      "flops_per_token": flops_token, "measured_peak_flops": peak, "cpu_threads": os.cpu_count(),
      "results": results, "jax": jax.__version__,
      "note": "best of alternating rounds (median beside it) on a 2-core machine shared with "
              "other jobs; MaxText: median of its logged steps",
  }
  ours = [n for n in results if n.startswith("swallow_jax")]
  for name in ("transformers", "transformers_compiled", "maxtext"):
    for mine in ours:
      if "tokens_per_sec" in results.get(name, {}):
        out[f"{mine}_over_{name}"] = (results[mine]["tokens_per_sec"]
                                      / results[name]["tokens_per_sec"])
  return out


def _define_flags() -> None:
  flags.DEFINE_enum("shape", "bench", list(SHAPES), "Model shape.")
  flags.DEFINE_integer("batch", 4, "Sequences per step.")
  flags.DEFINE_integer("seq_len", 512, "Tokens per sequence.")
  flags.DEFINE_integer("steps", 3, "Timed steps per round.")
  flags.DEFINE_integer("rounds", 3, "Alternating rounds (swallow_jax, transformers).")
  flags.DEFINE_list("sides", ["jax", "torch", "maxtext"], "Which of jax,torch,maxtext.")
  flags.DEFINE_list(
      "jax_attention", ["xla"],
      "swallow_jax attention backends to time ('xla' is what attention='auto' picks on CPU).")
  flags.DEFINE_bool(
      "jax_unrolled", True, "Also time swallow_jax with scan_layers=False (layers unrolled).")
  flags.DEFINE_bool("torch_compile", False, "Also time torch.compile(model).")
  flags.DEFINE_string(
      "maxtext_python", os.environ.get("MAXTEXT_PYTHON", ""),
      "Python >= 3.12 with `pip install maxtext[tpu]` (default: $MAXTEXT_PYTHON); empty: skipped.")


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    sys.exit(f"unexpected arguments: {argv[1:]}")
  bad = set(FLAGS.sides) - {"jax", "torch", "maxtext"}
  if bad:
    sys.exit(f"--sides: unknown {sorted(bad)}; choose from jax,torch,maxtext")
  if min(FLAGS.batch, FLAGS.seq_len, FLAGS.steps, FLAGS.rounds) < 1:
    sys.exit("--batch, --seq_len, --steps and --rounds must be positive")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", 1)  # one device: no fake-device split of the 2 cores
  print(json.dumps(run(FLAGS.shape, FLAGS.batch, FLAGS.seq_len, FLAGS.steps, FLAGS.rounds,
                       FLAGS.sides, FLAGS.torch_compile, FLAGS.maxtext_python,
                       tuple(FLAGS.jax_attention), FLAGS.jax_unrolled), indent=1))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
