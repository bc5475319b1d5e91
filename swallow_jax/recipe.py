r"""The Swallow recipe as a staged run: cpt -> chat_vector -> sft -> eval, then a report.

    python -m swallow_jax.recipe --config=configs/llama3_swallow_8b.py --workdir=runs/8b
    python -m swallow_jax.recipe --config=configs/demo.py --workdir=runs/demo      # CPU, minutes
    python -m swallow_jax.recipe --config=configs/demo.py --workdir=runs/demo --dry_run

A recipe config names its stages in order (`config.stages`) and has one sub-config per stage,
whose `kind` says what it does; each stage works in WORKDIR/<stage> and leaves its outputs at
fixed paths there (after the colon):

  demo_data    build the demo's generated corpus and tasks (swallow_jax.demo): raw/<source>.jsonl,
               tasks/<task>.jsonl, chat_eval/<lang>_chat.jsonl
  tokenizer    train a sentencepiece tokenizer on text files (swallow_jax.vocab.train):
               tokenizer.model
  preprocess   tokenize raw JSONL sources into ArrayRecord datasets (swallow_jax.preprocess):
               <source>/ (one dataset per source)
  train        CPT or SFT with swallow_jax.train (the rest of the sub-config is a training config),
               then export the weights as a Hugging Face directory (`export_hf`): the stage
               directory is the training workdir, hf/ the HF export
  chat_vector  target + scale * (instruct - base), streamed over HF directories: model/ (HF)
  eval         swallow_jax.evaluate.evaluate_models on every listed model, and optional chat
               sets (`chat_tasks`: held-out chats scored under the chat template); `tasks` is a
               list of task files or a directory of them: results.json, plots, tensorboard/<model>/
A stage refers to an earlier one by name: `stage("cpt")` is that stage's main output (the HF
export of a train stage, the model of chat_vector, the tokenizer file of tokenizer, else the
stage directory) and `stage("data", "tasks")` a path under WORKDIR/data. These are plain strings
("stage://cpt"), so they can be overridden on the command line like any other value. A train stage
with `model.vocab_size = 0` takes its tokenizer's vocabulary size. When a stage succeeds,
WORKDIR/<stage>/DONE.json (its outputs, written atomically) marks it complete and later runs skip
it; an interrupted stage is simply run again (training resumes from its Orbax checkpoints, the
evaluation at the task it stopped in, the others redo their work into fresh temporary outputs).
After the stages, WORKDIR/report.json, report.md and PNG plots are (re)written from what the
stages recorded (swallow_jax.report says how).

Multi-host: training stages run on every process (start all of them with the same command
and --stages=<train stage>); the other stages run on one process, so run them separately. The
HF export of a stage trained on several processes happens when the stage is run again on one.
"""

from collections.abc import Callable, Mapping, Sequence
import copy
import json
import logging
import math
import os
import shutil
import time
from typing import Any

from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from swallow_jax import chat_vector
from swallow_jax import demo
from swallow_jax import evaluate
from swallow_jax import fileio
from swallow_jax import parallel
from swallow_jax import preprocess
from swallow_jax import report as report_lib
from swallow_jax import tokenizer
from swallow_jax import train as train_lib
from swallow_jax.model import io as model_io
from swallow_jax.model import lora as lora_lib
from swallow_jax.train import lock as lock_lib
from swallow_jax.vocab import train as vocab_train

DONE = "DONE.json"
STAGE_REF = "stage://"
# Keys of a train stage that belong to the recipe, not to the training config.
_TRAIN_STAGE_KEYS = ("kind", "export_hf", "export_dtype")


class StageError(ValueError):
  """A stage cannot run or did not finish; the message says which and why."""


class Unfinished(RuntimeError):
  """A stage stopped short without failing (SIGTERM after a checkpoint, or an HF export left
  for a one-process run); running the recipe again continues it."""


def stage(name: str, *path: str) -> str:
  """A reference to stage `name`: its main output, or the file or directory `path` (parts
  joined by "/") under WORKDIR/<name>. Resolved when the recipe runs."""
  return STAGE_REF + "/".join((name, *path))


def stage_names(config: Mapping[str, Any]) -> list[str]:
  """config.stages, checked: each has a sub-config of a known kind, names are unique."""
  names = list(config["stages"])
  for name in names:
    if name not in config:
      raise ValueError(f"stage {name!r} is listed in config.stages but config.{name} is missing")
    kind = config[name].get("kind")
    if kind not in STAGE_KINDS:
      raise ValueError(f"config.{name}.kind={kind!r}; known kinds: {sorted(STAGE_KINDS)}")
  if len(set(names)) != len(names):
    raise ValueError(f"stage names must be unique: {names}")
  return names


def _to_plain(value: Any) -> Any:
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else copy.deepcopy(value)


def _walk(value: Any, fn: Callable[[str], Any]) -> Any:
  """`value` with every string s replaced by fn(s), through dicts, lists and tuples."""
  if isinstance(value, str):
    return fn(value)
  if isinstance(value, Mapping):
    return {k: _walk(v, fn) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_walk(v, fn) for v in value]
  return value


def _split_ref(ref: str) -> tuple[str, str]:
  name, _, path = ref[len(STAGE_REF):].partition("/")
  return name, path


def check_references(config: Mapping[str, Any]) -> None:
  """Every reference must name a stage listed before the one using it."""
  names = stage_names(config)
  for i, name in enumerate(names):
    refs: set[str] = set()
    _walk(_to_plain(config[name]), lambda s: s.startswith(STAGE_REF) and refs.add(_split_ref(s)[0]))
    for ref in sorted(refs):
      if ref not in names[:i]:
        where = "a later stage" if ref in names else "no stage"
        raise ValueError(f"config.{name} refers to stage {ref!r}, which is {where}; a stage "
                         f"can only use outputs of stages before it ({names[:i]})")


def resolve(value: Any, config: Mapping[str, Any], workdir: str) -> Any:
  """`value` with every stage reference replaced by its path (see the module docstring);
  StageError when the stage has not completed or has no such output."""
  def one(s: str) -> str:
    if not s.startswith(STAGE_REF):
      return s
    name, path = _split_ref(s)
    stage_dir = os.path.join(os.path.abspath(workdir), name)
    if not os.path.exists(os.path.join(stage_dir, DONE)):
      raise StageError(f"{s}: stage {name!r} has not completed")
    kind = config[name]["kind"]
    sub = path or {"tokenizer": "tokenizer.model", "chat_vector": "model",
                   "train": "hf" if config[name].get("export_hf", True) else ""}.get(kind)
    out = os.path.join(stage_dir, sub) if sub else stage_dir
    if not os.path.exists(out):
      raise StageError(f"{s}: stage {name!r} has no output {path!r} ({out} does not exist)")
    return out
  return _walk(value, one)


# Stage kinds. Each takes (resolved stage config as a dict, stage dir) and returns its outputs.


def _demo_data(cfg: dict, stage_dir: str) -> dict:
  paths = demo.build_demo_data(stage_dir, seed=int(cfg.get("seed", 0)),
                               scale=float(cfg.get("scale", 1)))
  return {"raw": paths.raw, "tasks": paths.tasks, "chat_eval": paths.chat_eval}


def _jsonl_texts(paths: Sequence[str]):
  """Text lines for tokenizer training: `text` of text records, message contents of chats."""
  for path in paths:
    for _, row in fileio.read_jsonl(path):
      texts = [row["text"]] if "text" in row else [m["content"] for m in row["messages"]]
      yield from filter(None, "\n".join(texts).split("\n"))


def _tokenizer(cfg: dict, stage_dir: str) -> dict:
  inputs = list(cfg["inputs"].values()) if isinstance(cfg["inputs"], Mapping) else cfg["inputs"]
  model = vocab_train.train_sentencepiece(
      _jsonl_texts(inputs), int(cfg["vocab_size"]), os.path.join(stage_dir, "tokenizer"),
      model_type=cfg.get("model_type", "bpe"), shrink_to_fit=True, num_threads=1)
  tok = tokenizer.load_tokenizer(model)
  return {"model": model, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id}


def _preprocess(cfg: dict, stage_dir: str) -> dict:
  out = {}
  for name, src in cfg["sources"].items():
    summary = preprocess.preprocess(
        src["input"], cfg["tokenizer"], os.path.join(stage_dir, name),
        fmt=src.get("format", "text"), workers=int(cfg.get("workers", 1)), overwrite=True,
        progress=False)
    out.update({name: summary["output"], f"{name}_tokens": summary["tokens"]})
  return out


def _train(cfg: dict, stage_dir: str) -> dict:
  train_cfg = ml_collections.ConfigDict(
      {k: v for k, v in cfg.items() if k not in _TRAIN_STAGE_KEYS})
  if train_cfg.model.get("vocab_size", None) == 0:  # the size of the tokenizer this stage uses
    train_cfg.model.vocab_size = tokenizer.load_tokenizer(cfg["tokenizer"]).vocab_size
  trained = os.path.join(stage_dir, "TRAINED.json")
  summary = None
  if not os.path.exists(trained):
    summary = train_lib.run(train_cfg, stage_dir)
    if summary["preempted"]:
      raise Unfinished(f"training in {stage_dir} stopped by SIGTERM at step {summary['step']}")
    if jax.process_index() == 0:
      fileio.write_json(trained, {"step": summary["step"], "loss": summary["loss"]})
  out = {"workdir": stage_dir, "model": stage_dir,
         "checkpoint_bytes": _checkpoint_bytes(stage_dir)}
  if not cfg.get("export_hf", True):
    return out
  if jax.process_count() > 1:
    raise Unfinished(f"{stage_dir}: trained; its HF export runs on one process: run this stage "
                     "again on one host (it will not retrain)")
  model_cfg, params = (model_io.load(stage_dir, progress=False) if summary is None
                       else (summary["model_config"], summary["params"]))
  model_io.save_hf(os.path.join(stage_dir, "hf"), model_cfg, params,
                   dtype=cfg.get("export_dtype", "bfloat16"),
                   tokenizer_dir=cfg.get("tokenizer") or None, overwrite=True, progress=False)
  out["model"] = os.path.join(stage_dir, "hf")
  out["trainable_params"] = _trainable_params(cfg["model"].get("lora"), model_cfg, params)
  return out


def _checkpoint_bytes(workdir: str) -> int:
  """Bytes on disk of a training run's latest checkpoint (one checkpoint: how many are kept
  depends on the save interval and timing, not on what the run trains)."""
  root = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(root) if n.isdigit()] if os.path.isdir(root) else []
  if not steps:
    return 0
  latest = os.path.join(root, str(max(steps)))
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(latest) for f in files)


def _trainable_params(lora: Mapping[str, Any] | None, model_cfg: Any, params: Any) -> int:
  """What a train stage trained: every parameter, or the LoRA adapter and its `trainable` extras."""
  if not lora or not lora.get("rank"):
    return model_cfg.num_params
  lora_cfg = lora_lib.LoraConfig.from_dict(lora)
  adapter = jax.eval_shape(lambda: lora_lib.init_lora(model_cfg, lora_cfg, jax.random.key(0)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(
      [adapter] + [params[k] for k in lora_cfg.trainable]))


def _chat_vector(cfg: dict, stage_dir: str) -> dict:
  output = os.path.join(stage_dir, "model")
  shutil.rmtree(output, ignore_errors=True)  # left by an interrupted attempt
  protect = cfg.get("protect_token_ids", ())
  if isinstance(protect, str):  # "chat_template", "llama3_chat" or "1,2,3"
    protect = chat_vector.protected_ids(protect, cfg["target"])
  scale = float(cfg.get("scale", 0.5))
  chat_vector.merge_checkpoints(
      cfg["base"], cfg["instruct"], cfg["target"], output, scales=(scale,),
      exclude=tuple(cfg.get("exclude", ())), protect_token_ids=tuple(protect),
      dtype=cfg.get("dtype") or None, progress=False)
  return {"model": output, "scale": scale}


def _eval(cfg: dict, stage_dir: str) -> dict:
  max_examples = cfg.get("max_examples") or None
  chats = {name: evaluate.load_chats(path)[:max_examples]
           for name, path in (cfg.get("chat_tasks") or {}).items()}
  models = {**cfg.get("models", {}), **cfg.get("ablations", {})}
  results = evaluate.evaluate_models(
      models, evaluate.load_tasks(cfg["tasks"]), cfg.get("tokenizer") or None,
      stage_dir, chats=chats, batch_size=int(cfg.get("batch_size", 8)),
      max_len=int(cfg.get("max_len", 2048)), max_examples=max_examples,
      dtype=cfg.get("dtype", "float32"), resume=True, progress=False)
  for name, entry in results["models"].items():
    metrics, _, _ = report_lib.model_metrics(entry["tasks"])  # in the report's units
    logging.info("eval %s: %s", name, {k: round(v, 4) for k, v in metrics.items()})
  return {"results": os.path.join(stage_dir, evaluate.RESULTS)}


STAGE_KINDS: dict[str, Callable[[dict, str], dict]] = {
    "demo_data": _demo_data, "tokenizer": _tokenizer, "preprocess": _preprocess,
    "train": _train, "chat_vector": _chat_vector, "eval": _eval}


def status(config: Mapping[str, Any], workdir: str) -> dict[str, str]:
  """stage -> 'done' | 'partial' (its directory exists) | 'pending'."""
  dirs = {name: os.path.join(workdir, name) for name in stage_names(config)}
  return {name: "done" if os.path.exists(os.path.join(d, DONE)) else
          "partial" if os.path.isdir(d) else "pending" for name, d in dirs.items()}


def run(config: Mapping[str, Any], workdir: str, only: Sequence[str] = (),
        report: bool = True) -> dict[str, Any]:
  """Runs the stages not yet done (or only `only`), then writes the report; returns it."""
  check_references(config)
  names = stage_names(config)
  if unknown := set(only) - set(names):
    raise ValueError(f"--stages names {sorted(unknown)} are not stages of this config {names}")
  os.makedirs(workdir, exist_ok=True)
  process = jax.process_index()
  with lock_lib.workdir_lock(workdir, enabled=process == 0):
    for name in names:
      stage_dir, kind = os.path.join(workdir, name), config[name]["kind"]
      done_path = os.path.join(stage_dir, DONE)
      if os.path.exists(done_path):
        if only and name in only:
          logging.info("stage %s: already complete (delete %s to run it again)", name, stage_dir)
        now = json.loads(json.dumps(resolve(_to_plain(config[name]), config, workdir), default=str))
        if fileio.read_json(done_path).get("config") != now:
          logging.warning("stage %s was completed with a different config; its outputs are used "
                          "as they are (delete %s to redo it)", name, stage_dir)
        continue
      if only and name not in only:
        continue
      if jax.process_count() > 1 and kind != "train":  # the only kind run on every process
        raise StageError(f"stage {name} ({kind}) runs on one process; start it without "
                         f"multi-host (e.g. --stages={name} on one host)")
      stage_cfg = resolve(_to_plain(config[name]), config, workdir)
      os.makedirs(stage_dir, exist_ok=True)
      logging.info("stage %s (%s): starting in %s", name, kind, stage_dir)
      t0 = time.perf_counter()
      result = STAGE_KINDS[kind](stage_cfg, stage_dir)
      seconds = round(time.perf_counter() - t0, 2)
      if process == 0:
        fileio.write_json(done_path, {"kind": kind, "outputs": result, "seconds": seconds,
                                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                      "config": stage_cfg})
      logging.info("stage %s: done in %.1fs", name, seconds)
  return write_report(config, workdir) if report and process == 0 else {}


def write_report(config: Mapping[str, Any], workdir: str) -> dict[str, Any]:
  """Writes WORKDIR/report.json, report.md and the plots from what the stages left (DONE.json,
  training logs, evaluation results); returns the report."""
  stages, results, ablation_models, curves = {}, {}, set(), {}
  for name, state in status(config, workdir).items():
    stage_dir, kind = os.path.join(workdir, name), config[name]["kind"]
    stages[name] = {"kind": kind, "status": state}
    if state == "done":
      done = fileio.read_json(os.path.join(stage_dir, DONE))
      stages[name].update(seconds=done["seconds"], **{k: v for k, v in done["outputs"].items()
                                                      if k in report_lib.STAGE_COSTS})
    if kind == "train":
      log = os.path.join(stage_dir, "metrics.jsonl")
      stages[name]["train_log"] = ([r for _, r in fileio.read_jsonl(log)]
                                   if os.path.exists(log) else [])
      curves[f"{name} ({config[name].get('data', {}).get('kind', 'pretrain')})"] = (
          report_lib.train_summary(stages[name]["train_log"]).get("curve"))
    if kind == "eval":
      ablations = list(config[name].get("ablations", {}) or {})
      ablation_models |= set(ablations)
      path = os.path.join(stage_dir, evaluate.RESULTS)
      evaluated = fileio.read_json(path)["models"] if os.path.exists(path) else {}
      models = [*(config[name].get("models", {}) or {}), *ablations]
      results.update({m: evaluated[m]["tasks"] for m in models if m in evaluated})
  report_cfg = _to_plain(config.get("report", {})) or {}
  rep = report_lib.build(report_cfg, stages, results, ablation_models)
  report_lib.write(workdir, rep, intro=report_cfg.get("intro", ""), curves=curves)
  return rep


FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  del argv
  logging.getLogger().setLevel(logging.INFO)
  config, workdir = FLAGS.config, FLAGS.workdir
  try:
    check_references(config)
    if FLAGS.dry_run:
      for name, state in status(config, workdir).items():
        print(f"{name:24s} {config[name].kind:12s} {state}")
    elif FLAGS.report_only:
      write_report(config, workdir)
    else:
      parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                          mode=FLAGS.distributed)
      run(config, workdir, only=FLAGS.stages)
      if not FLAGS.stages:
        print(f"report: {os.path.join(workdir, 'report.md')}")
  except Unfinished as e:
    logging.warning("%s; run the recipe again to continue", e)


if __name__ == "__main__":
  from swallow_jax import cli  # pylint: disable=g-import-not-at-top
  # Flags only when run as a program: library importers (tests) must not define them.
  config_flags.DEFINE_config_file("config", None, "Recipe config file (configs/*.py).",
                                  lock_config=True)
  flags.mark_flag_as_required("config")
  cli.define_multihost_flags("Recipe directory: one sub-directory per stage, report.md/.json and "
                             "plots.")
  flags.DEFINE_list("stages", [], "Run only these stages (others must be done already if these "
                    "need their outputs).")
  flags.DEFINE_bool("dry_run", False, "Print the stages and their state; run nothing.")
  flags.DEFINE_bool("report_only", False, "Only rewrite the report from the stages done so far.")
  cli.run(main, prog="recipe")
