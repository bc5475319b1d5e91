r"""One door for model weights: find, load and save a model whatever its layout.

Path forms (kind in brackets; docs/model.md has the details): [hf] an HF dir or a Hub id in the
local HF cache (nothing is downloaded); [orbax] a `convert --to_orbax` dir; [train] WORKDIR,
WORKDIR/checkpoints (latest step), a step dir or its state/ (only "params" is restored; the config
is WORKDIR/config.json's). A LoRA run holds no base weights: `load` reads its base (config.json's
init_from, `ModelRef.base`) and merges the adapter into it. The config always comes from the
checkpoint itself, never from a preset. Safetensors are read with pread into fresh buffers (unlike
a memory map, whose touched pages stay resident). Outputs are atomic, files mode 0644.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import struct
from typing import Any

from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp

from swallow_jax import cli
from swallow_jax import fileio
from swallow_jax.model import hf
from swallow_jax.model.config import LlamaConfig
from swallow_jax.model import lora as lora_lib
from swallow_jax.model.llama import Params, init_params, is_per_layer, unstack_layers
from swallow_jax.tokenizer import specials

INDEX = "model.safetensors.index.json"
ORBAX_PARAMS, ORBAX_CONFIG = "params", "hf_config.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".ckpt")
_TOKENIZER_FILES = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|chat_template\..*|.*\.tiktoken|"
    r".*\.model|vocab\.json|merges\.txt)$")
_ST_DTYPES = {k: np.dtype(v) for k, v in dict(
    F64=np.float64, F32=np.float32, F16=np.float16, BF16=ml_dtypes.bfloat16, I64=np.int64,
    I32=np.int32, I16=np.int16, I8=np.int8, U8=np.uint8, BOOL=np.bool_,
    F8_E4M3=ml_dtypes.float8_e4m3fn, F8_E5M2=ml_dtypes.float8_e5m2).items()}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


class ModelPathError(ValueError):
  """A path that is not a model this package can read; the one-line message says why."""


@dataclasses.dataclass(frozen=True)
class ModelRef:
  """Where a model's weights live and what they are."""

  kind: str  # "hf" | "orbax" | "train"
  path: str  # HF dir, Orbax params dir, or WORKDIR/checkpoints/N/state
  config: LlamaConfig
  tokenizer_dir: str | None = None
  step: int | None = None
  lora: lora_lib.LoraConfig | None = None  # A LoRA run: the adapter's config ...
  base: str | None = None  # ... and the model it adapts (a `base_model_path`).


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """A tensor's shape and dtype, known before any of its bytes are read."""

  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    """Size of the tensor's data."""
    return math.prod(self.shape) * self.dtype.itemsize


def _hub_snapshot(repo_id: str) -> str:
  # The local Hub cache, located as huggingface_hub itself locates it.
  home = os.environ.get("HF_HOME") or os.path.expanduser(os.path.join("~", ".cache", "huggingface"))
  cache = os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")
  missing = ModelPathError(
      f"{repo_id} is not in the local Hugging Face cache ({cache}); download it with: "
      f"huggingface-cli download {repo_id}")
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError:
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    try:
      with open(os.path.join(repo, "refs", "main"), encoding="utf-8") as f:
        snapshot = os.path.join(repo, "snapshots", f.read().strip())
    except OSError:
      raise missing from None
    if not os.path.isdir(snapshot):
      raise missing from None
    return snapshot
  try:
    return huggingface_hub.snapshot_download(repo_id, cache_dir=cache, local_files_only=True)
  except Exception:  # pylint: disable=broad-except  (LocalEntryNotFoundError and kin)
    raise missing from None


def _read_json(path: str) -> Any:
  try:
    return fileio.read_json(path)
  except (OSError, ValueError) as e:
    raise ModelPathError(str(e)) from None


def _hf_config(path: str, **overrides: Any) -> LlamaConfig:
  try:
    return LlamaConfig.from_hf(_read_json(path), **overrides)
  except (ValueError, TypeError) as e:
    raise ModelPathError(f"{path}: not a Llama config ({e})") from None


def _step_dir(path: str) -> str | None:
  """checkpoints/N from a workdir, its checkpoints/, a step dir or the step's state/."""
  if os.path.basename(path) == "state" and os.path.basename(os.path.dirname(path)).isdigit():
    return os.path.dirname(path)
  if os.path.isdir(os.path.join(path, "state")) and os.path.basename(path).isdigit():
    return path
  for root in (path, os.path.join(path, "checkpoints")):
    if os.path.isdir(root):
      steps = [int(n) for n in os.listdir(root)
               if n.isdigit() and os.path.isdir(os.path.join(root, n, "state"))]
      if steps:
        return os.path.join(root, str(max(steps)))
  return None


def _train_ref(step_dir: str) -> ModelRef:
  workdir = os.path.dirname(os.path.dirname(step_dir))
  cfg_file = os.path.join(workdir, "config.json")
  if not os.path.isfile(cfg_file):
    raise ModelPathError(f"{cfg_file} not found: cannot tell the model config of {step_dir}")
  resolved = _read_json(cfg_file)
  try:
    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    config = LlamaConfig(**{k: v for k, v in resolved["model"].items() if k in fields})
  except (KeyError, TypeError, ValueError) as e:
    raise ModelPathError(f"{cfg_file}: no valid 'model' section ({e})") from None
  tokenizer = resolved.get("tokenizer") or None
  if tokenizer and not os.path.exists(tokenizer):  # then relative to the workdir
    tokenizer = os.path.join(workdir, tokenizer)
  lora, base = None, None
  if (resolved["model"].get("lora") or {}).get("rank"):
    try:
      lora = lora_lib.LoraConfig.from_dict(resolved["model"]["lora"])
    except (TypeError, ValueError) as e:
      raise ModelPathError(f"{cfg_file}: bad model.lora section ({e})") from None
    if not (base := resolved.get("init_from")):
      raise ModelPathError(f"{cfg_file}: a LoRA run without init_from (its base model)")
  return ModelRef("train", os.path.join(step_dir, "state"), config,
                  tokenizer if tokenizer and os.path.exists(tokenizer) else None,
                  int(os.path.basename(step_dir)), lora, base)


def resolve(path: str | os.PathLike[str]) -> ModelRef:
  """The ModelRef of any accepted path form (see the module doc); ModelPathError otherwise."""
  path = os.fspath(path)
  if not os.path.exists(path):
    if _HUB_ID.fullmatch(path):
      path = _hub_snapshot(path)
    else:
      raise ModelPathError(f"{path}: no such file or directory (expected an HF model dir, a Hub "
                           "id in the local cache, a `convert --to_orbax` dir or a training run)")
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise ModelPathError(f"{path}: not a directory (expected a model directory)")
  cfg = os.path.join(path, "config.json")
  if any(n.endswith(".safetensors") or n == INDEX for n in os.listdir(path)):
    if not os.path.isfile(cfg):
      raise ModelPathError(f"{path}: safetensors without a config.json (expected an HF dir)")
    return ModelRef("hf", path, _hf_config(cfg), path)
  meta = os.path.join(path, ORBAX_CONFIG)
  if os.path.isfile(meta) and os.path.isdir(os.path.join(path, ORBAX_PARAMS)):
    config = _hf_config(meta, param_dtype=_read_json(meta).get("torch_dtype") or "float32")
    tok = path if any(_TOKENIZER_FILES.match(n) for n in os.listdir(path)) else None
    return ModelRef("orbax", os.path.join(path, ORBAX_PARAMS), config, tok)
  if step_dir := _step_dir(path):
    return _train_ref(step_dir)
  if os.path.isfile(cfg):
    raise ModelPathError(f"{path}: config.json but no *.safetensors (expected an HF model dir "
                         "with its weights)")
  raise ModelPathError(f"{path}: not a model (expected an HF dir with config.json + "
                       "*.safetensors, a `convert --to_orbax` dir with params/ + hf_config.json, "
                       "or a training run with checkpoints/<step>/state)")


def _ref(path_or_ref: str | os.PathLike[str] | ModelRef) -> ModelRef:
  return path_or_ref if isinstance(path_or_ref, ModelRef) else resolve(path_or_ref)


def base_model_path(path_or_ref: str | os.PathLike[str] | ModelRef) -> str:
  """The absolute path that names exactly this model for `resolve`: the HF dir (a Hub id's
  snapshot), the `--to_orbax` dir, or a training run's step dir (not "latest", which moves)."""
  ref = _ref(path_or_ref)
  return ref.path if ref.kind == "hf" else os.path.dirname(ref.path)


class SafetensorsReader:
  """Reads whole tensors or row ranges of a safetensors dir (sharded or not) with pread."""

  def __init__(self, directory: str):
    index = os.path.join(directory, INDEX)
    if os.path.exists(index):
      try:
        files = sorted(set(_read_json(index)["weight_map"].values()))
      except (KeyError, AttributeError, TypeError) as e:
        raise ModelPathError(f"{index}: unreadable index (no weight_map: {e})") from None
    else:
      files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
      raise ModelPathError(f"{directory}: no *.safetensors files")
    self.entries: dict[str, TensorInfo] = {}
    self.files: dict[str, str] = {}
    self._where: dict[str, tuple[int, int]] = {}  # name -> (fd, absolute data offset)
    self._fds: list[int] = []
    try:
      for file in files:
        self._read_header(os.path.join(directory, file))
    except BaseException:
      self.close()
      raise

  def _read_header(self, path: str) -> None:
    try:
      fd = os.open(path, os.O_RDONLY)
    except OSError as e:
      raise ModelPathError(f"{path}: cannot open ({e.strerror})") from None
    self._fds.append(fd)
    size = os.fstat(fd).st_size
    try:
      (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
      if n > min(size - 8, 100 << 20):
        raise ValueError(f"header length {n} exceeds the file")
      for name, info in json.loads(os.pread(fd, n, 8)).items():
        if name == "__metadata__":
          continue
        begin, end = info["data_offsets"]
        entry = TensorInfo(tuple(info["shape"]), _ST_DTYPES[info["dtype"]])
        if end - begin != entry.nbytes or 8 + n + end > size:
          raise ValueError(f"tensor {name} has bad offsets or the file is truncated")
        self.entries[name], self.files[name] = entry, path
        self._where[name] = (fd, 8 + n + begin)
    except (struct.error, ValueError, KeyError, TypeError) as e:
      raise ModelPathError(f"{path}: not a valid safetensors file ({e})") from None

  def read(self, name: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Rows [lo, hi) along axis 0 (all rows by default; the value for scalars)."""
    entry, (fd, offset) = self.entries[name], self._where[name]
    shape = entry.shape
    hi = (shape[0] if shape else 0) if hi is None else hi
    row = math.prod(shape[1:]) * entry.dtype.itemsize
    buf = np.empty((hi - lo, *shape[1:]) if shape else (), entry.dtype)
    if buf.nbytes and os.preadv(fd, [buf.reshape(-1).view(np.uint8)],
                                offset + lo * row) != buf.nbytes:
      raise ModelPathError(f"{self.files[name]}: {name}: short read (file changed or truncated)")
    return buf

  def close(self) -> None:
    for fd in self._fds:
      os.close(fd)
    self._fds = []


class SafetensorsWriter:
  """Writes safetensors header-first, so each tensor may arrive in row chunks, in plan order."""

  def __init__(self, directory: str, tensors: Sequence[tuple[str, TensorInfo]],
               max_shard_bytes: int):
    self.dir = directory
    os.makedirs(directory, exist_ok=True)
    self._shards: list[list[tuple[str, TensorInfo]]] = [[]]  # at most max_shard_bytes (or 1 tensor)
    size = 0
    for name, info in tensors:
      if self._shards[-1] and size + info.nbytes > max_shard_bytes:
        self._shards.append([])
        size = 0
      self._shards[-1].append((name, info))
      size += info.nbytes
    n = len(self._shards)
    self._files = (["model.safetensors"] if n == 1 else
                   [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
    self._shard_of = {name: i for i, s in enumerate(self._shards) for name, _ in s}
    self._current: tuple[int, Any] = (-1, None)
    if n > 1:
      fileio.write_json(os.path.join(directory, INDEX), {
          "metadata": {"total_size": sum(t.nbytes for s in self._shards for _, t in s)},
          "weight_map": {name: self._files[i] for name, i in self._shard_of.items()}})

  def write(self, name: str, chunk: np.ndarray) -> None:
    """Appends `chunk` (whole tensor or the next rows of it) to tensor `name`."""
    i = self._shard_of[name]
    if self._current[0] != i:
      self.close()
      path = os.path.join(self.dir, self._files[i])
      f = open(path, "wb")  # pylint: disable=consider-using-with  (closed in close())
      os.chmod(path, 0o644)
      header, offset = {"__metadata__": {"format": "pt"}}, 0
      for tensor, info in self._shards[i]:
        header[tensor] = {"dtype": _ST_NAMES[info.dtype], "shape": list(info.shape),
                          "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
      blob = json.dumps(header, separators=(",", ":")).encode()
      blob += b" " * (-len(blob) % 8)
      f.write(struct.pack("<Q", len(blob)) + blob)
      self._current = (i, f)
    self._current[1].write(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8).data)

  def close(self) -> None:
    if self._current[1] is not None:
      self._current[1].close()
    self._current = (-1, None)


def copy_side_files(src: str, dst: str, everything: bool = False) -> None:
  """Copies tokenizer files (or, with `everything`, all files but the weights and their index)
  from the dir or single file `src` into `dst`, mode 0644."""
  paths = [src] if os.path.isfile(src) else [os.path.join(src, n) for n in sorted(os.listdir(src))]
  for path in paths:
    name = os.path.basename(path)
    if os.path.isfile(path) and (name != INDEX and not name.endswith(_WEIGHT_SUFFIXES)
                                 if everything else _TOKENIZER_FILES.match(name)):
      shutil.copyfile(path, os.path.join(dst, name))
      os.chmod(os.path.join(dst, name), 0o644)


def _minimal_tokenizer_config(directory: str, config: LlamaConfig) -> dict[str, Any]:
  """tokenizer_config.json for a tokenizer dir that has none (transformers needs one)."""
  out: dict[str, Any] = {}
  tok_json = os.path.join(directory, "tokenizer.json")
  if os.path.isfile(tok_json):
    out["tokenizer_class"] = "PreTrainedTokenizerFast"
    added = {t["id"]: t["content"] for t in _read_json(tok_json).get("added_tokens", [])}
    for key, token_id in (("bos_token", config.bos_token_id), ("eos_token", config.eos_token_id[0]),
                          ("pad_token", config.pad_token_id), ("unk_token", config.unk_token_id)):
      if token_id in added:
        out[key] = added[token_id]
    if not os.path.exists(os.path.join(directory, "chat_template.jinja")) and (
        "<|start_header_id|>" in added.values()):
      out["chat_template"] = specials.LLAMA3_TEMPLATE
  return out


def write_model_files(directory: str, config: LlamaConfig, dtype: Any,
                      tokenizer_dir: str | None) -> None:
  """config.json, generation_config.json and the tokenizer files of an HF export."""
  fileio.write_json(os.path.join(directory, "config.json"),
                    {**config.to_hf(), "torch_dtype": jnp.dtype(dtype).name})
  gen = {"_from_model_config": True, "bos_token_id": config.bos_token_id,
         "eos_token_id": list(config.eos_token_id)}
  if config.pad_token_id is not None:
    gen["pad_token_id"] = config.pad_token_id
  fileio.write_json(os.path.join(directory, "generation_config.json"), gen)
  if tokenizer_dir:
    copy_side_files(tokenizer_dir, directory)
    if not os.path.exists(os.path.join(directory, "tokenizer_config.json")):
      fileio.write_json(os.path.join(directory, "tokenizer_config.json"),
                        _minimal_tokenizer_config(directory, config))


def _get(tree: Any, path: Sequence[str]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _abstract(config: LlamaConfig) -> Params:
  return jax.eval_shape(init_params, config, jax.random.key(0))


def _check_hf_tensors(config: LlamaConfig, reader: SafetensorsReader, path: str) -> None:
  """Errors naming the tensor (and file) if anything is missing, extra or mis-shaped."""
  wanted = dict(_hf_plan(config, np.dtype(np.float32)))
  for name, info in wanted.items():
    if name not in reader.entries:
      raise ModelPathError(f"tensor {name!r} is missing from {path}")
    if reader.entries[name].shape != info.shape:
      raise ModelPathError(f"tensor {name!r} in {reader.files[name]} has shape "
                           f"{reader.entries[name].shape}, expected {info.shape} from config.json")
  for name, file in reader.files.items():
    tied_head = name == "lm_head.weight" and config.tie_word_embeddings
    if name not in wanted and not tied_head and not hf.IGNORED.match(name):
      raise ModelPathError(f"unexpected tensor {name!r} in {file}")


def read_hf_param(reader: SafetensorsReader, path: hf.Path, num_layers: int,
                  index: tuple[slice, ...] = ()) -> np.ndarray:
  """Param `path` (or its `index` part) assembled from HF tensors: reads the needed row range
  of each tensor, then slices the columns."""
  names = hf.param_to_hf_names(path, num_layers)
  stacked = path[0] == "layers"
  transposed = hf.is_transposed(path)
  layers = range(num_layers)[index[0]] if stacked and index else range(len(names))
  index = index[1:] if stacked else index
  hf_index = tuple(reversed(index)) if transposed else index
  parts = []
  for i in layers:  # every Llama tensor has rows (no scalars)
    rows = hf_index[0] if hf_index else slice(None)
    lo, hi, _ = rows.indices(reader.entries[names[i]].shape[0])
    x = reader.read(names[i], lo, hi)[(slice(None), *hf_index[1:])]
    parts.append(x.T if transposed else x)
  return np.stack(parts) if stacked else parts[0]


def _load_hf(ref: ModelRef, dtype: Any, shardings: Params | None,
             progress: bool) -> tuple[LlamaConfig, Params]:
  with contextlib.closing(SafetensorsReader(ref.path)) as reader:
    _check_hf_tensors(ref.config, reader, ref.path)
    stored = reader.entries["model.embed_tokens.weight"].dtype
    name = jnp.dtype(stored if dtype is None else dtype).name
    if dtype is None and name not in ("float32", "bfloat16", "float16"):
      raise ModelPathError(f"{ref.path}: weights are {name}; pass dtype= to load them as a float "
                           "type")
    config = dataclasses.replace(ref.config, param_dtype=name)
    expected = _abstract(config)
    params: dict = {}
    for p in cli.progress(hf.param_paths(config), desc=f"load {os.path.basename(ref.path)}",
                          enabled=progress):
      if shardings is None:
        params[p] = jnp.asarray(read_hf_param(reader, p, config.num_layers).astype(name))
      else:
        params[p] = jax.make_array_from_callback(
            _get(expected, p).shape, _get(shardings, p),
            lambda idx, p=p: read_hf_param(reader, p, config.num_layers, tuple(idx)).astype(name))
  return config, traverse_util.unflatten_dict(params)


def _load_orbax(ref: ModelRef, dtype: Any, shardings: Params | None) -> tuple[LlamaConfig, Params]:
  name = jnp.dtype(dtype).name if dtype is not None else ref.config.param_dtype
  config = dataclasses.replace(ref.config, param_dtype=name)
  abstract = _abstract(config)
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return config, _partial_restore(ref.path, abstract,
                                  ocp.checkpoint_utils.construct_restore_args(abstract),
                                  "the parameters", ("params",) if ref.kind == "train" else ())


def _partial_restore(path: str, item: Any, args: Any, what: str, key: Sequence[str] = ()) -> Any:
  """The subtree `item` at `key` of the Orbax checkpoint at `path`; ModelPathError naming `what`."""
  for k in reversed(key):
    item, args = {k: item}, {k: args}
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      tree = ckptr.restore(path, args=ocp.args.PyTreeRestore(
          item=item, restore_args=args, partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except  (Orbax raises many kinds)
    first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    raise ModelPathError(f"{path}: cannot restore {what} ({first})") from None
  return _get(tree, key)


def load(path_or_ref: str | os.PathLike[str] | ModelRef, *, dtype: Any = None,
         shardings: Params | None = None, decode: bool = False,
         progress: bool = True) -> tuple[LlamaConfig, Params]:
  """(config, params) of any path form `resolve` accepts. dtype: None keeps the stored dtype
  (config.param_dtype says which). shardings: a pytree of `jax.sharding.Sharding` matching the
  params; each device then reads only its own shard (HF: the rows it owns, then its columns).
  decode=True returns the per-layer layout (`model.unstack_layers`), one stacked array at a time."""
  ref = _ref(path_or_ref)
  if ref.lora is not None:
    config, params = _load_lora_run(ref, dtype, shardings, progress)
  elif ref.kind == "hf":
    config, params = _load_hf(ref, dtype, shardings, progress)
  else:
    config, params = _load_orbax(ref, dtype, shardings)
  return config, unstack_layers(params, consume=True) if decode else params


def load_adapter(path_or_ref: str | os.PathLike[str] | ModelRef
                 ) -> tuple[Params, Params, lora_lib.LoraConfig]:
  """(adapter, extra trainable params, LoraConfig) of a LoRA training run, as host numpy arrays
  (fp32, stacked layout); `extra` is {} unless the run set `model.lora.trainable`."""
  ref = _ref(path_or_ref)
  if ref.lora is None:
    raise ModelPathError(f"{ref.path}: not a LoRA training run (config.json has no "
                         "model.lora.rank > 0)")
  item = {"lora": jax.eval_shape(lambda: lora_lib.init_lora(ref.config, ref.lora,
                                                             jax.random.key(0)))}
  if ref.lora.trainable:
    abstract = _abstract(dataclasses.replace(ref.config, param_dtype="float32"))
    item["extra"] = {k: abstract[k] for k in ref.lora.trainable}
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  restored = _partial_restore(ref.path, item, args, "the LoRA adapter")
  return restored["lora"], restored.get("extra", {}), ref.lora


def _base_ref(ref: ModelRef) -> ModelRef:
  """The base model a LoRA run adapts (its config.json `init_from`)."""
  try:
    return resolve(ref.base)
  except ModelPathError as e:
    raise ModelPathError(f"{ref.path}: its base model {ref.base} (config.json init_from) is "
                         f"unreadable: {e}") from None


def _load_lora_run(ref: ModelRef, dtype: Any, shardings: Params | None,
                   progress: bool) -> tuple[LlamaConfig, Params]:
  """The run's base (in `dtype`, default the run's param_dtype) with its adapter merged in."""
  adapter, extra, lora_cfg = load_adapter(ref)
  config, params = load(_base_ref(ref), dtype=dtype or ref.config.param_dtype, shardings=shardings,
                        progress=progress)
  for k, sub in extra.items():
    params[k] = jax.tree.map(lambda x, p: jnp.asarray(x).astype(p.dtype), sub, params[k])
  return config, lora_lib.merge_lora(config, params, adapter, lora_cfg)


def hf_tensors(config: LlamaConfig, params: Params,
               dtype: Any = jnp.bfloat16) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, tensor in `dtype`) one at a time in HF order; stacked or per-layer params."""
  for p in hf.param_paths(config):
    names = hf.param_to_hf_names(p, config.num_layers)
    if p[0] != "layers":
      xs = [_get(params, p)]
    elif is_per_layer(params):
      xs = (_get(params[f"layers_{i}"], p[1:]) for i in range(len(names)))
    else:  # one host copy of the stack, served a layer at a time
      xs = np.asarray(jax.device_get(_get(params, p))).astype(dtype)
    for name, x in zip(names, xs):
      x = np.asarray(jax.device_get(x)).astype(dtype, copy=False)
      yield name, np.ascontiguousarray(x.T if hf.is_transposed(p) else x)


def _hf_plan(config: LlamaConfig, dtype: np.dtype) -> list[tuple[str, TensorInfo]]:
  expected = _abstract(config)
  plan = []
  for p in hf.param_paths(config):
    shape = tuple(_get(expected, p).shape[1 if p[0] == "layers" else 0:])
    shape = shape[::-1] if hf.is_transposed(p) else shape
    plan += [(n, TensorInfo(shape, dtype)) for n in hf.param_to_hf_names(p, config.num_layers)]
  return plan


def save_hf(path: str, config: LlamaConfig, params: Params, *, dtype: Any = jnp.bfloat16,
            tokenizer_dir: str | None = None, overwrite: bool = False,
            max_shard_bytes: int = 5 * 1024**3, progress: bool = True) -> None:
  """Writes an HF LlamaForCausalLM dir (config.json with pad/unk ids, generation_config.json,
  safetensors, the tokenizer files of `tokenizer_dir`, a dir or file), complete or not at all; an
  existing `path` is an error unless `overwrite`. Single-process (one stacked param at a time)."""
  dtype = np.dtype(jnp.dtype(dtype))
  plan = _hf_plan(config, dtype)
  with fileio.atomic_dir(path, overwrite=overwrite) as tmp:
    writer = SafetensorsWriter(tmp, plan, max_shard_bytes)
    for name, x in cli.progress(hf_tensors(config, params, dtype), total=len(plan),
                                desc=f"save {os.path.basename(os.path.abspath(path))}",
                                enabled=progress):
      writer.write(name, x)
    writer.close()
    write_model_files(tmp, config, dtype, tokenizer_dir)


def save_orbax(path: str, config: LlamaConfig, params: Params, *, overwrite: bool = False) -> None:
  """Writes DIR/params (Orbax, any sharding) + DIR/hf_config.json, the layout `resolve` reads
  as kind "orbax". Appears complete or not at all."""
  if is_per_layer(params):
    raise ValueError("save_orbax: pass the stacked layout (load without decode=True)")
  with fileio.atomic_dir(path, overwrite=overwrite) as tmp:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, ORBAX_PARAMS), params)
    fileio.write_json(os.path.join(tmp, ORBAX_CONFIG),
                      {**config.to_hf(), "torch_dtype": config.param_dtype})


class OrbaxTensors:
  """An orbax/train checkpoint's params seen as HF tensors (names, shapes, HF orientation). Each
  stacked parameter is restored whole (partial restore) and served layer by layer: read tensors in
  `hf.param_paths` order so that each is restored only once."""

  def __init__(self, ref: ModelRef):
    self._ref = ref
    self._prefix = ("params",) if ref.kind == "train" else ()  # a training state's params
    try:
      with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(ref.path)
    except Exception as e:  # pylint: disable=broad-except  (Orbax raises many kinds)
      raise ModelPathError(f"{ref.path}: unreadable Orbax checkpoint ({e})") from None
    tree = getattr(meta, "item_metadata", meta)
    tree = _get(getattr(tree, "tree", tree), self._prefix)
    stored = traverse_util.flatten_dict(dict(tree))
    self.entries: dict[str, TensorInfo] = {}
    for name, info in _hf_plan(ref.config, np.dtype(np.float32)):
      p, _ = hf.hf_to_param_name(name)
      if p not in stored:
        raise ModelPathError(f"{ref.path}: parameter {'/'.join(p)} is missing")
      self.entries[name] = TensorInfo(info.shape, np.dtype(stored[p].dtype))
    self._cache: tuple[hf.Path, np.ndarray] | None = None

  def read(self, name: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Rows [lo, hi) of HF tensor `name`."""
    p, layer = hf.hf_to_param_name(name)
    if self._cache is None or self._cache[0] != p:
      self._cache = None
      x = _partial_restore(self._ref.path, 0, ocp.RestoreArgs(restore_type=np.ndarray),
                           "/".join(p), self._prefix + p)
      self._cache = (p, np.asarray(x))
    x = self._cache[1] if layer is None else self._cache[1][layer]
    return np.ascontiguousarray((x.T if hf.is_transposed(p) else x)[lo:hi])

  def close(self) -> None:
    self._cache = None


def hf_lora_terms(adapter: Params) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
  """(HF tensor name, A [in, r], B [r, out]) per layer of each kernel a stacked adapter adapts."""
  for path, a in traverse_util.flatten_dict(adapter).items():
    if path[-1] == "lora_a":
      b = lora_lib.adapter_leaf(adapter, (*path[:-1], "lora_b"))
      for layer, name in enumerate(hf.param_to_hf_names((*path[:-1], "kernel"), a.shape[0])):
        yield name, a[layer], b[layer]


class LoraTensors:
  """A LoRA run seen as HF tensors of its merged model, streamed: each read takes the base's rows
  and adds the adapted kernel's update (this layer's fp32 `lora_delta`, cast to the run's param
  dtype as `merge_lora` does); only the adapter and one layer's update are held in memory."""

  def __init__(self, ref: ModelRef):
    adapter, extra, lora_cfg = load_adapter(ref)
    self._base = open_tensors(_base_ref(ref))
    self._dtype = np.dtype(jnp.dtype(ref.config.param_dtype))
    self._scale = lora_cfg.scale
    self.entries = {n: TensorInfo(e.shape, self._dtype) for n, e in self._base.entries.items()}
    self._terms = {name: (a, b) for name, a, b in hf_lora_terms(adapter)}
    self._extra = {}  # fully trained tensors replace the base's, in HF orientation
    for path, x in traverse_util.flatten_dict(extra).items():
      (name,) = hf.param_to_hf_names(path, ref.config.num_layers)
      self._extra[name] = np.asarray(x.T if hf.is_transposed(path) else x).astype(self._dtype)
    self._delta: tuple[str, np.ndarray] | None = None

  def read(self, name: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Rows [lo, hi) of merged HF tensor `name`."""
    if name in self._extra:
      return self._extra[name][lo:hi]
    x = self._base.read(name, lo, hi)
    if name not in self._terms:
      return x.astype(self._dtype)
    if self._delta is None or self._delta[0] != name:
      a, b = self._terms[name]
      self._delta = (name, np.asarray(lora_lib.lora_delta(a, b, self._scale)).T)
    return (x.astype(np.float32) + self._delta[1][lo:hi]).astype(self._dtype)

  def close(self) -> None:
    self._base.close()
    self._delta = None


def open_tensors(path_or_ref: str | os.PathLike[str] | ModelRef
                 ) -> SafetensorsReader | OrbaxTensors | LoraTensors:
  """A per-tensor reader with HF tensor names (`.entries`, `.read(name, lo, hi)`, `.close()`)."""
  ref = _ref(path_or_ref)
  if ref.lora is not None:
    return LoraTensors(ref)
  return SafetensorsReader(ref.path) if ref.kind == "hf" else OrbaxTensors(ref)


def hf_order(names: Iterable[str]) -> list[str]:
  """Tensor names in param order (each stacked parameter's layers together), others last."""

  def key(name: str) -> tuple[int, int, str]:
    try:
      p, layer = hf.hf_to_param_name(name)
    except KeyError:
      return (len(hf.PARAM_ORDER), 0, name)
    return (hf.PARAM_ORDER.index(p), layer or 0, name)
  return sorted(names, key=key)
