"""Throughput and MFU, and the writers for metrics.jsonl, TensorBoard and the progress line.

FLOPs per token as MaxText counts them, for full training and LoRA steps (docs/training.md, "MFU");
MFU is null on CPU or an accelerator not in PEAK_FLOPS.
"""

from collections.abc import Mapping
import hashlib
import json
import math
import os
from typing import Any

from flax import traverse_util
import numpy as np

from swallow_jax import fileio
from swallow_jax.model import lora as lora_lib

# (substring of jax.Device.device_kind, peak dense bf16 FLOP/s per device), most specific first.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
    ("B200", 2250e12), ("A100", 312e12),
    ("TPU v6", 918e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),  # v6e: 'TPU v6 lite'
    ("TPU v5", 459e12), ("TPU v4", 275e12),  # v5p: 'TPU v5' / 'TPU v5p'
)


def peak_flops_per_device(device_kind: str) -> float | None:
  """Peak dense bf16 FLOP/s for a device kind, or None (CPU, unknown accelerators)."""
  return next((flops for key, flops in PEAK_FLOPS if key.lower() in device_kind.lower()), None)


def flops_per_token(model_cfg: Any, seq_len: int, lora_cfg: Any = None) -> float:
  """Training FLOPs per token (forward + backward), MaxText convention, of full training or (with
  `lora_cfg.rank` > 0) of a LoRA step; see the module docstring."""
  d, f, v, l = (model_cfg.hidden_size, model_cfg.intermediate_size, model_cfg.vocab_size,
                model_cfg.num_layers)
  h, kv, dh = model_cfg.num_heads, model_cfg.num_kv_heads, model_cfg.head_dim
  matmul_params = l * (d * (h + 2 * kv) * dh + h * dh * d + 3 * d * f) + d * v
  attention = 6.0 * l * seq_len * h * dh
  if lora_cfg is None or not lora_cfg.rank:
    return 6.0 * matmul_params + attention
  dims = lora_lib.projection_dims(model_cfg)
  adapter = l * lora_cfg.rank * sum(sum(dims[t]) for t in lora_cfg.targets)
  head_grad = 2.0 * d * v if "lm_head" in lora_cfg.trainable else 0.0
  return 4.0 * matmul_params + head_grad + 6.0 * adapter + attention


def mfu(tokens_per_sec: float, flops_token: float, num_devices: int,
        peak_per_device: float | None) -> float | None:
  """Model FLOPs utilization of the mesh, or None without a known peak or a finite rate."""
  if not peak_per_device or not math.isfinite(tokens_per_sec):
    return None
  return tokens_per_sec * flops_token / (num_devices * peak_per_device)


class MetricsWriter:
  """Appends one JSON line per logged step to `filename` (first cut back to `start_step`, as on
  resume); mirrors scalars to TensorBoard (WORKDIR/tensorboard/, when `tensorboard`) and Weights &
  Biases (when `wandb_project`). Only process 0 writes (`enabled`)."""

  def __init__(self, workdir: str, start_step: int, enabled: bool = True,
               filename: str = "metrics.jsonl", *, tensorboard: bool = True,
               wandb_project: str = "", run_config: Mapping[str, Any] | None = None):
    self.enabled = enabled
    self.path = os.path.join(workdir, filename)
    self._tb = self._wandb = None
    if not enabled:
      return
    truncate_jsonl(self.path, start_step)
    self._file = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    if tensorboard:
      import tensorboardX  # pylint: disable=g-import-not-at-top  (only the writing process)
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                            purge_step=start_step + 1, flush_secs=30)
    if wandb_project:
      import wandb  # pylint: disable=g-import-not-at-top  (optional dependency)
      # One W&B run per workdir: a resume continues it.
      run_id = hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]
      self._wandb = wandb.init(project=wandb_project, dir=workdir, id=run_id, resume="allow",
                               config=dict(run_config or {}))

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    """One record for `step`: a JSON line, and the finite scalars to TensorBoard / W&B."""
    if not self.enabled:
      return
    self._file.write(json.dumps({"step": int(step), **_jsonable(values)}) + "\n")
    self._file.flush()
    self.mirror(step, values)

  def mirror(self, step: int, values: Mapping[str, Any]) -> None:
    """The finite scalars of `values` (nested keys joined by "/") to TensorBoard / W&B only."""
    flat = traverse_util.flatten_dict(_jsonable(values), sep="/")
    scalars = {k: v for k, v in flat.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, step)
    if self._wandb is not None:
      self._wandb.log(scalars, step=int(step))

  def close(self) -> None:
    """Flushes and closes the file and the writers."""
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()
      if self._wandb is not None:
        self._wandb.finish()


def truncate_jsonl(path: str, last_step: int) -> None:
  """Drops lines whose 'step' is beyond `last_step` (and a torn last line from a kill)."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f, fileio.atomic_file(path) as out:
    for line in f:
      try:
        if json.loads(line)["step"] <= last_step:
          out.write(line if line.endswith("\n") else line + "\n")
      except (ValueError, KeyError, TypeError):
        continue


def _jsonable(v: Any) -> Any:
  if isinstance(v, Mapping):
    return {k: _jsonable(x) for k, x in v.items()}
  if isinstance(v, (np.ndarray, np.generic)):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/inf literals.
  return v


def progress_line(step: int, num_steps: int, m: Mapping[str, Any], eta_s: float | None) -> str:
  """'step 120/300  loss 3.2145  lr 1.20e-04  gnorm 0.532  12.3k tok/s  mfu 41.2%  eta 1m02s'."""
  parts = [f"step {step}/{num_steps}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.2e}",
           f"gnorm {m['grad_norm']:.3f}", f"{_si(m['tokens_per_sec'])} tok/s"]
  if m.get("mfu") is not None:
    parts.append(f"mfu {100 * m['mfu']:.1f}%")
  if eta_s is not None:
    parts.append(f"eta {_duration(eta_s)}")
  return "  ".join(parts)


def _si(x: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= scale:
      return f"{x / scale:.1f}{unit}"
  return f"{x:.0f}"


def _duration(s: float) -> str:
  h, rem = divmod(int(s), 3600)
  return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"
