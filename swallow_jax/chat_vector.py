r"""Chat vector over checkpoints, streamed: output = target + s * (instruct - base), plus
c * (alpha / r) * B @ A per adapted kernel of each `--adapter` (a PEFT LoRA directory).

    python -m swallow_jax.chat_vector --base=meta-llama/Meta-Llama-3-8B \
        --instruct=meta-llama/Meta-Llama-3-8B-Instruct --target=runs/cpt --output=Swallow-8B-cv
    python -m swallow_jax.chat_vector ... --adapter=runs/sft_lora_peft --adapter_scale=1.0

Inputs: any mix of the path kinds `model_io.resolve` accepts, read as HF tensors; the output is an
HF dir in `model_io.save_hf`'s layout. Everything is checked before anything is written, then
the inputs stream in ~1 MiB chunks. Options, memory and figures: docs/chat_vector.md.
"""

from collections.abc import Sequence
import functools
import math
import os
import re
from typing import Any

from absl import flags
import numpy as np
from safetensors import SafetensorError

from swallow_jax import cli
from swallow_jax import fileio
from swallow_jax import task_arithmetic as ta
from swallow_jax import tokenizer as tokenizer_lib
from swallow_jax.data import chat
from swallow_jax.model import hf
from swallow_jax.model import io as model_io
from swallow_jax.model import lora
from swallow_jax.task_arithmetic import LLAMA3_CHAT_TOKEN_IDS, LLAMA3_CHAT_TOKENS, ChatVectorError

__all__ = ["merge_checkpoints", "ChatVectorError", "LLAMA3_CHAT_TOKEN_IDS"]


def _excluded(name: str, exclude: Sequence[str]) -> bool:
  try:
    path, _ = hf.hf_to_param_name(name)
    names = (name, "/".join(path))
  except KeyError:
    names = (name,)
  return any(re.search(p, n) for p in exclude for n in names)


def _plan(t, b, i, exclude, protect, allow_vocab_mismatch):
  """Validates all inputs; returns {name: (axis, overlap, keep)} of the tensors to merge."""
  if b is None:  # adapters only
    return {}
  for role, reader in (("base", b), ("instruct", i)):
    extra = sorted(n for n in reader.entries if n not in t.entries and not _excluded(n, exclude))
    if extra:
      raise ChatVectorError(f"{extra[0]}: in --{role} but not in --target "
                            f"({len(extra)} such tensors)")
  work = {}
  for name, entry in t.entries.items():
    if _excluded(name, exclude) or not ta.is_float(entry.dtype):
      continue
    for role, reader in (("base", b), ("instruct", i)):
      if name not in reader.entries:
        raise ChatVectorError(f"{name}: missing from --{role} (use --exclude to skip it)")
    shapes = {"base": b.entries[name].shape, "instruct": i.entries[name].shape}
    work[name] = ta.plan_rows(name, entry.shape, shapes, protect, allow_vocab_mismatch)
  return work


def _load_adapters(paths: Sequence[str], scales: Sequence[float], ref: model_io.ModelRef,
                   t) -> dict[str, list[tuple[Any, Any, float]]]:
  """Reads and checks each PEFT adapter against the target -> {HF tensor name: [(A [in, r],
  B [r, out], adapter_scale * alpha / r), ...]} in the order given."""
  terms = {}
  for path, scale in zip(paths, scales):
    if not os.path.isfile(os.path.join(path, lora.CONFIG_FILE)):
      raise ChatVectorError(f"--adapter={path}: no {lora.CONFIG_FILE} (not a PEFT adapter dir)")
    try:
      adapter, cfg = lora.load_peft(path, ref.config)
    except KeyError as e:  # a key PEFT always writes
      raise ChatVectorError(f"--adapter={path}: {lora.CONFIG_FILE} has no key {e}") from None
    except (OSError, ValueError, TypeError, SafetensorError) as e:
      raise ChatVectorError(f"--adapter={path}: {e}") from None
    for name, a, b in model_io.hf_lora_terms(adapter):
      want = (b.shape[-1], a.shape[-2])
      entry = t.entries.get(name)
      if entry is None or entry.shape != want or not ta.is_float(entry.dtype):
        got = "missing" if entry is None else f"{entry.shape} {entry.dtype}"
        raise ChatVectorError(f"{name}: --adapter={path} adapts it as {want} but the target's "
                              f"is {got}")
      terms.setdefault(name, []).append((a, b, scale * cfg.scale))
  return terms


def _write_side_files(ref: model_io.ModelRef, out: str, dtype: np.dtype | None) -> None:
  if ref.kind != "hf":
    model_io.write_model_files(out, ref.config, dtype or np.dtype(ref.config.param_dtype),
                               ref.tokenizer_dir)
    return
  model_io.copy_side_files(ref.path, out, everything=True)  # config.json included, as it is
  if dtype is not None:
    path = os.path.join(out, "config.json")
    config = fileio.read_json(path)
    config.update({key: str(dtype) for key in ("torch_dtype", "dtype") if key in config})
    fileio.write_json(path, config)


def merge_checkpoints(base: str | None, instruct: str | None, target: str, output: str,
                      scales: Sequence[float] = (0.5,), *, adapters: Sequence[str] = (),
                      adapter_scales: Sequence[float] | None = None, exclude: Sequence[str] = (),
                      protect_token_ids: Sequence[int] = (), allow_vocab_mismatch: bool = False,
                      dtype: str | None = None, max_shard_bytes: int = 5 * 10**9,
                      chunk_elems: int = 1 << 18, progress: bool = True) -> list[str]:
  """Streams target + s * (instruct - base) + sum_j c_j * merged LoRA delta_j over checkpoints;
  returns the output dirs: `output` for one scale, `output/scale_<s>` each (one read pass) for
  several. `adapters` are PEFT LoRA dirs for the target's architecture, each adding
  `adapter_scales[j] * (alpha / r) * B @ A` (default 1) to its kernels after the chat vector, bit
  for bit as `lora.merge_lora` does; `exclude` concerns the chat vector only. base and instruct
  may both be None (adapters only; `scales` is then unused)."""
  if os.path.exists(output):
    raise ChatVectorError(f"--output={output} already exists; remove it or pick another path")
  if (base is None) != (instruct is None) or (base is None and not adapters):
    raise ChatVectorError("give --base and --instruct (a chat vector), --adapter, or both")
  if base is None:
    scales = (1.0,)
  if not scales or len({f"{s:g}" for s in scales}) != len(scales):
    raise ChatVectorError(f"--scale={','.join(map(str, scales))}: give distinct scales")
  adapter_scales = [1.0] * len(adapters) if adapter_scales is None else list(adapter_scales)
  if len(adapter_scales) != len(adapters):
    raise ChatVectorError(f"{len(adapters)} adapters but {len(adapter_scales)} adapter scales")
  if dtype and dtype not in cli.DTYPES:
    raise ChatVectorError(f"--dtype={dtype}: expected float32, bfloat16 or float16")
  out_dtype = np.dtype(dtype) if dtype else None  # "bfloat16": ml_dtypes, which model_io imports
  readers, refs = [], {}
  try:
    for role, path in (("target", target), ("base", base), ("instruct", instruct)):
      if path is not None:
        try:
          refs[role] = model_io.resolve(path)
          readers.append(model_io.open_tensors(refs[role]))
        except model_io.ModelPathError as e:
          raise ChatVectorError(f"{role} --{role}={path}: {e}") from None
    t, b, i = readers + [None] * (3 - len(readers))
    work = _plan(t, b, i, exclude, protect_token_ids, allow_vocab_mismatch)
    adapted = _load_adapters(adapters, adapter_scales, refs["target"], t)
    plan = [(n, model_io.TensorInfo(t.entries[n].shape, out_dtype if out_dtype is not None
                                    and ta.is_float(t.entries[n].dtype) else t.entries[n].dtype))
            for n in model_io.hf_order(t.entries)]
    multi = len(scales) > 1
    with fileio.atomic_dir(output) as tmp:
      outs = [os.path.join(tmp, f"scale_{s:g}") if multi else tmp for s in scales]
      writers = [model_io.SafetensorsWriter(out, plan, max_shard_bytes) for out in outs]
      _stream(t, b, i, plan, work, adapted, scales, writers, chunk_elems, progress)
      for out, writer in zip(outs, writers):
        writer.close()
        _write_side_files(refs["target"], out, out_dtype)
  except model_io.ModelPathError as e:
    raise ChatVectorError(str(e)) from None
  finally:
    for reader in readers:
      reader.close()
  return [os.path.join(output, f"scale_{s:g}") for s in scales] if multi else [output]


def _stream(t, b, i, plan, work, adapted, scales, writers, chunk_elems, progress):
  with cli.progress(total=sum(math.prod(e.shape) for e in t.entries.values()), unit="param",
                    unit_scale=True, desc="chat vector", enabled=progress) as bar:
    for name, out_entry in plan:
      shape = t.entries[name].shape
      step = max(1, chunk_elems // max(1, math.prod(shape[1:])))
      # One layer's kernel updates in HF orientation [out, in]; a chunk takes its rows.
      deltas = [np.asarray(lora.lora_delta(lora_a, lora_b, c)).T
                for lora_a, lora_b, c in adapted.get(name, ())]
      dtype = np.dtype(np.float32) if deltas else out_entry.dtype
      for lo in range(0, shape[0], step) if shape else [0]:
        hi = min(lo + step, shape[0]) if shape else 0
        tgt = t.read(name, lo, hi)
        if name not in work:
          outs = [tgt.astype(dtype)] * len(scales)
        else:
          axis, overlap, keep = work[name]
          # Along a leading token axis only rows below the overlap exist in base/instruct.
          v_hi = min(hi, overlap) if axis == 0 else hi
          v_lo = min(lo, v_hi)
          d = ta.diff(i.read(name, v_lo, v_hi), b.read(name, v_lo, v_hi))
          keep_chunk = keep[lo:hi] if axis == 0 and keep is not None else keep
          outs = [ta.apply(tgt, [d], [s], keep_chunk, axis, dtype) for s in scales]
        if deltas:  # each adapter as merge_lora adds it: fp32 sums in order, one final cast
          outs = [functools.reduce(lambda x, d: x + d[lo:hi], deltas, o).astype(out_entry.dtype)
                  for o in outs]
        for writer, out in zip(writers, outs):
          writer.write(name, out)
        bar.update(max(1, math.prod(tgt.shape)))


def protected_ids(spec: str, target: str) -> tuple[int, ...]:
  """Token ids for `--protect_tokens`: comma-separated ids; `chat_template`, the special tokens
  the target's own chat template writes; or `llama3_chat`, Llama 3's header and end-of-turn
  tokens, looked up by their strings in the target's vocabulary."""
  if not spec:
    return ()
  if spec in ("chat_template", "llama3_chat"):
    if not (tok_dir := model_io.resolve(target).tokenizer_dir):
      raise ChatVectorError(f"--protect_tokens={spec}: no tokenizer files with --target={target}")
    tok = tokenizer_lib.load_tokenizer(tok_dir)
    if spec == "chat_template":
      return chat.chat_special_ids(tok)
    try:
      return tuple(tok.token_to_id(t) for t in LLAMA3_CHAT_TOKENS)
    except (KeyError, ValueError) as e:
      raise ChatVectorError(f"--protect_tokens=llama3_chat: {e} in {tok_dir}") from None
  try:
    return tuple(int(x) for x in spec.split(","))
  except ValueError:
    raise ChatVectorError(f"--protect_tokens={spec}: expected comma-separated token ids, "
                          "'chat_template' or 'llama3_chat'") from None


def _floats(name: str, example: str) -> list[float]:
  value = flags.FLAGS[name].value
  try:
    return [float(s) for s in value.split(",")]
  except ValueError:
    raise cli.UsageError(f"--{name}={value}: expected numbers like {example}") from None


def main(argv: Sequence[str]) -> None:
  """Command-line entry point (absl, under swallow_jax.cli)."""
  del argv
  f = flags.FLAGS
  for name in ("target", "output"):
    if not getattr(f, name):
      raise cli.UsageError(f"--{name} is required")
  if bool(f.base) != bool(f.instruct) or not (f.base or f.adapter):
    raise cli.UsageError("give --base and --instruct (a chat vector), --adapter, or both")
  if not f.base and f["scale"].present:
    raise cli.UsageError("--scale weighs the chat vector: it needs --base and --instruct")
  scales = _floats("scale", "0.5 or 0.3,0.5,1.0")
  adapter_scales = _floats("adapter_scale", "1.0 or 1.0,0.5 (one per --adapter)")
  if len(adapter_scales) == 1:
    adapter_scales *= len(f.adapter)
  if len(adapter_scales) != len(f.adapter):
    raise cli.UsageError(f"--adapter_scale={f.adapter_scale}: give one scale, or one per "
                         f"--adapter ({len(f.adapter)})")
  for pattern in f.exclude:
    try:
      re.compile(pattern)
    except re.error as e:
      raise cli.UsageError(f"--exclude={pattern}: bad regular expression ({e})") from None
  outs = merge_checkpoints(
      f.base or None, f.instruct or None, f.target, f.output, scales, adapters=f.adapter,
      adapter_scales=adapter_scales, exclude=f.exclude,
      protect_token_ids=protected_ids(f.protect_tokens, f.target),
      allow_vocab_mismatch=f.allow_vocab_mismatch, dtype=f.dtype or None,
      max_shard_bytes=int(f.max_shard_gb * 1e9), progress=not f.quiet)
  if f.json:
    cli.print_json({"outputs": outs, "scales": scales if f.base else [],
                    "adapters": list(f.adapter), "adapter_scales": adapter_scales})
  else:
    print("\n".join(outs))


if __name__ == "__main__":
  flags.DEFINE_string("base", None, "Base model the vector starts from (e.g. Llama 3 8B): HF dir, "
                      "Hub id in the local cache, convert --to_orbax dir or training run.")
  flags.DEFINE_string("instruct", None, "Instruction-tuned model (e.g. Llama 3 8B Instruct); "
                      "chat vector = instruct - base.")
  flags.DEFINE_string("target", None, "Model that receives the vector (e.g. Swallow 8B after "
                      "continual pretraining); its config and tokenizer files are copied.")
  flags.DEFINE_string("output", None, "New HF directory for the result (must not exist).")
  flags.DEFINE_string("scale", "0.5", "Weight of the vector; a comma list (0.3,0.5,1.0) writes "
                      "OUTPUT/scale_0.3, ... in one pass.")
  flags.DEFINE_multi_string("adapter", [], "PEFT LoRA dir (adapter_config.json + "
                            "adapter_model.safetensors) for the target's architecture, merged "
                            "as well: + ADAPTER_SCALE * (lora_alpha / r) * B @ A per adapted "
                            "kernel. Repeatable; without --base/--instruct only adapters merge.")
  flags.DEFINE_string("adapter_scale", "1.0", "Weight of each --adapter: one number for all, or "
                      "a comma list, one per --adapter.")
  flags.DEFINE_multi_string("exclude", [], "Regex (re.search) of tensor names or param paths "
                            "left as in the target, e.g. 'embed_tokens|lm_head'. Repeatable.")
  flags.DEFINE_string("protect_tokens", "", "Token rows (embedding / LM head) kept as in the "
                      "target: ids '128006,128007,128009', 'chat_template' (the special tokens "
                      "of the target's chat template) or 'llama3_chat'.")
  flags.DEFINE_bool("allow_vocab_mismatch", False, "If vocabulary sizes differ, apply the "
                    "vector to the overlapping rows only (otherwise an error).")
  flags.DEFINE_enum("dtype", None, cli.DTYPES, "Output dtype (default: each tensor keeps the "
                    "target's dtype). Arithmetic is always fp32.")
  flags.DEFINE_float("max_shard_gb", 5.0, "Maximum size of one output safetensors shard.")
  flags.DEFINE_bool("json", False, "Print one JSON object (output dirs, scales, adapters).")
  flags.DEFINE_bool("quiet", False, "No progress bar.")
  cli.run(main, prog="chat_vector")
