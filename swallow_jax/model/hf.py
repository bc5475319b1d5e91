"""Hugging Face Llama safetensors <-> swallow_jax params (rename + transpose, nothing else).

Name mapping (kernel = HF weight.T; per-layer HF tensors stack on a leading layer axis):

    model.embed_tokens.weight                  embed/embedding            [V, D]
    model.layers.{i}.input_layernorm.weight    layers/attn_norm/scale     [L, D]
    model.layers.{i}.self_attn.q_proj.weight   layers/attn/q_proj/kernel  [L, D, H*Dh]   (.T)
    ... k_proj, v_proj, o_proj; post_attention_layernorm -> mlp_norm; mlp.{gate,up,down}_proj
    model.norm.weight                          final_norm/scale           [D]
    lm_head.weight                             lm_head/kernel             [D, V]        (.T)

Loading streams one tensor at a time. Without `shardings`, host memory peaks at one stacked
parameter (for Llama 3 8B the [32, 4096, 14336] gate kernel: 7.5 GB in float32, 3.8 GB in
bfloat16) on top of the arrays already on the device. With `shardings`, each device shard is read straight from the memory-mapped files (only the rows and
columns it owns), so a 70B checkpoint loads onto a mesh without any full host copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from swallow_jax.model.config import LlamaConfig
from swallow_jax.model.llama import Params, init_params

Path = tuple[str, ...]
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_GLOBAL = {
    "model.embed_tokens.weight": ("embed", "embedding"),
    "model.norm.weight": ("final_norm", "scale"),
    "lm_head.weight": ("lm_head", "kernel"),
}
_PER_LAYER = {
    "input_layernorm.weight": ("layers", "attn_norm", "scale"),
    "post_attention_layernorm.weight": ("layers", "mlp_norm", "scale"),
    **{f"self_attn.{p}.weight": ("layers", "attn", p, "kernel")
       for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
    **{f"mlp.{p}.weight": ("layers", "mlp", p, "kernel")
       for p in ("gate_proj", "up_proj", "down_proj")},
}
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")  # buffers some old exports carry
_TOKENIZER_FILES = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|chat_template\..*|.*\.tiktoken|"
    r".*\.model)$")


def hf_to_param_name(name: str) -> tuple[Path, int | None]:
  """'model.layers.3.self_attn.q_proj.weight' -> (('layers', 'attn', 'q_proj', 'kernel'), 3).

  Global tensors give layer None. Raises KeyError naming the tensor if it is not a Llama weight.
  """
  if name in _GLOBAL:
    return _GLOBAL[name], None
  m = _LAYER_RE.fullmatch(name)
  if m and m.group(2) in _PER_LAYER:
    return _PER_LAYER[m.group(2)], int(m.group(1))
  raise KeyError(f"{name!r} is not a Llama weight name")


def param_to_hf_names(path: Path, num_layers: int) -> list[str]:
  """Param path -> HF tensor names: one per layer for stacked params, else a single name."""
  path = tuple(path)
  for name, p in _GLOBAL.items():
    if p == path:
      return [name]
  for suffix, p in _PER_LAYER.items():
    if p == path:
      return [f"model.layers.{i}.{suffix}" for i in range(num_layers)]
  raise KeyError(f"{'/'.join(path)!r} is not a Llama parameter path")


def is_transposed(path: Path) -> bool:
  """Kernels are HF `weight.T`; embeddings and norm scales are stored as in HF."""
  return path[-1] == "kernel"


def param_paths(config: LlamaConfig) -> list[Path]:
  """Every parameter path of `config`, in HF file order (embed, layers, norm, lm_head)."""
  paths = [_GLOBAL["model.embed_tokens.weight"], *_PER_LAYER.values(), _GLOBAL["model.norm.weight"]]
  return paths if config.tie_word_embeddings else [*paths, _GLOBAL["lm_head.weight"]]


def _get(tree: Params, path: Path) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: Path, value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _expected_shapes(config: LlamaConfig) -> Params:
  return jax.eval_shape(init_params, config, jax.random.key(0))


# Loading -------------------------------------------------------------------------------------


def _weight_map(path: str) -> dict[str, str]:
  """HF tensor name -> file (absolute) for a sharded or single-file safetensors dir."""
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      return {k: os.path.join(path, v) for k, v in json.load(f)["weight_map"].items()}
  files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {path}")
  out = {}
  for fname in files:
    with safe_open(os.path.join(path, fname), "numpy") as f:
      out.update({k: os.path.join(path, fname) for k in f.keys()})
  return out


class _Reader:
  """Lazily opened safetensors files; reads whole tensors or slices, converted to `dtype`."""

  def __init__(self, weight_map: dict[str, str], dtype: np.dtype):
    self.weight_map, self.dtype, self._open = weight_map, dtype, {}

  def _slice(self, name: str):
    file = self.weight_map[name]
    if file not in self._open:
      self._open[file] = safe_open(file, "numpy")
    return self._open[file].get_slice(name)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._slice(name).get_shape())

  def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
    return np.asarray(self._slice(name)[index] if index else self._slice(name)[:], self.dtype)


def _read_param(reader: _Reader, path: Path, names: list[str], stacked: bool,
                index: tuple[slice, ...] = ()) -> np.ndarray:
  """Reads param `path` (or the `index` part of it) from its HF tensors."""
  transposed = is_transposed(path)
  if stacked:
    layers = range(len(names))[index[0]] if index else range(len(names))
    index = index[1:]
  else:
    layers = [None]
  hf_index = tuple(reversed(index)) if transposed else index
  parts = []
  for i in layers:
    x = reader.read(names[0 if i is None else i], hf_index)
    parts.append(x.T if transposed else x)
  return parts[0] if not stacked else np.stack(parts)


def _check_tensors(config: LlamaConfig, reader: _Reader, path: str) -> None:
  """Errors naming the tensor (and file) if anything is missing, extra or mis-shaped."""
  expected = _expected_shapes(config)
  wanted = set()
  for p in param_paths(config):
    shape = _get(expected, p).shape
    per_tensor = shape[1:] if p[0] == "layers" else shape
    hf_shape = tuple(reversed(per_tensor)) if is_transposed(p) else tuple(per_tensor)
    for name in param_to_hf_names(p, config.num_layers):
      wanted.add(name)
      if name not in reader.weight_map:
        raise ValueError(f"tensor {name!r} is missing from {path}")
      if reader.shape(name) != hf_shape:
        raise ValueError(f"tensor {name!r} in {reader.weight_map[name]} has shape "
                         f"{reader.shape(name)}, expected {hf_shape} from config.json")
  for name, file in reader.weight_map.items():
    tied_head = name == "lm_head.weight" and config.tie_word_embeddings
    if name not in wanted and not tied_head and not _IGNORED.match(name):
      raise ValueError(f"unexpected tensor {name!r} in {file}")


def load_hf(path: str, dtype: Any = jnp.float32, shardings: Params | None = None,
            progress: bool = True) -> tuple[LlamaConfig, Params]:
  """Loads an HF Llama safetensors dir -> (config, params) with params in `dtype`.

  `shardings`: optional pytree of `jax.sharding.Sharding` matching params; each array is then
  assembled with `jax.make_array_from_callback`, every device reading only its own shard.
  The config gets `param_dtype=dtype`; the compute dtype stays the LlamaConfig default.
  """
  cfg_file = os.path.join(path, "config.json")
  if not os.path.exists(cfg_file):
    raise FileNotFoundError(f"{cfg_file} not found (expected an HF Llama checkpoint dir)")
  with open(cfg_file) as f:
    config = LlamaConfig.from_hf(json.load(f), param_dtype=jnp.dtype(dtype).name)
  reader = _Reader(_weight_map(path), jnp.dtype(dtype))
  _check_tensors(config, reader, path)
  expected = _expected_shapes(config)
  params: dict = {}
  for p in tqdm(param_paths(config), desc=f"load {os.path.basename(path.rstrip('/'))}",
                disable=not progress):
    names = param_to_hf_names(p, config.num_layers)
    stacked = p[0] == "layers"
    if shardings is None:
      value = jnp.asarray(_read_param(reader, p, names, stacked))
    else:
      value = jax.make_array_from_callback(
          _get(expected, p).shape, _get(shardings, p),
          lambda idx, p=p, names=names, stacked=stacked: _read_param(
              reader, p, names, stacked, tuple(idx)))
    _set(params, p, value)
  return config, params


# Saving --------------------------------------------------------------------------------------


def hf_tensors(config: LlamaConfig, params: Params,
               dtype: Any = jnp.bfloat16) -> Iterator[tuple[str, np.ndarray]]:
  """Yields (HF name, numpy tensor in `dtype`) one at a time, host copy = one stacked param."""
  for p in param_paths(config):
    value = np.asarray(jax.device_get(_get(params, p))).astype(jnp.dtype(dtype))
    for i, name in enumerate(param_to_hf_names(p, config.num_layers)):
      x = value[i] if p[0] == "layers" else value
      yield name, np.ascontiguousarray(x.T if is_transposed(p) else x)


def _plan_shards(config: LlamaConfig, params: Params, itemsize: int,
                 max_shard_bytes: int) -> list[list[str]]:
  shards, size = [[]], 0
  for p in param_paths(config):
    shape = _get(params, p).shape
    nbytes = int(np.prod(shape[1:] if p[0] == "layers" else shape)) * itemsize
    for name in param_to_hf_names(p, config.num_layers):
      if shards[-1] and size + nbytes > max_shard_bytes:
        shards.append([])
        size = 0
      shards[-1].append(name)
      size += nbytes
  return shards


def _copy_tokenizer(tokenizer_dir: str, out: str) -> None:
  if os.path.isfile(tokenizer_dir):
    shutil.copy2(tokenizer_dir, out)
    return
  for fname in os.listdir(tokenizer_dir):
    src = os.path.join(tokenizer_dir, fname)
    if os.path.isfile(src) and _TOKENIZER_FILES.match(fname):
      shutil.copy2(src, out)


def save_hf(path: str, config: LlamaConfig, params: Params, dtype: Any = jnp.bfloat16,
            tokenizer_dir: str | None = None, max_shard_bytes: int = 5 * 1024**3,
            progress: bool = True) -> None:
  """Writes an HF LlamaForCausalLM dir (config.json, generation_config.json, safetensors).

  Shards larger than `max_shard_bytes` go to model-0000i-of-0000N.safetensors + index. Written to
  a temporary sibling dir and renamed at the end, so a crash never leaves a half-written `path`;
  an existing `path` is replaced. Single-process only (params are copied to this host).
  """
  path = os.path.abspath(path)
  dtype = jnp.dtype(dtype)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  try:
    os.chmod(tmp, 0o755)  # mkdtemp makes it private
    hf_config = config.to_hf()
    hf_config["torch_dtype"] = dtype.name
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    gen = {"_from_model_config": True, "bos_token_id": hf_config["bos_token_id"],
           "eos_token_id": hf_config["eos_token_id"]}
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
      json.dump(gen, f, indent=2)
    shards = _plan_shards(config, params, dtype.itemsize, max_shard_bytes)
    files = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    shard_of = {name: i for i, names in enumerate(shards) for name in names}
    weight_map, total, current, current_idx = {}, 0, {}, 0
    n_tensors = sum(len(s) for s in shards)
    for name, x in tqdm(hf_tensors(config, params, dtype), total=n_tensors,
                        desc=f"save {os.path.basename(path)}", disable=not progress):
      if shard_of[name] != current_idx:  # tensors arrive in plan order
        save_file(current, os.path.join(tmp, files[current_idx]), metadata={"format": "pt"})
        current, current_idx = {}, shard_of[name]
      current[name] = x
      weight_map[name] = files[current_idx]
      total += x.nbytes
    save_file(current, os.path.join(tmp, files[current_idx]), metadata={"format": "pt"})
    if len(files) > 1:
      with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if tokenizer_dir:
      _copy_tokenizer(tokenizer_dir, tmp)
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
      os.rename(path, os.path.join(old, "x"))
      os.rename(tmp, path)
      shutil.rmtree(old)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
