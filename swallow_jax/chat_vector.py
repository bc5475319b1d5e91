r"""Chat vectors and task arithmetic: target + sum_i w_i * (instruct_i - base_i).

Swallow's instruct models start from `Swallow base + 0.5 * (Llama 3 Instruct - Llama 3 base)`.
This module does that arithmetic in fp32 (result cast to the target's dtype) in two ways:

* Pure functions over parameter trees (nested dicts of NumPy or JAX arrays; our param layout or
  a flat dict of Hugging Face names). They work eagerly, under `jax.jit` and on sharded arrays
  (elementwise ops, so XLA keeps the target's sharding):

      merged = apply_chat_vector(target, base, instruct, scale=0.5,
                                 exclude=(r'.*norm.*',), protect_token_ids=LLAMA3_CHAT_TOKEN_IDS)

* A streaming command line over Hugging Face safetensors directories (sharded or single-file)
  and Orbax parameter checkpoints. Safetensors are read about a MiB at a time, so peak memory
  stays near 50 MB whatever the model size (Orbax: one whole tensor per input at a time):

      python -m swallow_jax.chat_vector --base=Meta-Llama-3-8B --instruct=Meta-Llama-3-8B-Instruct \
          --target=Swallow-8B --output=Swallow-8B-cv --scale=0.5

  Options: --scale=0.3,0.5,1.0 writes OUTPUT/scale_0.3, OUTPUT/scale_0.5, ... in one pass;
  --exclude=REGEX (repeatable) leaves matching tensors as in the target (names are HF names such
  as 'model.embed_tokens.weight' or param paths such as 'embed/embedding');
  --protect_tokens=128006,128007,128009 (or 'llama3_chat') leaves those embedding / LM-head rows
  as in the target; --allow_vocab_mismatch applies the vector on the overlapping rows only;
  --dtype=bfloat16 casts the output. All inputs are checked before anything is written; the
  output appears only when complete.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
import dataclasses
import json
import math
import os
import re
import shutil
import struct
import sys
from typing import Any

import ml_dtypes
import numpy as np

# Llama 3 chat-template specials: <|start_header_id|>, <|end_header_id|>, <|eot_id|>.
LLAMA3_CHAT_TOKEN_IDS = (128006, 128007, 128009)

# (path regex, vocabulary axis): which tensors have token rows, and along which axis.
VOCAB_AXES = (
    (r"(^|/)embed/embedding$", 0),  # ours, [V, D]
    (r"(^|/)lm_head/kernel$", 1),  # ours, [D, V]
    (r"(^|\.)embed_tokens\.weight$", 0),  # Hugging Face, [V, D]
    (r"(^|\.)lm_head\.weight$", 0),  # Hugging Face, [V, D]
)

Tree = Any  # nested Mapping of arrays (NumPy or JAX)


class ChatVectorError(ValueError):
  """A checkpoint or tree that cannot be merged; the message names the tensor."""


# ----------------------------------------------------------------------------------------------
# Per-tensor arithmetic, shared by the tree functions and the streaming CLI.


def _xp(*arrays):
  """jax.numpy when any input is a JAX array or tracer, else NumPy (JAX is never imported here)."""
  jax = sys.modules.get("jax")
  if jax is not None and any(isinstance(a, jax.Array) for a in arrays):
    return jax.numpy
  return np


def _crop(x, axis: int, n: int):
  return x[(slice(None),) * axis + (slice(0, n),)]


def _is_float(dtype) -> bool:
  return np.issubdtype(dtype, np.floating) or np.dtype(dtype) == ml_dtypes.bfloat16


def _diff(plus, minus):
  """plus - minus in fp32 (minus may be None). Shapes already checked; crops to the overlap."""
  xp = _xp(plus, minus)
  if minus is None:
    return xp.asarray(plus).astype(np.float32)
  shape = tuple(min(a, b) for a, b in zip(plus.shape, minus.shape))
  if shape != tuple(plus.shape) or shape != tuple(minus.shape):
    plus, minus = (p[tuple(slice(0, n) for n in shape)] for p in (plus, minus))
  out = xp.asarray(plus).astype(np.float32)
  if xp is np:  # in place: one pass less over memory, same rounding
    out -= minus.astype(np.float32)
    return out
  return out - xp.asarray(minus).astype(np.float32)


def _apply(target, diffs: Sequence[Any], weights: Sequence[Any], keep, axis, dtype):
  """target + sum_i w_i * diffs_i in fp32, rows where `keep` is set left as in target.

  diffs may be shorter than target along the vocabulary `axis` (then zero-padded) or longer
  (cropped); `keep` is a bool vector along that axis (or None).
  """
  xp = _xp(target, *diffs)
  t32 = xp.asarray(target).astype(np.float32)
  delta = None
  for d, w in zip(diffs, weights):
    if axis is not None and d.shape[axis] > t32.shape[axis]:
      d = _crop(d, axis, t32.shape[axis])
    if isinstance(w, (int, float, np.number)):
      w = np.float32(w)  # fp32 arithmetic even for a float64 weight
    term = w * d
    delta = term if delta is None else delta + term
  if axis is not None and delta.shape[axis] < t32.shape[axis]:
    pad = [(0, 0)] * delta.ndim
    pad[axis] = (0, t32.shape[axis] - delta.shape[axis])
    delta = xp.pad(delta, pad)
  if xp is np:  # in place, as above
    delta += t32
    out = delta
  else:
    out = t32 + delta
  if keep is not None:
    out = xp.where(keep.reshape([-1 if i == axis else 1 for i in range(out.ndim)]), t32, out)
  return out.astype(dtype)


def vocab_axis(name: str, vocab_axes=VOCAB_AXES) -> int | None:
  """The token axis of tensor `name` (embedding / LM head), or None."""
  for pattern, axis in vocab_axes:
    if re.search(pattern, name):
      return axis
  return None


def _excluded(name: str, exclude: Sequence[str]) -> bool:
  return any(re.search(p, name) for p in exclude)


def _check_shapes(name: str, target: tuple, others: Mapping[str, tuple], axis: int | None,
                  allow_vocab_mismatch: bool) -> int | None:
  """Validates shapes; returns the number of overlapping token rows along `axis` (or None)."""
  for role, shape in others.items():
    if tuple(shape) == tuple(target):
      continue
    same_rank = len(shape) == len(target)
    only_vocab = same_rank and axis is not None and all(
        a == b for i, (a, b) in enumerate(zip(shape, target)) if i != axis)
    if not only_vocab:
      raise ChatVectorError(
          f"{name}: shape mismatch: target {tuple(target)} vs {role} {tuple(shape)}")
    if not allow_vocab_mismatch:
      raise ChatVectorError(
          f"{name}: vocabulary size mismatch: target {tuple(target)} vs {role} {tuple(shape)} "
          "(pass allow_vocab_mismatch / --allow_vocab_mismatch to merge the overlapping rows)")
  if axis is None:
    return None
  return min([target[axis]] + [s[axis] for s in others.values()])


def _keep_rows(name: str, rows: int, overlap: int | None, protect: Sequence[int]):
  """Bool mask over token rows to leave untouched (protected ids, rows past the overlap)."""
  if overlap is None or (overlap == rows and not protect):
    return None
  keep = np.arange(rows) >= overlap
  for i in protect:
    if not 0 <= i < rows:
      raise ChatVectorError(f"{name}: protected token id {i} is outside its {rows} rows")
    keep[i] = True
  return keep


def merge_tensor(name: str, target, terms: Sequence[tuple[Any, Any, float]], *,
                 protect_token_ids: Sequence[int] = (), allow_vocab_mismatch: bool = False,
                 vocab_axes=VOCAB_AXES, dtype=None):
  """target + sum_i w_i * (plus_i - minus_i) for one tensor; terms are (plus, minus|None, w).

  fp32 arithmetic; result in `dtype` (default: the target's). Non-float tensors are returned
  unchanged. Token rows (see VOCAB_AXES) in protect_token_ids are left as in the target.
  """
  dtype = target.dtype if dtype is None else dtype
  if not _is_float(target.dtype):
    return target
  axis = vocab_axis(name, vocab_axes)
  shapes = {}
  for k, (plus, minus, _) in enumerate(terms):
    suffix = f" {k}" if len(terms) > 1 else ""
    shapes[("instruct" if minus is not None else "vector") + suffix] = plus.shape
    if minus is not None:
      shapes["base" + suffix] = minus.shape
  overlap = _check_shapes(name, target.shape, shapes, axis, allow_vocab_mismatch)
  keep = None if axis is None else _keep_rows(
      name, target.shape[axis], overlap, protect_token_ids)
  diffs = [_diff(plus, minus) for plus, minus, _ in terms]
  return _apply(target, diffs, [w for _, _, w in terms], keep, axis, dtype)


# ----------------------------------------------------------------------------------------------
# Tree functions (nested Mappings; paths joined with '/').


def _flatten(tree: Tree, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, Mapping):
    return {prefix: tree}
  flat = {}
  for k, v in tree.items():
    flat.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
  return flat


def _rebuild(tree: Tree, leaf_fn: Callable[[str, Any], Any], prefix: str = "") -> Tree:
  if not isinstance(tree, Mapping):
    return leaf_fn(prefix, tree)
  return {k: _rebuild(v, leaf_fn, f"{prefix}/{k}" if prefix else str(k)) for k, v in tree.items()}


def _lookup(flat: Mapping[str, Any], role: str, name: str):
  if name not in flat:
    raise ChatVectorError(f"{name}: missing from the {role} tree")
  return flat[name]


def _check_extra(target_flat: Mapping[str, Any], role: str, tree: Tree) -> dict[str, Any]:
  flat = _flatten(tree)
  extra = sorted(set(flat) - set(target_flat))
  if extra:
    raise ChatVectorError(f"{extra[0]}: in the {role} tree but not in the target "
                          f"({len(extra)} such tensors)")
  return flat


def difference(a: Tree, b: Tree, *, allow_vocab_mismatch: bool = False,
               vocab_axes=VOCAB_AXES) -> Tree:
  """a - b per tensor, in fp32 (the task vector, e.g. instruct - base)."""
  flat_a = _flatten(a)
  flat_b = _check_extra(flat_a, "second", b)

  def leaf(name, x):
    y = _lookup(flat_b, "second", name)
    _check_shapes(name, x.shape, {"second": y.shape}, vocab_axis(name, vocab_axes),
                  allow_vocab_mismatch)
    return _diff(x, y)

  return _rebuild(a, leaf)


def task_arithmetic(target: Tree, vectors: Sequence[Tree], weights: Sequence[float], *,
                    exclude: Sequence[str] = (), protect_token_ids: Sequence[int] = (),
                    allow_vocab_mismatch: bool = False, vocab_axes=VOCAB_AXES) -> Tree:
  """target + sum_i weights[i] * vectors[i], per tensor in fp32, cast to the target's dtype.

  Tensors whose path matches a regex in `exclude` (re.search) are returned as in the target
  and may be absent from the vectors.
  """
  if len(vectors) != len(weights):
    raise ChatVectorError(f"{len(vectors)} vectors but {len(weights)} weights")
  flat_t = _flatten(target)
  flats = [_check_extra(flat_t, f"vector {i}", v) for i, v in enumerate(vectors)]

  def leaf(name, t):
    if _excluded(name, exclude):
      return t
    terms = [(_lookup(f, f"vector {i}", name), None, w)
             for i, (f, w) in enumerate(zip(flats, weights))]
    return merge_tensor(name, t, terms, protect_token_ids=protect_token_ids,
                        allow_vocab_mismatch=allow_vocab_mismatch, vocab_axes=vocab_axes)

  return _rebuild(target, leaf)


def add_scaled(target: Tree, vector: Tree, scale: float, **kwargs) -> Tree:
  """target + scale * vector (see task_arithmetic for the keyword options)."""
  return task_arithmetic(target, [vector], [scale], **kwargs)


def apply_chat_vector(target_params: Tree, base_params: Tree, instruct_params: Tree,
                      scale: float = 0.5, exclude: Sequence[str] = (),
                      protect_token_ids: Sequence[int] = (), allow_vocab_mismatch: bool = False,
                      vocab_axes=VOCAB_AXES) -> Tree:
  """target + scale * (instruct - base): the recipe's chat-vector stage on in-memory params.

  Per tensor in fp32, cast to the target's dtype; excluded paths and protected token rows are
  left as in the target. Jittable; under jit the output keeps the target's sharding.
  """
  flat_t = _flatten(target_params)
  flat_b = _check_extra(flat_t, "base", base_params)
  flat_i = _check_extra(flat_t, "instruct", instruct_params)

  def leaf(name, t):
    if _excluded(name, exclude):
      return t
    terms = [(_lookup(flat_i, "instruct", name), _lookup(flat_b, "base", name), scale)]
    return merge_tensor(name, t, terms, protect_token_ids=protect_token_ids,
                        allow_vocab_mismatch=allow_vocab_mismatch, vocab_axes=vocab_axes)

  return _rebuild(target_params, leaf)


# ----------------------------------------------------------------------------------------------
# Checkpoint readers and writers for the streaming CLI.

_ST_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".ckpt")
_INDEX = "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class _Entry:
  shape: tuple[int, ...]
  dtype: np.dtype


class _SafetensorsReader:
  """Reads row ranges of tensors from a safetensors directory with pread.

  safe_open memory-maps whole files: every page touched stays resident in this process, so on a
  large merge the RSS grows to the size of the inputs. pread into fresh buffers keeps it at a
  few chunks (the OS page cache still does the caching).
  """

  def __init__(self, directory: str, role: str):
    self.role = role
    index = os.path.join(directory, _INDEX)
    if os.path.exists(index):
      try:
        with open(index) as f:
          files = sorted(set(json.load(f)["weight_map"].values()))
      except (OSError, ValueError, KeyError, AttributeError) as e:
        raise ChatVectorError(f"{role} {index}: unreadable index ({e})") from None
    else:
      files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    self.entries: dict[str, _Entry] = {}
    self._where: dict[str, tuple[int, int]] = {}  # name -> (fd, absolute data offset)
    self._fds = []
    for file in files:
      self._read_header(os.path.join(directory, file))

  def _read_header(self, path: str):
    try:
      fd = os.open(path, os.O_RDONLY)
    except OSError as e:
      raise ChatVectorError(f"{self.role} {path}: cannot open ({e.strerror})") from None
    self._fds.append(fd)
    size = os.fstat(fd).st_size
    try:
      (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
      if n > min(size - 8, 100 << 20):
        raise ValueError(f"header length {n} exceeds the file")
      header = json.loads(os.pread(fd, n, 8))
      for name, info in header.items():
        if name == "__metadata__":
          continue
        begin, end = info["data_offsets"]
        entry = _Entry(tuple(info["shape"]), _ST_DTYPES[info["dtype"]])
        if end - begin != math.prod(entry.shape) * entry.dtype.itemsize or 8 + n + end > size:
          raise ValueError(f"tensor {name} has bad offsets or the file is truncated")
        self.entries[name] = entry
        self._where[name] = (fd, 8 + n + begin)
    except (struct.error, ValueError, KeyError, TypeError) as e:
      raise ChatVectorError(f"{self.role} {path}: not a valid safetensors file ({e})") from None

  def read(self, name: str, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) along axis 0 (the whole tensor for scalars)."""
    entry, (fd, offset) = self.entries[name], self._where[name]
    shape = entry.shape
    row = math.prod(shape[1:]) * entry.dtype.itemsize
    out_shape = (hi - lo, *shape[1:]) if shape else ()
    buf = np.empty(out_shape, entry.dtype)
    nbytes = buf.nbytes
    if nbytes and os.preadv(fd, [buf.reshape(-1).view(np.uint8)], offset + lo * row) != nbytes:
      raise ChatVectorError(f"{self.role}: {name}: short read (file changed or truncated)")
    return buf

  def close(self):
    for fd in self._fds:
      os.close(fd)


class _OrbaxReader:
  """Restores one leaf at a time from an Orbax PyTree checkpoint (partial restore).

  A train-state checkpoint's 'params' subtree is used when present; names are '/'-joined paths
  such as 'layers/attn/q_proj/kernel'.
  """

  def __init__(self, directory: str, role: str):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  (only for Orbax input)
    self.role, self._ocp = role, ocp
    self._path = os.path.abspath(directory)
    self._ckpt = ocp.PyTreeCheckpointer()
    try:
      meta = self._ckpt.metadata(self._path)
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many kinds)
      raise ChatVectorError(f"{role} {directory}: unreadable Orbax checkpoint ({e})") from None
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    self._prefix = ()
    if isinstance(tree, Mapping) and isinstance(tree.get("params"), Mapping):
      tree, self._prefix = tree["params"], ("params",)
    self.entries = {name: _Entry(tuple(m.shape), np.dtype(m.dtype))
                    for name, m in _flatten(tree).items()}
    self._cache: tuple[str, np.ndarray] | None = None

  def read(self, name: str, lo: int, hi: int) -> np.ndarray:
    if self._cache is None or self._cache[0] != name:
      self._cache = None
      keys = self._prefix + tuple(name.split("/"))
      item, restore_args = 0, self._ocp.RestoreArgs(restore_type=np.ndarray)
      for k in reversed(keys):
        item, restore_args = {k: item}, {k: restore_args}
      try:
        tree = self._ckpt.restore(self._path, args=self._ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
      except Exception as e:  # pylint: disable=broad-except
        raise ChatVectorError(f"{self.role}: {name}: cannot restore ({e})") from None
      for k in keys:
        tree = tree[k]
      self._cache = (name, np.asarray(tree))
    value = self._cache[1]
    return value[lo:hi] if value.ndim else value

  def close(self):
    self._cache = None


def _is_orbax(directory: str) -> bool:
  return any(os.path.exists(os.path.join(directory, f))
             for f in ("_METADATA", "manifest.ocdbt", "_CHECKPOINT_METADATA"))


def _open(directory: str, role: str):
  if not os.path.isdir(directory):
    raise ChatVectorError(f"--{role}={directory}: not a directory")
  names = os.listdir(directory)
  if any(n.endswith(".safetensors") for n in names) or _INDEX in names:
    return _SafetensorsReader(directory, role)
  if _is_orbax(directory):
    return _OrbaxReader(directory, role)
  if any(n.isdigit() and os.path.isdir(os.path.join(directory, n)) for n in names):
    raise ChatVectorError(f"--{role}={directory}: an Orbax CheckpointManager directory; pass "
                          "one step's item, e.g. DIR/<step>/state")
  raise ChatVectorError(f"--{role}={directory}: neither a Hugging Face safetensors directory "
                        "nor an Orbax checkpoint")


class _SafetensorsWriter:
  """Writes sharded safetensors one chunk at a time: headers first, as all shapes are known."""

  def __init__(self, directory: str, plan: Sequence[tuple[str, _Entry]], max_shard_bytes: int):
    self.dir = directory
    shards, size = [[]], 0
    for name, entry in plan:
      nbytes = math.prod(entry.shape) * entry.dtype.itemsize
      if shards[-1] and size + nbytes > max_shard_bytes:
        shards.append([])
        size = 0
      shards[-1].append((name, entry, nbytes))
      size += nbytes
    n = len(shards)
    self._files = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    self._shards = shards
    self._shard_of = {name: i for i, s in enumerate(shards) for name, _, _ in s}
    self._open = (-1, None)
    total = sum(b for s in shards for _, _, b in s)
    with open(os.path.join(directory, _INDEX), "w") as f:
      json.dump({"metadata": {"total_size": total},
                 "weight_map": {name: self._files[i] for name, i in self._shard_of.items()}},
                f, indent=2)

  def write(self, name: str, chunk: np.ndarray):
    i = self._shard_of[name]
    if self._open[0] != i:
      self.close()
      f = open(os.path.join(self.dir, self._files[i]), "wb")
      header, offset = {"__metadata__": {"format": "pt"}}, 0
      for tensor, entry, nbytes in self._shards[i]:
        header[tensor] = {"dtype": _ST_NAMES[entry.dtype], "shape": list(entry.shape),
                          "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
      blob = json.dumps(header, separators=(",", ":")).encode()
      blob += b" " * (-len(blob) % 8)
      f.write(struct.pack("<Q", len(blob)) + blob)
      self._open = (i, f)
    self._open[1].write(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8).data)

  def close(self):
    if self._open[1] is not None:
      self._open[1].close()
    self._open = (-1, None)


class _OrbaxWriter:
  """Collects merged tensors in memory-mapped scratch files, then saves them with Orbax.

  Orbax writes whole trees, so the tensors wait on disk (not in RAM) until the final save.
  """

  def __init__(self, directory: str, plan: Sequence[tuple[str, _Entry]], max_shard_bytes: int):
    del max_shard_bytes
    self.dir = directory
    self._scratch = directory + ".arrays"
    os.makedirs(self._scratch)
    self._arrays, self._rows = {}, {}
    for k, (name, entry) in enumerate(plan):
      self._arrays[name] = np.lib.format.open_memmap(
          os.path.join(self._scratch, f"{k}.npy"), "w+", entry.dtype, entry.shape)
      self._rows[name] = 0

  def write(self, name: str, chunk: np.ndarray):
    array = self._arrays[name]
    if array.ndim == 0:
      array[()] = chunk
      return
    lo = self._rows[name]
    array[lo:lo + chunk.shape[0]] = chunk
    self._rows[name] = lo + chunk.shape[0]

  def close(self):
    if self._arrays is None:
      return
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    tree = {}
    for name, array in self._arrays.items():
      array.flush()
      node = tree
      *parents, leaf = name.split("/")
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = array
    os.rmdir(self.dir)  # Orbax creates the item directory itself
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.abspath(self.dir), tree)
    ckpt.wait_until_finished()
    self._arrays = None
    shutil.rmtree(self._scratch)


# ----------------------------------------------------------------------------------------------
# Streaming merge.


def _chunks(shape: tuple[int, ...], chunk_elems: int) -> Iterator[tuple[int, int]]:
  if not shape:
    yield 0, 0
    return
  step = max(1, chunk_elems // max(1, math.prod(shape[1:])))
  for lo in range(0, shape[0], step):
    yield lo, min(lo + step, shape[0])


def _copy_side_files(src: str, dst: str, dtype: np.dtype | None):
  """config.json, generation_config.json, tokenizer files...: everything but weights."""
  for name in sorted(os.listdir(src)):
    path = os.path.join(src, name)
    if not os.path.isfile(path) or name == _INDEX or name.endswith(_WEIGHT_SUFFIXES):
      continue
    if name == "config.json" and dtype is not None:
      with open(path) as f:
        config = json.load(f)
      for key in ("torch_dtype", "dtype"):
        if key in config:
          config[key] = str(dtype)
      with open(os.path.join(dst, name), "w") as f:
        json.dump(config, f, indent=2)
    else:
      shutil.copy2(path, os.path.join(dst, name))


def merge_checkpoints(base: str, instruct: str, target: str, output: str,
                      scales: Sequence[float] = (0.5,), *, exclude: Sequence[str] = (),
                      protect_token_ids: Sequence[int] = (), allow_vocab_mismatch: bool = False,
                      dtype: str | None = None, max_shard_bytes: int = 5 * 10**9,
                      chunk_elems: int = 1 << 18, progress: bool = True) -> list[str]:
  """Streams target + s * (instruct - base) over checkpoints; returns the output directories.

  One scale writes to `output`; several write `output/scale_<s>` each, from a single read pass.
  Everything is validated before the first byte is written; the output is assembled in a
  temporary sibling directory and renamed into place only when complete.
  """
  if os.path.exists(output):
    raise ChatVectorError(f"--output={output} already exists; remove it or pick another path")
  if not scales or len({f"{s:g}" for s in scales}) != len(scales):
    raise ChatVectorError(f"--scale={','.join(map(str, scales))}: give distinct scales")
  out_dtype = None
  if dtype:
    try:
      out_dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    except TypeError:
      out_dtype = None
    if out_dtype not in _ST_NAMES or not _is_float(out_dtype):
      raise ChatVectorError(f"--dtype={dtype}: expected float32, bfloat16 or float16")
  readers = {}
  try:
    for role, path in (("target", target), ("base", base), ("instruct", instruct)):
      readers[role] = _open(path, role)
    t, b, i = readers["target"], readers["base"], readers["instruct"]
    if len({type(r) for r in readers.values()}) > 1:
      raise ChatVectorError("--base, --instruct and --target must all be safetensors "
                            "directories or all Orbax checkpoints")
    if not t.entries:
      raise ChatVectorError(f"--target={target}: no tensors found")
    work = {}  # name -> (entry, overlap, keep) for tensors that get the vector
    for role, reader in (("base", b), ("instruct", i)):
      extra = sorted(n for n in reader.entries if n not in t.entries
                     and not _excluded(n, exclude))
      if extra:
        raise ChatVectorError(f"{extra[0]}: in --{role} but not in --target "
                              f"({len(extra)} such tensors)")
    for name, entry in t.entries.items():
      if _excluded(name, exclude) or not _is_float(entry.dtype):
        continue
      for role, reader in (("base", b), ("instruct", i)):
        if name not in reader.entries:
          raise ChatVectorError(f"{name}: missing from --{role} (use --exclude to skip it)")
      axis = vocab_axis(name)
      overlap = _check_shapes(name, entry.shape, {"base": b.entries[name].shape,
                                                  "instruct": i.entries[name].shape},
                              axis, allow_vocab_mismatch)
      keep = None if axis is None else _keep_rows(
          name, entry.shape[axis], overlap, protect_token_ids)
      work[name] = (axis, overlap, keep)

    plan = [(name, _Entry(e.shape, out_dtype if out_dtype is not None and _is_float(e.dtype)
                          else e.dtype)) for name, e in t.entries.items()]
    tmp = f"{output.rstrip('/')}.tmp-{os.getpid()}"
    multi = len(scales) > 1
    outs = [os.path.join(tmp, f"scale_{s:g}") if multi else tmp for s in scales]
    writer_cls = _SafetensorsWriter if isinstance(t, _SafetensorsReader) else _OrbaxWriter
    try:
      writers = []
      for out in outs:
        os.makedirs(out)
        writers.append(writer_cls(out, plan, max_shard_bytes))
      _stream(t, b, i, plan, work, scales, writers, chunk_elems, progress)
      for out, writer in zip(outs, writers):
        writer.close()
        if isinstance(t, _SafetensorsReader):
          _copy_side_files(target, out, out_dtype)
      os.rename(tmp, output)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      for out in outs:
        shutil.rmtree(out + ".arrays", ignore_errors=True)
      raise
  finally:
    for reader in readers.values():
      reader.close()
  return [os.path.join(output, os.path.relpath(o, tmp)) if multi else output for o in outs]


def _stream(t, b, i, plan, work, scales, writers, chunk_elems, progress):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  total = sum(math.prod(e.shape) for e in t.entries.values())
  with tqdm(total=total, unit="param", unit_scale=True, desc="chat vector", disable=not progress,
            file=sys.stderr) as bar:
    for name, out_entry in plan:
      shape = t.entries[name].shape
      for lo, hi in _chunks(shape, chunk_elems):
        tgt = t.read(name, lo, hi)
        if name not in work:
          outs = [tgt.astype(out_entry.dtype)] * len(scales)
        else:
          axis, overlap, keep = work[name]
          # Along a leading token axis only rows below the overlap exist in base/instruct.
          v_hi = min(hi, overlap) if axis == 0 else hi
          v_lo = min(lo, v_hi)
          diff = _diff(i.read(name, v_lo, v_hi), b.read(name, v_lo, v_hi))
          keep_chunk = keep[lo:hi] if axis == 0 and keep is not None else keep
          outs = [_apply(tgt, [diff], [s], keep_chunk, axis, out_entry.dtype) for s in scales]
        for writer, out in zip(writers, outs):
          writer.write(name, out)
        bar.update(max(1, math.prod(tgt.shape)))


# ----------------------------------------------------------------------------------------------
# Command line.


def _parse_tokens(text: str) -> tuple[int, ...]:
  if not text:
    return ()
  if text == "llama3_chat":
    return LLAMA3_CHAT_TOKEN_IDS
  try:
    return tuple(int(x) for x in text.split(","))
  except ValueError:
    raise ChatVectorError(f"--protect_tokens={text}: expected comma-separated token ids "
                          "or 'llama3_chat'") from None


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  try:
    for name in ("base", "instruct", "target", "output"):
      if not getattr(f, name):
        raise ChatVectorError(f"--{name} is required (see --help)")
    try:
      scales = [float(s) for s in f.scale.split(",")]
    except ValueError:
      raise ChatVectorError(f"--scale={f.scale}: expected numbers like 0.5 or 0.3,0.5,1.0"
                            ) from None
    for pattern in f.exclude:
      try:
        re.compile(pattern)
      except re.error as e:
        raise ChatVectorError(f"--exclude={pattern}: bad regular expression ({e})") from None
    outs = merge_checkpoints(
        f.base, f.instruct, f.target, f.output, scales, exclude=f.exclude,
        protect_token_ids=_parse_tokens(f.protect_tokens),
        allow_vocab_mismatch=f.allow_vocab_mismatch, dtype=f.dtype or None,
        max_shard_bytes=int(f.max_shard_gb * 1e9), progress=not f.quiet)
  except (ChatVectorError, OSError) as e:
    sys.exit(f"chat_vector: error: {e}")
  for out in outs:
    print(out)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("base", None, "Base model the vector starts from (e.g. Llama 3 8B): HF "
                      "safetensors directory or Orbax params checkpoint.")
  flags.DEFINE_string("instruct", None, "Instruction-tuned model (e.g. Llama 3 8B Instruct); "
                      "chat vector = instruct - base.")
  flags.DEFINE_string("target", None, "Model that receives the vector (e.g. Swallow 8B after "
                      "continual pretraining); its config and tokenizer files are copied.")
  flags.DEFINE_string("output", None, "New directory for the result (must not exist).")
  flags.DEFINE_string("scale", "0.5", "Weight of the vector; a comma list (0.3,0.5,1.0) writes "
                      "OUTPUT/scale_0.3, ... in one pass.")
  flags.DEFINE_multi_string("exclude", [], "Regex (re.search) of tensor names left as in the "
                            "target, e.g. 'embed_tokens|lm_head' or 'norm'. Repeatable.")
  flags.DEFINE_string("protect_tokens", "", "Token ids whose embedding / LM-head rows stay as "
                      "in the target: '128006,128007,128009' or 'llama3_chat'.")
  flags.DEFINE_bool("allow_vocab_mismatch", False, "If vocabulary sizes differ, apply the "
                    "vector to the overlapping rows only (otherwise an error).")
  flags.DEFINE_string("dtype", "", "Output dtype (float32, bfloat16, float16); default: "
                      "each tensor keeps the target's dtype. Arithmetic is always fp32.")
  flags.DEFINE_float("max_shard_gb", 5.0, "Maximum size of one output safetensors shard.")
  flags.DEFINE_bool("quiet", False, "No progress bar.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
