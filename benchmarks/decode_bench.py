r"""Decode speed: swallow_jax.generate vs transformers.generate on CPU; HBM-bound fraction on GPU.

    python benchmarks/decode_bench.py                 # CPU, side by side, prints one JSON object
    python benchmarks/decode_bench.py --gpu           # accelerator: batch-1 decode vs HBM bound

CPU mode builds one random HF LlamaForCausalLM (default: the 'small' preset's shape, ~7M params),
saves it as safetensors and loads it with swallow_jax.model.io.load, so both libraries decode the
same float32 weights. For each batch size it times greedy decoding of --new_tokens tokens after a
--prompt_len-token prompt (prefill included, compilation excluded: one warm-up call first), checks
the two produce the same tokens, and reports tokens/s for each and the ratio (ours / transformers).

GPU mode (`decode_hbm_fraction`, importable; used by benchmarks/gpu_check.sh): random weights of a
preset (default llama3_2_1b) in bfloat16, batch 1. The time per decode step is the difference of two
runs of N1 and N2 new tokens divided by N2 - N1 (both in the same cache bucket, so one compiled
program and no prefill in the difference). A decode step must read every weight except the embedding
table (one row) plus the KV cache of the context, so
    bound_s = (param bytes - embedding table [untied] + KV bytes at the mean context) / HBM B/s
    fraction = bound_s / measured_s.
The KV cache holds 2 * layers * kv_heads * head_dim * dtype bytes per token of context.
"""

import json
import os
import platform
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from swallow_jax import decode as gen
from swallow_jax import model as model_lib

# Peak HBM bandwidth (bytes/s) by device_kind substring; first match wins (order matters).
HBM_BYTES_PER_S = (
    ("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12), ("GH200", 4.0e12),
    ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12),
    ("L40S", 0.864e12), ("L4", 0.3e12), ("A10G", 0.6e12), ("V100", 0.9e12),
    ("TPU v6", 1.64e12), ("TPU v5 lite", 0.819e12), ("TPU v5e", 0.819e12), ("TPU v5", 2.765e12),
    ("TPU v4", 1.2e12),
)


def hbm_bandwidth(device_kind: str) -> float | None:
  for name, bw in HBM_BYTES_PER_S:
    if name.lower() in device_kind.lower():
      return bw
  return None


def _time(fn, repeats: int) -> float:
  """Best wall time of `repeats` calls (after the caller's warm-up)."""
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def cpu_side_by_side(preset: str = "small", batch_sizes=(1, 8), prompt_len: int = 32,
                     new_tokens: int = 64, repeats: int = 3) -> dict[str, Any]:
  """tokens/s of swallow_jax vs transformers greedy decoding, same weights, on the CPU."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from swallow_jax.model import io as model_io  # pylint: disable=g-import-not-at-top

  cfg = model_lib.presets.get(preset)
  hf_cfg = transformers.LlamaConfig(**cfg.to_hf())
  torch.manual_seed(0)
  hf_model = transformers.LlamaForCausalLM(hf_cfg).eval()
  with tempfile.TemporaryDirectory() as d:
    hf_model.save_pretrained(d)
    config, params = model_io.load(d)
  rng = np.random.default_rng(0)
  rows = []
  for b in batch_sizes:
    prompts = rng.integers(3, config.vocab_size, (b, prompt_len)).tolist()
    ours = lambda: gen.generate(config, params, prompts, new_tokens)
    t = time.perf_counter()
    ours_tokens = ours()
    compile_s = time.perf_counter() - t
    ours_s = _time(ours, repeats)
    ids = torch.tensor(prompts)
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
              min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
      hf_tokens = hf_model.generate(ids, **kw)[:, prompt_len:].tolist()
      hf_s = _time(lambda: hf_model.generate(ids, **kw), repeats)
    rows.append({
        "batch": b,
        "swallow_jax_tokens_per_s": b * new_tokens / ours_s,
        "transformers_tokens_per_s": b * new_tokens / hf_s,
        "ratio": hf_s / ours_s,
        "swallow_jax_first_call_s": compile_s,
        "same_tokens": ours_tokens == hf_tokens,
    })
  return {
      "mode": "cpu", "preset": preset, "params": cfg.num_params, "dtype": "float32",
      "prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats,
      "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
      "machine": platform.processor() or platform.machine(),
      "jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
      "results": rows,
  }


def decode_hbm_fraction(preset: str = "llama3_2_1b", prompt_len: int = 128,
                        new_tokens: tuple[int, int] = (130, 256), dtype: str = "bfloat16",
                        hbm_bytes_per_s: float | None = None, repeats: int = 3) -> dict[str, Any]:
  """Batch-1 decode time per token vs the HBM-bandwidth bound on the default device."""
  n1, n2 = new_tokens
  if not 16 < n1 < n2 or (n1 - 1).bit_length() != (n2 - 1).bit_length():
    raise ValueError(f"new_tokens {new_tokens} must be increasing and share a power-of-two bucket")
  import dataclasses  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(model_lib.presets.get(preset), param_dtype=dtype, dtype=dtype)
  params = model_lib.init_params(config, jax.random.key(0))
  device = jax.devices()[0]
  bw = hbm_bytes_per_s or hbm_bandwidth(device.device_kind)
  if bw is None:
    raise ValueError(f"unknown HBM bandwidth for {device.device_kind!r}; pass --hbm_gbps")
  prompt = [np.random.default_rng(0).integers(3, config.vocab_size, prompt_len).tolist()]
  run = lambda n: gen.generate(config, params, prompt, n)
  run(n2)  # compile
  t1, t2 = _time(lambda: run(n1), repeats), _time(lambda: run(n2), repeats)
  step_s = (t2 - t1) / (n2 - n1)
  itemsize = jnp.dtype(dtype).itemsize
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  if not config.tie_word_embeddings:
    param_bytes -= params["embed"]["embedding"].nbytes - config.hidden_size * itemsize
  kv_per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * itemsize
  mean_context = prompt_len + (n1 + n2) / 2
  bytes_per_step = param_bytes + kv_per_token * mean_context
  bound_s = bytes_per_step / bw
  return {
      "mode": "gpu", "device": device.device_kind, "preset": preset, "dtype": dtype, "batch": 1,
      "prompt_len": prompt_len, "new_tokens": list(new_tokens),
      "params": config.num_params, "bytes_per_step": bytes_per_step,
      "hbm_bytes_per_s": bw, "decode_step_ms": step_s * 1e3, "tokens_per_s": 1 / step_s,
      "bound_step_ms": bound_s * 1e3, "bound_tokens_per_s": 1 / bound_s,
      "fraction_of_hbm_bound": bound_s / step_s, "jax": jax.__version__,
  }


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Flags exist only when run as a program, so gpu_check.py can import this module."""
  flags.DEFINE_bool("gpu", False, "Batch-1 decode vs the HBM bound on the accelerator.")
  flags.DEFINE_string("preset", None, "Preset (default: small; llama3_2_1b with --gpu).")
  flags.DEFINE_list("batch_sizes", ["1", "8"], "CPU mode: batch sizes.")
  flags.DEFINE_integer("prompt_len", None, "Prompt tokens (default 32 CPU, 128 GPU).")
  flags.DEFINE_integer("new_tokens", 64, "CPU mode: tokens generated per run.")
  flags.DEFINE_integer("repeats", 3, "Timed runs per measurement (best is kept).")
  flags.DEFINE_float("hbm_gbps", None, "GPU mode: HBM bandwidth in GB/s (default: by device kind).")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.gpu:
    out = decode_hbm_fraction(FLAGS.preset or "llama3_2_1b", FLAGS.prompt_len or 128,
                              hbm_bytes_per_s=FLAGS.hbm_gbps and FLAGS.hbm_gbps * 1e9,
                              repeats=FLAGS.repeats)
  else:
    out = cpu_side_by_side(FLAGS.preset or "small", tuple(map(int, FLAGS.batch_sizes)),
                           FLAGS.prompt_len or 32, FLAGS.new_tokens, FLAGS.repeats)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
