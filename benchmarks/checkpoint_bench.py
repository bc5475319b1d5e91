"""Orbax checkpoint save/restore GB/s against the raw speed of the same disk, in one run.

    python benchmarks/checkpoint_bench.py [--size_mb=1024] [--dir=DIR] [--repeats=2]

Saving and restoring go through the trainer's `swallow_jax.checkpoint` (an async Orbax
CheckpointManager, StandardSave). The tree is a Llama-shaped parameter tree (the model's own layout, made with `jax.eval_shape`
and filled with random fp32 so compression cannot flatter it). Raw disk speed is plain Python
file IO of the same number of bytes: `write` + `fsync`, then `read` after dropping that file's
pages from the page cache (`posix_fadvise(DONTNEED)`, which touches only our own files). The
Orbax restore is measured cold in the same way, so both reads come from the disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

from absl import app, flags, logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from swallow_jax import checkpoint
from swallow_jax import model as sjm

_SIZE_MB = flags.DEFINE_integer("size_mb", 1024, "Approximate checkpoint size in MiB.")
_DIR = flags.DEFINE_string("dir", "", "Where to write (default: a temp dir on /tmp's disk).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed repetitions; the best of each is reported.")
_CHUNK_MB = 64


def llama_tree_shapes(size_bytes: int) -> dict:
  """Abstract params of a Llama-3-shaped model (GQA, SwiGLU) with enough layers for size_bytes."""
  if size_bytes < 128 << 20:
    one = sjm.presets.get("tiny_gqa", num_layers=1)
  else:
    one = sjm.presets.get("llama3_8b", hidden_size=1024, intermediate_size=4096, num_heads=16,
                          num_kv_heads=8, head_dim=64, vocab_size=8192, num_layers=1)
  per_layer = (dataclasses.replace(one, num_layers=2).num_params - one.num_params) * 4
  layers = max(1, (size_bytes - one.num_params * 4) // per_layer + 1)
  cfg = dataclasses.replace(one, num_layers=int(layers))
  return jax.eval_shape(lambda: sjm.init_params(cfg, jax.random.key(0)))


def random_tree(shapes: dict, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jax.device_put(rng.standard_normal(s.shape, dtype=np.float32)), shapes)


def _drop_cache(path: str) -> None:
  """Evicts our own files from the page cache so the next read comes from the disk."""
  paths = [path] if os.path.isfile(path) else [
      os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
  for p in paths:
    fd = os.open(p, os.O_RDONLY)
    try:
      os.fsync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def raw_disk(path: str, nbytes: int) -> dict[str, float]:
  """Seconds to write+fsync and to cold-read nbytes with plain file IO."""
  size = min(_CHUNK_MB << 20, nbytes)
  chunk = np.random.default_rng(1).integers(0, 255, size, dtype=np.uint8).tobytes()
  n_chunks = max(1, nbytes // len(chunk))
  t0 = time.perf_counter()
  with open(path, "wb", buffering=0) as f:
    for _ in range(n_chunks):
      f.write(chunk)
    os.fsync(f.fileno())
  write_s = time.perf_counter() - t0
  _drop_cache(path)
  buf = bytearray(len(chunk))
  t0 = time.perf_counter()
  with open(path, "rb", buffering=0) as f:
    while f.readinto(buf):
      pass
  read_s = time.perf_counter() - t0
  os.remove(path)
  return {"bytes": n_chunks * len(chunk), "write_s": write_s, "read_s": read_s}


def orbax_roundtrip(path: str, tree: dict) -> dict[str, float]:
  """Seconds for the trainer's checkpoint save (until durable) and a cold restore of it."""
  mngr = checkpoint.make_manager(path, {"keep": 1, "async_save": True})
  t0 = time.perf_counter()
  checkpoint.save(mngr, 1, tree)
  mngr.wait_until_finished()
  save_s = time.perf_counter() - t0
  _drop_cache(path)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  t0 = time.perf_counter()
  _, restored = checkpoint.restore_latest(mngr, abstract)
  jax.block_until_ready(restored)
  restore_s = time.perf_counter() - t0
  mngr.close()
  for a, b in zip(jax.tree.leaves(tree)[:2], jax.tree.leaves(restored)[:2]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  shutil.rmtree(path)
  return {"save_s": save_s, "restore_s": restore_s}


def run(size_mb: int, directory: str = "", repeats: int = 2) -> dict:
  tree = random_tree(llama_tree_shapes(size_mb << 20))
  nbytes = sum(x.nbytes for x in jax.tree.leaves(tree))
  work = tempfile.mkdtemp(prefix="ckpt_bench_", dir=directory or None)
  try:
    raw = [raw_disk(os.path.join(work, "raw.bin"), nbytes) for _ in range(repeats)]
    orb = [orbax_roundtrip(os.path.join(work, f"orbax_{i}"), tree) for i in range(repeats)]
  finally:
    shutil.rmtree(work, ignore_errors=True)
  gb = 1e9
  raw_bytes = raw[0]["bytes"]
  out = {
      "benchmark": "checkpoint", "dir": work, "tree_bytes": nbytes,
      "num_arrays": len(jax.tree.leaves(tree)), "repeats": repeats,
      "raw_write_gb_s": raw_bytes / min(r["write_s"] for r in raw) / gb,
      "raw_read_gb_s": raw_bytes / min(r["read_s"] for r in raw) / gb,
      "orbax_save_gb_s": nbytes / min(o["save_s"] for o in orb) / gb,
      "orbax_restore_gb_s": nbytes / min(o["restore_s"] for o in orb) / gb,
      "jax": jax.__version__, "orbax": getattr(ocp, "__version__", "?"),
      "note": "best of repeats; writes include fsync; reads are cold (page cache dropped for "
              "our files); machine shared with other jobs",
  }
  out["save_vs_raw_write"] = out["orbax_save_gb_s"] / out["raw_write_gb_s"]
  out["restore_vs_raw_read"] = out["orbax_restore_gb_s"] / out["raw_read_gb_s"]
  return out


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step at INFO.
  if len(argv) > 1:
    sys.exit(f"unexpected arguments: {argv[1:]}")
  if _SIZE_MB.value <= 0 or _REPEATS.value <= 0:
    sys.exit("--size_mb and --repeats must be positive")
  if _DIR.value and not os.path.isdir(_DIR.value):
    sys.exit(f"--dir {_DIR.value!r} is not a directory")
  print(json.dumps(run(_SIZE_MB.value, _DIR.value, _REPEATS.value), indent=1))


if __name__ == "__main__":
  app.run(main)
