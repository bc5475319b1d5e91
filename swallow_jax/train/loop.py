"""The training loop: `run(config, workdir)` (CPT and SFT), used by the CLI and the recipe runner.

Start-up resumes from WORKDIR/checkpoints, else loads `init_from` (weights only), else initializes
at random; with LoRA the frozen base always comes from `init_from`. Then it steps, logs and saves:
docs/training.md (resume safety, checkpoints), docs/multihost.md.
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

from flax import traverse_util
import jax
import ml_collections
import numpy as np

from swallow_jax import checkpoint, cli, config_utils, evaluate, fileio, parallel, tokenizer
from swallow_jax.model import io as model_io
from swallow_jax.train import data as data_lib
from swallow_jax.train import lock as lock_lib
from swallow_jax.train import metrics as metrics_lib
from swallow_jax.train import optimizer as optimizer_lib
from swallow_jax.train import step as step_lib

# LlamaConfig fields that change the saved parameters' shapes, dtypes or layout.
STATE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                "num_kv_heads", "head_dim", "tie_word_embeddings", "param_dtype", "scan_layers")
# With LoRA, what the saved adapter means: its settings and the base it was trained on.
LORA_STATE_KEYS = ("model.lora.rank", "model.lora.alpha", "model.lora.targets",
                   "model.lora.rslora", "model.lora.trainable", "init_from")


class NonFiniteLossError(cli.Failure):
  """The loss or gradient norm became NaN/inf; the run stopped without saving that state."""


class _Preemption:
  """SIGTERM (preemption, SLURM time limit) and SIGINT (Ctrl-C): the first sets a flag the loop
  checks (save at the end of the step, exit 0); a second one ends the process at once."""

  def __init__(self):
    self.signal_name = ""
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  @property
  def flag(self) -> bool:
    return bool(self.signal_name)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    name = signal.Signals(signum).name
    if self.flag:
      logging.warning("second %s: exiting now, without saving", name)
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    logging.warning("%s received: saving a checkpoint after this step, then exiting "
                    "(again: exit at once)", name)
    self.signal_name = name

  def restore(self):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


def _load_init(path: str, abstract_params: Any, what: str) -> Any:
  """Weights from `init_from` (any path swallow_jax.model.io resolves) onto the target shardings."""
  _, params = model_io.load(path, dtype=jax.tree.leaves(abstract_params)[0].dtype,
                            shardings=jax.tree.map(lambda a: a.sharding, abstract_params),
                            progress=jax.process_index() == 0)
  logging.info("%s from %s", what, path)
  return params


def _config_changes(workdir: str, resolved: dict[str, Any]) -> list[dict[str, Any]]:
  """{key, old, new} for each key that differs from the workdir's config.json.

  Raises IncompatibleCheckpointError (before anything is written) when a model field that shapes
  the saved state differs.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return []
  old = traverse_util.flatten_dict(fileio.read_json(path), sep=".")
  new = traverse_util.flatten_dict(json.loads(json.dumps(resolved)), sep=".")
  for field in STATE_FIELDS:
    key = f"model.{field}"
    if key in old and old[key] != new.get(key):
      raise checkpoint.IncompatibleCheckpointError(
          f"{key}: checkpoint {old[key]}, config {new.get(key)} ({workdir}): the saved state "
          "cannot continue with this model; start a new workdir, or set "
          f"config.init_from={workdir} to take its weights only")
  if old.get("model.lora.rank"):
    for key in LORA_STATE_KEYS:
      if key in old and old[key] != new.get(key):
        fix = (f"--config.{key}={old[key]} resumes it" if key == "init_from"
               else "start a new workdir to change them")
        raise checkpoint.IncompatibleCheckpointError(
            f"{key}: checkpoint {old[key]!r}, config {new.get(key)!r} ({workdir}): this LoRA "
            f"adapter was trained with the former (base model and adapter settings must stay the "
            f"same); {fix}")
  return [{"key": k, "old": old.get(k), "new": new.get(k)}
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _record_config(workdir: str, resolved: dict[str, Any], changes: list[dict[str, Any]],
                   step: int) -> None:
  """Logs `changes`, appends them as of `step` to config_history.jsonl, writes config.json."""
  for c in changes:
    logging.info("config change since the last start: %s: %r -> %r", c["key"], c["old"], c["new"])
  if changes:
    with open(os.path.join(workdir, "config_history.jsonl"), "a", encoding="utf-8") as f:
      f.writelines(json.dumps({"step": step, **c}) + "\n" for c in changes)
  fileio.write_json(os.path.join(workdir, "config.json"), resolved)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per `config`, writing into `workdir`; resumes if `workdir` holds a checkpoint.

  Returns {'step', 'loss', 'preempted', 'params' (with LoRA: merged), 'model_config', 'workdir'}.
  Raises NonFiniteLossError on NaN/inf, ValueError on bad configs or incompatible checkpoints,
  lock.WorkdirInUseError when another run holds `workdir`, checkpoint.CheckpointSaveError when
  an asynchronous save failed.
  """
  spec = config_utils.TrainSpec.from_config(config)
  parallel.initialize()
  resolved = config_utils.resolved_dict(config, spec)
  with lock_lib.workdir_lock(workdir, enabled=jax.process_index() == 0):
    return _Trainer(spec, resolved, workdir).run()


class _Trainer:
  """One start of a run: the state built at start-up and the step loop's bookkeeping."""

  def __init__(self, spec: config_utils.TrainSpec, resolved: dict[str, Any], workdir: str):
    self.spec, self.resolved, self.workdir = spec, resolved, workdir
    self.is_main = jax.process_index() == 0
    self.last_loss: float | None = None
    self.clock_time, self.first = time.perf_counter(), None
    self.seq_len, self.global_batch = spec.data.seq_len, spec.data.global_batch_size
    self.shards = data_lib.num_shards(spec.data.num_shards, jax.process_count())
    if self.global_batch % self.shards:
      raise ValueError(f"data.global_batch_size={self.global_batch} must be divisible by "
                       f"data.num_shards={self.shards}")
    if self.global_batch % (jax.process_count() * spec.train.grad_accum_steps):
      raise ValueError(f"data.global_batch_size={self.global_batch} must be divisible by "
                       f"process_count x grad_accum_steps = {jax.process_count()} x "
                       f"{spec.train.grad_accum_steps}")
    if self.seq_len > spec.model.max_position_embeddings:
      raise ValueError(f"data.seq_len={self.seq_len} exceeds the model's "
                       f"max_position_embeddings={spec.model.max_position_embeddings}")
    if spec.eval.every_steps and not spec.tokenizer:
      raise ValueError("config.eval.every_steps > 0 needs config.tokenizer")
    self.mesh = parallel.make_mesh(spec.mesh.as_dict())
    self.batch_sharding = parallel.batch_sharding(self.mesh)

  def _build(self) -> None:
    """Data iterator, train state (resumed, init_from or random) and the jitted step."""
    spec, workdir, lora = self.spec, self.workdir, self.spec.lora
    tx, lr = optimizer_lib.make_optimizer(spec.optimizer)
    seed = spec.train.seed
    os.makedirs(workdir, exist_ok=True)
    if self.is_main:
      logging.info("building the data pipeline...")
    local_shards = parallel.local_batch_shards(self.batch_sharding, self.global_batch, self.shards)
    self.data_iter = data_lib.make_iterator(  # data.shuffle_seed, when set, overrides the seed
        spec.data.pipeline_config(), seq_len=self.seq_len, global_batch=self.global_batch,
        shards=self.shards, local_shards=local_shards, seed=seed)
    self.step_fn, abstract, shardings = step_lib.sharded_train_step(
        spec.model, tx, lr, self.mesh, seed=seed, lora_cfg=lora, **spec.train.step_options())
    parallel.check_sharded(abstract["params"], shardings["params"], self.mesh)

    self.mngr = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), spec.checkpoint)
    # Before the restore, which may set unreadable checkpoints aside: a mismatch writes nothing.
    changes = _config_changes(workdir, self.resolved) if self.mngr.latest_step() is not None else []
    restored = checkpoint.restore_latest(self.mngr, step_lib.checkpointed(abstract),
                                         self.data_iter)
    self.start = 0
    if restored is not None:
      self.start, self.state = restored
      if lora.rank:  # The checkpoint holds the adapter; the frozen base comes from init_from.
        self.state["params"] = _load_init(spec.init_from, abstract["params"], "LoRA base")
      logging.info("resumed from %s/checkpoints step %d", workdir, self.start)
    elif spec.init_from:
      params = _load_init(spec.init_from, abstract["params"],
                          "LoRA base" if lora.rank else "initialized weights")
      self.state = jax.jit(lambda p: step_lib.state_from_params(p, tx, seed, lora),
                           out_shardings=shardings, donate_argnums=0)(params)
    else:
      self.state = step_lib.jit_init(spec.model, tx, seed, shardings)()

    n_params = sum(math.prod(a.shape) for a in jax.tree.leaves(abstract["params"]))
    logging.info("model %s: %.2fM parameters; mesh %s; %.1f%% of parameter bytes per device",
                 self.resolved["model"]["preset"] or f"from {spec.init_from}", n_params / 1e6,
                 parallel.describe(self.mesh),
                 100 * parallel.shard_fraction(abstract["params"], shardings["params"]))
    if lora.rank:
      n_train = sum(math.prod(a.shape) for a in jax.tree.leaves(step_lib.trainable(abstract)))
      logging.info("LoRA rank %d on %s%s: %.2fM trainable parameters (%.2f%%), the base frozen",
                   lora.rank, ",".join(lora.targets),
                   f" + {','.join(lora.trainable)}" if lora.trainable else "",
                   n_train / 1e6, 100 * n_train / n_params)
    if self.is_main:
      _record_config(workdir, self.resolved, changes, self.start)

  def run(self) -> dict[str, Any]:
    with parallel.mesh_context(self.mesh):
      self._build()
    spec, t = self.spec, self.spec.train
    self.flops_token = metrics_lib.flops_per_token(spec.model, self.seq_len, spec.lora)
    self.peak = metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind)
    self.clock_step = self.start
    self.writer = metrics_lib.MetricsWriter(
        self.workdir, self.start, enabled=self.is_main, tensorboard=t.tensorboard,
        wandb_project=t.wandb_project, run_config=self.resolved)
    eval_every = spec.eval.every_steps
    eval_writer = metrics_lib.MetricsWriter(
        self.workdir, self.start, self.is_main and eval_every > 0, "eval.jsonl", tensorboard=False)
    tok = tokenizer.load_tokenizer(spec.tokenizer) if eval_every else None
    policy = checkpoint.SavePolicy(spec.checkpoint)
    preemption = _Preemption()
    pending, done = None, self.start
    try:
      with parallel.mesh_context(self.mesh):
        for done in range(self.start + 1, t.num_steps + 1):  # done: steps completed after it
          local = next(self.data_iter)
          logged = done % max(1, t.log_every) == 0 or done == t.num_steps
          counts = data_lib.source_tokens(self.data_iter, self.shards) if logged else None
          if done == self.start + 1 and self.is_main:
            logging.info("compiling the train step (first step)...")
          self.state, device_metrics = self.step_fn(self.state, self._global_batch(local))
          if pending is not None:  # Previous step's metrics: fetched while this one runs.
            self._handle(*pending)
          pending = (done, device_metrics, counts)
          checkpoint.check_save(self.mngr)
          stop, save_due = parallel.any_process(preemption.flag, policy.due(done))
          save_due = save_due or done == t.num_steps or stop
          eval_due = bool(eval_every) and done % eval_every == 0
          if save_due or eval_due:
            self._handle(*pending)
            pending = None
          if save_due:
            checkpoint.save(self.mngr, done, step_lib.checkpointed(self.state), self.data_iter)
            policy.saved()
          if eval_due:
            results = evaluate.run_tasks(spec.model, self._params(), tok, list(spec.eval.tasks))
            eval_writer.write(done, results)
            self.writer.mirror(done, {"eval": {
                task: {"score": r.get("score"), **r.get("metrics", {})}
                for task, r in results.items()}})
          if stop:
            break
        self.mngr.wait_until_finished()
        checkpoint.check_save(self.mngr)
    finally:
      preemption.restore()
      self.mngr.close()  # Waits for a pending save first.
      self.writer.close()
      eval_writer.close()
    if preemption.flag:
      logging.warning("stopped by %s at step %d; checkpoint saved", preemption.signal_name, done)
    return {"step": done, "loss": self.last_loss, "preempted": preemption.flag,
            "params": self._params(), "model_config": spec.model, "workdir": self.workdir}

  def _global_batch(self, local: Mapping[str, np.ndarray]) -> dict:
    """The global batch from this process's rows (its data shards, in row order)."""
    return {k: jax.make_array_from_process_local_data(
                self.batch_sharding, np.asarray(local[k]), (self.global_batch, *local[k].shape[1:]))
            for k in step_lib.BATCH_KEYS}

  def _params(self) -> Any:
    """The model trained so far (with LoRA: the adapter merged into the base, a new copy)."""
    return step_lib.merged_params(self.state, self.spec.model, self.spec.lora)

  def _handle(self, done: int, device_metrics: dict, source_tokens: dict | None) -> None:
    """Checks one step's metrics for NaN/inf; logs them on a logged step (every `log_every` and
    the last: the one `source_tokens` is counted for, else None)."""
    m = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
      self.mngr.wait_until_finished()
      good = self.mngr.latest_step()
      raise NonFiniteLossError(
          f"non-finite values at step {done} (loss={m['loss']}, grad_norm={m['grad_norm']}, "
          f"param_norm={m['param_norm']}): stopped without saving that state; last good "
          f"checkpoint: {'none' if good is None else f'step {good} in {self.mngr.directory}'}")
    self.last_loss = m["loss"]
    if source_tokens is None:
      return
    num_steps = self.spec.train.num_steps
    now = time.perf_counter()
    tps = ((done - self.clock_step) * self.global_batch * self.seq_len
           / max(now - self.clock_time, 1e-9))
    self.first = self.first or (done, now)  # ETA from steady-state steps (the first compiles).
    eta = ((now - self.first[1]) / (done - self.first[0]) * (num_steps - done)
           if done > self.first[0] else None)
    self.clock_step, self.clock_time = done, now
    record = {k: m.pop(k) for k in ("loss", "lr", "grad_norm")}
    record.update(tokens_per_sec=tps,
                  mfu=metrics_lib.mfu(tps, self.flops_token, self.mesh.size, self.peak), **m,
                  source_tokens=source_tokens)
    self.writer.write(done, record)
    if self.is_main:
      logging.info(metrics_lib.progress_line(done, num_steps, record, eta))
