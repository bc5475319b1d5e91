"""The training loop: `run(config, workdir)` (CPT and SFT), used by the CLI and the recipe runner.

Start-up picks one of three ways to get the train state:
  resume     DIR/checkpoints has a step: params, optimizer, step, RNG and data position from it;
  init_from  an HF directory or an Orbax checkpoint: weights only, fresh optimizer, step 0;
  scratch    random init (config.train.seed).
Then it steps until config.train.num_steps, logging metrics, saving checkpoints every N steps /
M minutes / on SIGTERM, and stopping with NonFiniteLossError on a NaN/inf loss (before any save
of the bad state, so the last checkpoint stays good).

Multi-host: every process runs this same loop. Each reads the data shards of the batch rows its
devices hold (swallow_jax.train.data) and the global batch is assembled from them; save and stop
decisions are agreed between processes; only process 0 writes metrics and config.json.
"""

from collections.abc import Mapping
import json
import logging
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from swallow_jax import checkpoint, config_utils, parallel
from swallow_jax.model import param_logical_axes
from swallow_jax.train import data as data_lib
from swallow_jax.train import metrics as metrics_lib
from swallow_jax.train import optimizer as optimizer_lib
from swallow_jax.train import step as step_lib


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN/inf; the run stopped without saving that state."""


class _Preemption:
  """Turns SIGTERM (TPU/cloud preemption, SLURM time limit) into a flag the loop checks."""

  def __init__(self):
    self.flag = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: saving a checkpoint after this step, then exiting")
    self.flag = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _global_batch(local: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding,
                  global_batch: int) -> dict:
  """The global batch from each process's rows (its data shards, in row order)."""
  return {k: jax.make_array_from_process_local_data(
              sharding, np.asarray(local[k]), (global_batch, *local[k].shape[1:]))
          for k in step_lib.BATCH_KEYS}


def _load_init(config: ml_collections.ConfigDict, abstract_params: Any) -> Any:
  """Weights from config.init_from (HF dir or Orbax checkpoint) onto the target shardings."""
  path = config.init_from
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.init_from={path!r} does not exist (an HF model directory "
                            "or an Orbax checkpoint/workdir)")
  if config_utils.hf_config_path(path):
    from swallow_jax.model import hf  # pylint: disable=g-import-not-at-top
    shardings = jax.tree.map(lambda a: a.sharding, abstract_params)
    dtype = jax.tree.leaves(abstract_params)[0].dtype
    _, params = hf.load_hf(path, dtype=dtype, shardings=shardings)
    logging.info("initialized weights from HF checkpoint %s", path)
    return params
  return checkpoint.restore_params(path, abstract_params)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per `config`, writing into `workdir`; resumes if `workdir` holds a checkpoint.

  Returns {'step', 'loss', 'preempted', 'params', 'model_config', 'workdir'}. Raises
  NonFiniteLossError on NaN/inf, ValueError on bad configs.
  """
  config_utils.validate(config)
  parallel.initialize()
  os.makedirs(workdir, exist_ok=True)
  model_cfg = config_utils.model_config(config)
  seq_len = int(config.data.seq_len)
  global_batch = int(config.data.global_batch_size)
  num_steps = int(config.train.num_steps)
  accum = int(config.train.get("grad_accum_steps", 1))
  shards = data_lib.num_shards(config.data, jax.process_count())
  if global_batch % shards:
    raise ValueError(f"data.global_batch_size={global_batch} must be divisible by "
                     f"data.num_shards={shards}")
  if global_batch % (jax.process_count() * accum):
    raise ValueError(f"data.global_batch_size={global_batch} must be divisible by "
                     f"process_count x grad_accum_steps = {jax.process_count()} x {accum}")
  if seq_len > model_cfg.max_position_embeddings:
    raise ValueError(f"data.seq_len={seq_len} exceeds the model's max_position_embeddings="
                     f"{model_cfg.max_position_embeddings}")

  mesh = parallel.make_mesh(config.get("mesh", {}))
  tx, lr = optimizer_lib.make_optimizer(config.optimizer)
  seed = int(config.train.get("seed", 0))
  is_main = jax.process_index() == 0

  local_shards = parallel.local_batch_shards(parallel.batch_sharding(mesh), global_batch, shards)
  data_iter = data_lib.make_iterator(
      config.data, seq_len=seq_len, global_batch=global_batch, shards=shards,
      local_shards=local_shards, seed=int(config.data.get("shuffle_seed", seed)))

  with parallel.mesh_context(mesh):
    abstract = jax.eval_shape(lambda: step_lib.init_state(model_cfg, tx, seed))
    param_sh = parallel.param_shardings(abstract["params"], param_logical_axes(model_cfg), mesh)
    parallel.check_sharded(abstract["params"], param_sh, mesh)
    shardings = step_lib.state_shardings(abstract, tx, param_sh, mesh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, shardings)

    mngr = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), config.get("checkpoint", {}))
    restored = checkpoint.restore_latest(mngr, abstract, data_iter)
    if restored is not None:
      start, state = restored
      logging.info("resumed from %s/checkpoints step %d", workdir, start)
    elif config.get("init_from"):
      start = 0
      params = _load_init(config, abstract["params"])
      state = jax.jit(lambda p: step_lib.state_from_params(p, tx, seed),
                      out_shardings=shardings, donate_argnums=0)(params)
    else:
      start = 0
      state = step_lib.jit_init(model_cfg, tx, seed, shardings)()

    n_params = sum(math.prod(a.shape) for a in jax.tree.leaves(abstract["params"]))
    logging.info("model %s: %.2fM parameters; mesh %s; %.1f%% of parameter bytes per device",
                 config.model.get("preset") or "from init_from", n_params / 1e6,
                 parallel.describe(mesh),
                 100 * parallel.shard_fraction(abstract["params"], param_sh))
    if is_main:
      with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config_utils.resolved_dict(config, model_cfg), f, indent=2)

    step_fn = step_lib.jit_train_step(
        step_lib.make_train_step(model_cfg, tx, lr, **step_lib.step_options(config.train),
                                 param_shardings=param_sh),
        shardings, mesh)
    return _loop(config, workdir, model_cfg, mesh, mngr, data_iter, shards, step_fn, state,
                 start, num_steps, seq_len, global_batch)


def _loop(config, workdir, model_cfg, mesh, mngr, data_iter, shards, step_fn, state, start,
          num_steps, seq_len, global_batch) -> dict[str, Any]:
  is_main = jax.process_index() == 0
  log_every = max(1, int(config.train.get("log_every", 1)))
  eval_every = int(config.get("eval", {}).get("every_steps", 0) or 0)
  policy = checkpoint.SavePolicy(config.get("checkpoint", {}))
  writer = metrics_lib.MetricsWriter(workdir, start, enabled=is_main)
  eval_writer = metrics_lib.MetricsWriter(workdir, start, enabled=is_main and eval_every > 0,
                                          filename="eval.jsonl")
  flops_token = metrics_lib.flops_per_token(model_cfg, seq_len)
  peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind)
  batch_sharding = parallel.batch_sharding(mesh)
  tokens_per_step = global_batch * seq_len
  preemption = _Preemption()
  clock = {"step": start, "time": time.perf_counter(), "first": None}
  last = {"loss": None}
  evaluator = _Evaluator(config, model_cfg) if eval_every else None

  def handle(done: int, device_metrics: dict, source_tokens: dict) -> None:
    m = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
      mngr.wait_until_finished()
      good = mngr.latest_step()
      raise NonFiniteLossError(
          f"non-finite values at step {done} (loss={m['loss']}, grad_norm={m['grad_norm']}, "
          f"param_norm={m['param_norm']}): stopped without saving that state; last good "
          f"checkpoint: {'none' if good is None else f'step {good} in {mngr.directory}'}")
    last["loss"] = m["loss"]
    if done % log_every and done != num_steps:
      return
    now = time.perf_counter()
    tps = (done - clock["step"]) * tokens_per_step / max(now - clock["time"], 1e-9)
    if clock.get("first") is None:  # ETA from steady-state steps (the first one compiles).
      clock["first"], eta = (done, now), None
    else:
      first_step, first_time = clock["first"]
      eta = (now - first_time) / max(done - first_step, 1) * (num_steps - done)
    clock.update(step=done, time=now)
    record = {k: m.pop(k) for k in ("loss", "lr", "grad_norm")}
    record.update(tokens_per_sec=tps, mfu=metrics_lib.mfu(tps, flops_token, mesh.size, peak), **m)
    if source_tokens:
      record["source_tokens"] = source_tokens
    writer.write(done, record)
    if is_main:
      logging.info(metrics_lib.progress_line(done, num_steps, record, eta))

  pending = None
  done = start
  try:
    with parallel.mesh_context(mesh):
      for step in range(start, num_steps):
        local = next(data_iter)
        logged = (step + 1) % log_every == 0 or step + 1 == num_steps
        counts = data_lib.source_tokens(data_iter, shards) if logged else {}
        state, device_metrics = step_fn(state, _global_batch(local, batch_sharding, global_batch))
        done = step + 1
        if pending is not None:  # Previous step's metrics: fetched while this one runs.
          handle(*pending)
        pending = (done, device_metrics, counts)
        stop, save_due = parallel.any_process(preemption.flag, policy.due(done))
        save_due = save_due or done == num_steps or stop
        eval_due = bool(eval_every) and done % eval_every == 0
        if save_due or eval_due:
          handle(*pending)
          pending = None
        if save_due:
          checkpoint.save(mngr, done, state, data_iter)
          policy.saved()
        if eval_due:
          eval_writer.write(done, evaluator(state["params"]))
        if stop:
          break
      if pending is not None:
        handle(*pending)
  finally:
    preemption.restore()
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
    eval_writer.close()
  if preemption.flag:
    logging.warning("stopped by SIGTERM at step %d; checkpoint saved", done)
  return {"step": done, "loss": last["loss"], "preempted": preemption.flag,
          "params": state["params"], "model_config": model_cfg, "workdir": workdir}


class _Evaluator:
  """Thin hook to swallow_jax.evaluate.run_tasks(model_cfg, params, tokenizer, tasks)."""

  def __init__(self, config: ml_collections.ConfigDict, model_cfg: Any):
    from swallow_jax import evaluate, tokenizer  # pylint: disable=g-import-not-at-top
    if not config.get("tokenizer"):
      raise ValueError("config.eval.every_steps > 0 needs config.tokenizer")
    self._run = evaluate.run_tasks
    self._tok = tokenizer.load_tokenizer(config.tokenizer)
    self._tasks = list(config.eval.get("tasks", []))
    self._model_cfg = model_cfg

  def __call__(self, params: Any) -> dict[str, Any]:
    return self._run(self._model_cfg, params, self._tok, self._tasks)
