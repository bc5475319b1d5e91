r"""Task arithmetic per tensor and over parameter trees: target + sum_i w_i * (plus_i - minus_i).

fp32 arithmetic, result cast to the target's dtype (or `dtype`). Works on NumPy arrays and, under
`jax.jit` or on sharded arrays, on JAX arrays (elementwise ops: XLA keeps the target's sharding).
Tensors with token rows (VOCAB_AXES: embeddings, LM heads, in our layout or HF names) may keep
protected rows as in the target, and may differ in vocabulary size when allowed. Usage:
docs/chat_vector.md.
"""

from collections.abc import Callable, Sequence
import re
import sys
from typing import Any

from flax import traverse_util
import ml_dtypes
import numpy as np

LLAMA3_CHAT_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
LLAMA3_CHAT_TOKEN_IDS = (128006, 128007, 128009)  # their ids in Llama 3's vocabulary

# (path regex, vocabulary axis): which tensors have token rows, and along which axis.
VOCAB_AXES = (
    (r"(^|/)embed/embedding$", 0),  # ours, [V, D]
    (r"(^|/)lm_head/kernel$", 1),  # ours, [D, V]
    (r"(^|\.)embed_tokens\.weight$", 0),  # Hugging Face, [V, D]
    (r"(^|\.)lm_head\.weight$", 0),  # Hugging Face, [V, D]
)

Tree = Any  # nested Mapping of arrays (NumPy or JAX)


class ChatVectorError(ValueError):
  """Tensors or checkpoints that cannot be merged; the message names the tensor."""


def _xp(*arrays: Any) -> Any:
  """jax.numpy when any input is a JAX array or tracer, else NumPy (JAX is never imported here)."""
  jax = sys.modules.get("jax")
  return jax.numpy if jax is not None and any(isinstance(a, jax.Array) for a in arrays) else np


def is_float(dtype: Any) -> bool:
  """True for the floating dtypes merged (bfloat16 included)."""
  return np.issubdtype(dtype, np.floating) or np.dtype(dtype) == ml_dtypes.bfloat16


def diff(plus: Any, minus: Any) -> Any:
  """plus - minus in fp32, cropped to the common shape (shapes already checked)."""
  xp = _xp(plus, minus)
  if plus.shape != minus.shape:
    crop = tuple(slice(0, min(a, b)) for a, b in zip(plus.shape, minus.shape))
    plus, minus = plus[crop], minus[crop]
  out = xp.asarray(plus).astype(np.float32)
  if xp is np:  # in place: one pass less over memory, same rounding
    out -= minus.astype(np.float32)
    return out
  return out - xp.asarray(minus).astype(np.float32)


def apply(target: Any, diffs: Sequence[Any], weights: Sequence[Any], keep: Any,
          axis: int | None, dtype: Any) -> Any:
  """target + sum_i w_i * diffs_i in fp32; rows where `keep` (a bool vector along the vocabulary
  `axis`, or None) is set stay as in target. diffs shorter along `axis` are zero-padded, longer
  ones cropped."""
  xp = _xp(target, *diffs)
  t32 = xp.asarray(target).astype(np.float32)
  delta = None
  for d, w in zip(diffs, weights):
    if axis is not None and d.shape[axis] > t32.shape[axis]:
      d = d[(slice(None),) * axis + (slice(0, t32.shape[axis]),)]
    # A Python or NumPy weight as fp32: fp32 arithmetic even for a float64 weight.
    term = (np.float32(w) if isinstance(w, (int, float, np.number)) else w) * d
    delta = term if delta is None else delta + term
  if delta.shape != t32.shape:  # fewer token rows than the target
    delta = xp.pad(delta, [(0, n - m) for n, m in zip(t32.shape, delta.shape)])
  if xp is np:  # in place, as above
    delta += t32
  out = delta if xp is np else t32 + delta
  if keep is not None:
    out = xp.where(keep.reshape([-1 if i == axis else 1 for i in range(out.ndim)]), t32, out)
  return out.astype(dtype)


def plan_rows(name: str, target: tuple[int, ...], others: dict[str, tuple[int, ...]],
              protect: Sequence[int] = (), allow_vocab_mismatch: bool = False,
              vocab_axes: Sequence[tuple[str, int]] = VOCAB_AXES
              ) -> tuple[int | None, int | None, Any]:
  """Checks the shapes `others` ({role: shape}) of tensor `name` against the target's. Returns
  (token axis, overlapping rows, bool mask of the target's rows kept as they are: protected ids,
  rows past the overlap); axis and overlap are None without token rows, the mask None when
  nothing is kept."""
  axis = next((a for pattern, a in vocab_axes if re.search(pattern, name)), None)
  for role, shape in others.items():
    if tuple(shape) == tuple(target):
      continue
    only_vocab = len(shape) == len(target) and axis is not None and all(
        a == b for i, (a, b) in enumerate(zip(shape, target)) if i != axis)
    if not only_vocab:
      raise ChatVectorError(
          f"{name}: shape mismatch: target {tuple(target)} vs {role} {tuple(shape)}")
    if not allow_vocab_mismatch:
      raise ChatVectorError(
          f"{name}: vocabulary size mismatch: target {tuple(target)} vs {role} {tuple(shape)} "
          "(pass allow_vocab_mismatch / --allow_vocab_mismatch to merge the overlapping rows)")
  if axis is None:
    return None, None, None
  rows = target[axis]
  overlap = min([rows] + [s[axis] for s in others.values()])
  if overlap == rows and not protect:
    return axis, overlap, None
  keep = np.arange(rows) >= overlap
  for i in protect:
    if not 0 <= i < rows:
      raise ChatVectorError(f"{name}: protected token id {i} is outside its {rows} rows")
    keep[i] = True
  return axis, overlap, keep


def merge_tensor(name: str, target: Any, terms: Sequence[tuple[Any, Any, Any]], *,
                 protect_token_ids: Sequence[int] = (), allow_vocab_mismatch: bool = False,
                 vocab_axes: Sequence[tuple[str, int]] = VOCAB_AXES, dtype: Any = None) -> Any:
  """target + sum_i w_i * (plus_i - minus_i) for one tensor; terms are (plus, minus|None, w),
  minus None when plus already is a vector. Non-float tensors are returned unchanged."""
  dtype = target.dtype if dtype is None else dtype
  if not is_float(target.dtype):
    return target
  shapes = {}
  for k, (plus, minus, _) in enumerate(terms):
    suffix = f" {k}" if len(terms) > 1 else ""
    shapes[("instruct" if minus is not None else "vector") + suffix] = plus.shape
    if minus is not None:
      shapes["base" + suffix] = minus.shape
  axis, _, keep = plan_rows(name, target.shape, shapes, protect_token_ids, allow_vocab_mismatch,
                            vocab_axes)
  diffs = [_xp(plus).asarray(plus).astype(np.float32) if minus is None else diff(plus, minus)
           for plus, minus, _ in terms]
  return apply(target, diffs, [w for _, _, w in terms], keep, axis, dtype)


def _flat(tree: Tree, role: str, target: dict, excluded: Callable[[str], bool]) -> dict[str, Any]:
  flat = traverse_util.flatten_dict(tree, sep="/")
  extra = sorted(set(flat) - set(target))
  if extra:
    raise ChatVectorError(f"{extra[0]}: in the {role} tree but not in the target "
                          f"({len(extra)} such tensors)")
  missing = [name for name in target if name not in flat and not excluded(name)]
  if missing:
    raise ChatVectorError(f"{missing[0]}: missing from the {role} tree")
  return flat


def task_arithmetic(target: Tree, vectors: Sequence[Tree], weights: Sequence[Any], *,
                    minus: Sequence[Tree | None] | None = None, exclude: Sequence[str] = (),
                    protect_token_ids: Sequence[int] = (), allow_vocab_mismatch: bool = False,
                    vocab_axes: Sequence[tuple[str, int]] = VOCAB_AXES) -> Tree:
  """target + sum_i weights[i] * (vectors[i] - minus[i]) per tensor ('/'-joined paths).

  `minus[i]` None (the default) takes vectors[i] as a task vector. Paths matching a regex in
  `exclude` (re.search) are returned as in the target and may be absent from the others.
  """
  if len(vectors) != len(weights):
    raise ChatVectorError(f"{len(vectors)} vectors but {len(weights)} weights")
  minus = [None] * len(vectors) if minus is None else minus
  roles = [("instruct", "base") if m is not None and len(vectors) == 1 else
           (f"vector {i}", f"base {i}") for i, m in enumerate(minus)]
  flat_t = traverse_util.flatten_dict(target, sep="/")
  excluded = lambda name: any(re.search(p, name) for p in exclude)
  flat_m = [None if m is None else _flat(m, r[1], flat_t, excluded) for m, r in zip(minus, roles)]
  flat_v = [_flat(v, r[0], flat_t, excluded) for v, r in zip(vectors, roles)]
  out = {}
  for name, t in flat_t.items():
    if excluded(name):
      out[name] = t
      continue
    terms = [(v[name], None if m is None else m[name], w)
             for v, m, w in zip(flat_v, flat_m, weights)]
    out[name] = merge_tensor(name, t, terms, protect_token_ids=protect_token_ids,
                             allow_vocab_mismatch=allow_vocab_mismatch, vocab_axes=vocab_axes)
  return traverse_util.unflatten_dict(out, sep="/")


def apply_chat_vector(target_params: Tree, base_params: Tree, instruct_params: Tree,
                      scale: Any = 0.5, exclude: Sequence[str] = (),
                      protect_token_ids: Sequence[int] = (), allow_vocab_mismatch: bool = False,
                      vocab_axes: Sequence[tuple[str, int]] = VOCAB_AXES) -> Tree:
  """target + scale * (instruct - base): the recipe's chat-vector stage on in-memory params.
  Jittable; under jit the output keeps the target's sharding."""
  return task_arithmetic(target_params, [instruct_params], [scale], minus=[base_params],
                         exclude=exclude, protect_token_ids=protect_token_ids,
                         allow_vocab_mismatch=allow_vocab_mismatch, vocab_axes=vocab_axes)
