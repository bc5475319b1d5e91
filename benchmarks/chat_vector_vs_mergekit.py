r"""Chat vector merge: `python -m swallow_jax.chat_vector` vs `mergekit-yaml` (task_arithmetic).

Writes three random bf16 Llama-shaped HF checkpoints (base, instruct, target; Llama 3.2 1B
shapes by default: 1.24B parameters, 2.5 GB each), then runs, each as its own subprocess:

  ours:      target + s * (instruct - base)
  mergekit:  merge_method task_arithmetic, base_model=base, models=[target (weight 1),
             instruct (weight s)], dtype float32, out_dtype bfloat16
             -> base + 1 * (target - base) + s * (instruct - base), the same merge.

and prints JSON: wall time and peak RSS of each (GNU /usr/bin/time), their ratios,
and the max abs difference between the two outputs over every tensor. Before each run all input
files are read once so both start from the same warm page cache.

  python benchmarks/chat_vector_vs_mergekit.py --workdir=/tmp/cv_bench
  python benchmarks/chat_vector_vs_mergekit.py --layers=2 --vocab=32000   # quick check

mergekit is a benchmark-only dependency: `pip install mergekit torch==2.13.0`; without it only
ours is measured.
"""

import json
import os
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/cv_bench", "Scratch directory (needs ~13 GB).")
_SCALE = flags.DEFINE_float("scale", 0.5, "Chat-vector weight.")
_MERGEKIT = flags.DEFINE_string("mergekit", "", "mergekit-yaml executable (default: the one beside "
                                "this Python, e.g. a venv with `pip install mergekit`).")
_LAYERS = flags.DEFINE_integer("layers", 16, "Decoder layers (Llama 3.2 1B: 16).")
_HIDDEN = flags.DEFINE_integer("hidden", 2048, "Hidden size.")
_FFN = flags.DEFINE_integer("ffn", 8192, "MLP intermediate size.")
_VOCAB = flags.DEFINE_integer("vocab", 128256, "Vocabulary size.")
_KEEP = flags.DEFINE_bool("keep", False, "Keep checkpoints and outputs afterwards.")

BF16 = np.dtype(ml_dtypes.bfloat16)
HEADS, KV_HEADS = 32, 8


def llama_config(layers, hidden, ffn, vocab):
  return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
          "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
          "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
          "head_dim": hidden // HEADS, "max_position_embeddings": 131072,
          "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True,
          "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu",
          "torch_dtype": "bfloat16"}


def tensor_shapes(layers, hidden, ffn, vocab):
  kv = hidden // HEADS * KV_HEADS
  shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
  for l in range(layers):
    p = f"model.layers.{l}."
    shapes.update({
        p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
        p + "self_attn.q_proj.weight": (hidden, hidden),
        p + "self_attn.o_proj.weight": (hidden, hidden),
        p + "self_attn.k_proj.weight": (kv, hidden), p + "self_attn.v_proj.weight": (kv, hidden),
        p + "mlp.gate_proj.weight": (ffn, hidden), p + "mlp.up_proj.weight": (ffn, hidden),
        p + "mlp.down_proj.weight": (hidden, ffn)})
  return shapes


def write_checkpoint(path, shapes, config, seed, shard_bytes=10**9):
  """Random bf16 weights (std 0.02, norms near 1) in ~1 GB shards with an index."""
  os.makedirs(path)
  shards = [[]]
  size = 0
  for name, shape in shapes.items():
    if shards[-1] and size >= shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += int(np.prod(shape)) * 2
  rng = np.random.default_rng(seed)
  weight_map = {}
  for k, names in enumerate(shards):  # one shard in memory at a time
    file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    tensors = {}
    for name in names:
      x = tensors[name] = np.empty(shapes[name], BF16)
      for lo in range(0, len(x), 4096):  # in row blocks: no fp32 copy of a whole tensor
        r = rng.standard_normal(x[lo:lo + 4096].shape, np.float32)
        x[lo:lo + 4096] = (1 + 0.1 * r) if x.ndim == 1 else 0.02 * r
    save_file(tensors, os.path.join(path, file), metadata={"format": "pt"})
    weight_map.update({n: file for n in names})
  total = sum(int(np.prod(s)) * 2 for s in shapes.values())
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f, indent=2)


def warm(path):
  for name in sorted(os.listdir(path)):
    with open(os.path.join(path, name), "rb") as f:
      while f.read(64 << 20):
        pass


def timed(cmd, env, rss_file):
  """Wall seconds and peak RSS (MiB) of one command, measured by GNU time.

  Not os.wait4/RUSAGE_CHILDREN: Linux counts a forked child's copy of this (large) process
  before exec in its maxrss. /usr/bin/time is tiny, so its child starts small.
  """
  start = time.perf_counter()
  proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file, *cmd], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
  wall = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): "
                       + proc.stderr.decode(errors="replace")[-2000:])
  with open(rss_file) as f:
    kib = int(f.read().split()[-1])
  return {"wall_s": round(wall, 2), "peak_rss_mib": round(kib / 1024, 1)}


def read_index(path):
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      return json.load(f)["weight_map"]
  names = {}
  for file in os.listdir(path):
    if file.endswith(".safetensors"):
      with safe_open(os.path.join(path, file), "numpy") as f:
        names.update({n: file for n in f.keys()})
  return names


def compare(a_dir, b_dir):
  """Max |a - b| over the tensors both outputs hold, one tensor at a time."""
  a_map, b_map = read_index(a_dir), read_index(b_dir)
  worst, differing, total = 0.0, 0, 0
  for name in sorted(set(a_map) & set(b_map)):
    with safe_open(os.path.join(a_dir, a_map[name]), "numpy") as fa, \
         safe_open(os.path.join(b_dir, b_map[name]), "numpy") as fb:
      a, b = fa.get_tensor(name), fb.get_tensor(name)
      assert a.dtype == b.dtype == BF16, (name, a.dtype, b.dtype)
      d = np.abs(a.astype(np.float32) - b.astype(np.float32))
      worst = max(worst, float(d.max()))
      differing += int(np.count_nonzero(d))
      total += d.size
  return {"max_abs_diff": worst, "differing_elements": differing, "compared_elements": total,
          "only_in_ours": sorted(set(a_map) - set(b_map)),
          "only_in_mergekit": sorted(set(b_map) - set(a_map))}


def main(argv):
  del argv
  work = _WORKDIR.value
  if os.path.exists(work):
    sys.exit(f"--workdir={work} exists; remove it first")
  shapes = tensor_shapes(_LAYERS.value, _HIDDEN.value, _FFN.value, _VOCAB.value)
  config = llama_config(_LAYERS.value, _HIDDEN.value, _FFN.value, _VOCAB.value)
  dirs = {role: os.path.join(work, role) for role in ("base", "instruct", "target")}
  t0 = time.perf_counter()
  for seed, (role, path) in enumerate(dirs.items()):
    write_checkpoint(path, shapes, config, seed)
  gen_s = time.perf_counter() - t0
  s = _SCALE.value
  with open(os.path.join(work, "mergekit.yml"), "w") as f:
    f.write(f"merge_method: task_arithmetic\nbase_model: {dirs['base']}\nmodels:\n"
            f"  - model: {dirs['target']}\n    parameters:\n      weight: 1.0\n"
            f"  - model: {dirs['instruct']}\n    parameters:\n      weight: {s}\n"
            "dtype: float32\nout_dtype: bfloat16\n")
  env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
  mergekit_bin = _MERGEKIT.value or os.path.join(os.path.dirname(sys.executable), "mergekit-yaml")
  runs = {
      "ours": [sys.executable, "-m", "swallow_jax.chat_vector", f"--base={dirs['base']}",
               f"--instruct={dirs['instruct']}", f"--target={dirs['target']}",
               f"--output={work}/out_ours", f"--scale={s}", "--quiet"],
      "mergekit": [mergekit_bin, os.path.join(work, "mergekit.yml"), f"{work}/out_mergekit",
                   "--no-copy-tokenizer", "--no-write-model-card", "--quiet"],
  }
  if not os.path.exists(mergekit_bin):
    print(f"mergekit is not installed ({mergekit_bin} missing): measuring ours only",
          file=sys.stderr)
    del runs["mergekit"]
  result = {"params": sum(int(np.prod(x)) for x in shapes.values()),
            "checkpoint_gb": round(sum(int(np.prod(x)) * 2 for x in shapes.values()) / 1e9, 2),
            "scale": s, "generate_s": round(gen_s, 1), "cpus": os.cpu_count()}
  for name, cmd in runs.items():
    for path in dirs.values():
      warm(path)
    result[name] = timed(cmd, env, os.path.join(work, f"{name}.rss"))
  if "mergekit" in runs:
    result["wall_ratio_ours_over_mergekit"] = round(
        result["ours"]["wall_s"] / result["mergekit"]["wall_s"], 3)
    result["rss_ratio_ours_over_mergekit"] = round(
        result["ours"]["peak_rss_mib"] / result["mergekit"]["peak_rss_mib"], 3)
    result.update(compare(f"{work}/out_ours", f"{work}/out_mergekit"))
  print(json.dumps(result, indent=2))
  if not _KEEP.value:
    shutil.rmtree(work)


if __name__ == "__main__":
  app.run(main)
