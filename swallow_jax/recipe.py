r"""The Swallow recipe as a staged run: cpt -> chat_vector -> sft -> eval, then a report.

    python -m swallow_jax.recipe --config=configs/llama3_swallow_8b.py --workdir=runs/8b
    python -m swallow_jax.recipe --config=configs/demo.py --workdir=runs/demo      # CPU, minutes
    python -m swallow_jax.recipe --config=configs/demo.py --workdir=runs/demo --dry_run

A recipe config names its stages in order (`config.stages`) and has one sub-config per stage,
whose `kind` says what it does:

  demo_data    build the demo's generated corpus and tasks (swallow_jax.demo)
  tokenizer    train a sentencepiece tokenizer on text files (swallow_jax.tokenizer)
  preprocess   tokenize raw JSONL sources into ArrayRecord datasets (swallow_jax.preprocess)
  train        CPT or SFT with swallow_jax.train (the rest of the sub-config is a training config),
               then export the weights as a Hugging Face directory (`export_hf`)
  chat_vector  target + scale * (instruct - base), streamed over HF directories
  eval         swallow_jax.evaluate.run_tasks on every listed model, and optional chat sets
               (`chat_tasks`: held-out chats scored under the Llama 3 chat template)

Each stage works in WORKDIR/<stage>. A string "${stage.key}" in a sub-config is replaced by an
output of an earlier stage (e.g. "${cpt.model}"; "${workdir}" is WORKDIR). When a stage
succeeds, WORKDIR/<stage>/DONE.json (its outputs, written atomically) marks it complete and
later runs skip it; an interrupted stage is simply run again (training resumes from its Orbax
checkpoints, the others redo their work into fresh temporary outputs). After the stages,
WORKDIR/report.json, report.md and PNG plots are (re)written from what the stages recorded.

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
import re
import shutil
import sys
import time
from typing import Any

from absl import app, flags
import ml_collections
from ml_collections import config_flags

DONE = "DONE.json"
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\}")
# Keys of a train stage that belong to the recipe, not to the training config.
_TRAIN_STAGE_KEYS = ("kind", "export_hf", "export_dtype")


class StageError(RuntimeError):
  """A stage cannot run or did not finish; the message says which and why."""


class Unfinished(RuntimeError):
  """A stage stopped short without failing (SIGTERM after a checkpoint, or an HF export left
  for a one-process run); running the recipe again continues it."""


# ------------------------------------------------------------------------------------------
# Config handling: stage list, ${...} references.


def stage_names(config: Mapping[str, Any]) -> list[str]:
  names = list(config["stages"])
  for name in names:
    if name not in config:
      raise ValueError(f"stage {name!r} is listed in config.stages but config.{name} is missing")
    kind = config[name].get("kind")
    if kind not in STAGE_KINDS:
      raise ValueError(f"config.{name}.kind={kind!r}; known kinds: {sorted(STAGE_KINDS)}")
  if len(set(names)) != len(names) or "workdir" in names:
    raise ValueError(f"stage names must be unique and not 'workdir': {names}")
  return names


def _to_plain(value: Any) -> Any:
  if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return value.to_dict()
  return copy.deepcopy(value)


def references(value: Any) -> set[str]:
  """Stage names that ${...} strings inside `value` refer to."""
  if isinstance(value, str):
    return {m.group(1) for m in _REF.finditer(value)} - {"workdir"}
  if isinstance(value, Mapping):
    return set().union(*(references(v) for v in value.values())) if value else set()
  if isinstance(value, (list, tuple)):
    return set().union(*(references(v) for v in value)) if value else set()
  return set()


def check_references(config: Mapping[str, Any]) -> None:
  """Every ${stage...} must name a stage listed before the one using it."""
  names = stage_names(config)
  for i, name in enumerate(names):
    for ref in sorted(references(_to_plain(config[name]))):
      if ref not in names[:i]:
        where = "a later stage" if ref in names else "no stage"
        raise ValueError(f"config.{name} refers to ${{{ref}...}}, which is {where}; a stage "
                         f"can only use outputs of stages before it ({names[:i]})")


def _lookup(outputs: Mapping[str, Any], stage: str, keys: str) -> Any:
  if stage not in outputs:
    raise StageError(f"${{{stage}{keys}}}: stage {stage!r} has not completed")
  value = outputs[stage]
  for key in filter(None, keys.split(".")):
    if not isinstance(value, Mapping) or key not in value:
      raise StageError(f"${{{stage}{keys}}}: stage {stage!r} has no output {keys[1:]!r} "
                       f"(it has {sorted(outputs[stage])})")
    value = value[key]
  return value


def resolve(value: Any, outputs: Mapping[str, Any]) -> Any:
  """Replaces ${stage.key} strings by stage outputs; a string that is only a reference becomes
  the output itself (a path, a dict, a list)."""
  if isinstance(value, str):
    whole = _REF.fullmatch(value)
    if whole:
      return _lookup(outputs, whole.group(1), whole.group(2))
    return _REF.sub(lambda m: str(_lookup(outputs, m.group(1), m.group(2))), value)
  if isinstance(value, Mapping):
    return {k: resolve(v, outputs) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [resolve(v, outputs) for v in value]
  return value


# ------------------------------------------------------------------------------------------
# Stage kinds. Each takes (resolved stage config as a dict, stage dir) and returns its outputs.


def _demo_data(cfg: dict, stage_dir: str) -> dict:
  from swallow_jax.demo import build_demo_data  # pylint: disable=g-import-not-at-top
  paths = build_demo_data(stage_dir, seed=int(cfg.get("seed", 0)), scale=float(cfg.get("scale", 1)))
  return {"dir": stage_dir, "raw": paths.raw, "tasks": paths.tasks, "chat_eval": paths.chat_eval}


def _jsonl_texts(paths: Sequence[str]):
  """Text lines for tokenizer training: `text` of text records, message contents of chats."""
  for path in paths:
    with open(path, encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        texts = [row["text"]] if "text" in row else [m["content"] for m in row["messages"]]
        for text in texts:
          yield from filter(None, text.split("\n"))


def _tokenizer(cfg: dict, stage_dir: str) -> dict:
  from swallow_jax import tokenizer  # pylint: disable=g-import-not-at-top
  inputs = list(cfg["inputs"].values()) if isinstance(cfg["inputs"], Mapping) else cfg["inputs"]
  model = tokenizer.train_sentencepiece(
      _jsonl_texts(inputs), int(cfg["vocab_size"]), os.path.join(stage_dir, "tokenizer"),
      model_type=cfg.get("model_type", "bpe"), shrink_to_fit=True, num_threads=1)
  tok = tokenizer.load_tokenizer(model)
  return {"model": model, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id}


def _preprocess(cfg: dict, stage_dir: str) -> dict:
  from swallow_jax import preprocess  # pylint: disable=g-import-not-at-top
  out = {}
  for name, src in cfg["sources"].items():
    summary = preprocess.preprocess(
        src["input"], cfg["tokenizer"], os.path.join(stage_dir, name), fmt=src.get("format", "text"),
        workers=int(cfg.get("workers", 1)), overwrite=True, progress=False)
    out[name] = summary["output"]
    out[f"{name}_tokens"] = summary["tokens"]
  return out


def _train(cfg: dict, stage_dir: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from swallow_jax import train  # pylint: disable=g-import-not-at-top
  train_cfg = ml_collections.ConfigDict({k: v for k, v in cfg.items() if k not in _TRAIN_STAGE_KEYS})
  trained = os.path.join(stage_dir, "TRAINED.json")
  summary = None
  if not os.path.exists(trained):
    summary = train.run(train_cfg, stage_dir)
    if summary["preempted"]:
      raise Unfinished(f"training in {stage_dir} stopped by SIGTERM at step {summary['step']}")
    if jax.process_index() == 0:
      _write_json(trained, {"step": summary["step"], "loss": summary["loss"]})
  out = {"workdir": stage_dir, "model": stage_dir}
  if not cfg.get("export_hf", True):
    return out
  if jax.process_count() > 1:
    raise Unfinished(f"{stage_dir}: trained; its HF export runs on one process: run this stage "
                     "again on one host (it will not retrain)")
  from swallow_jax.model import hf  # pylint: disable=g-import-not-at-top
  if summary is None:
    from swallow_jax import generate  # pylint: disable=g-import-not-at-top
    model_cfg, params = generate.load_model(stage_dir)
  else:
    model_cfg, params = summary["model_config"], summary["params"]
  tok = cfg.get("tokenizer") or None
  hf.save_hf(os.path.join(stage_dir, "hf"), model_cfg, params,
             dtype=cfg.get("export_dtype", "bfloat16"), tokenizer_dir=tok, progress=False)
  out["model"] = os.path.join(stage_dir, "hf")
  return out


def _chat_vector(cfg: dict, stage_dir: str) -> dict:
  from swallow_jax import chat_vector  # pylint: disable=g-import-not-at-top
  output = os.path.join(stage_dir, "model")
  shutil.rmtree(output, ignore_errors=True)  # left by an interrupted attempt
  protect = cfg.get("protect_token_ids", ())
  if protect == "llama3_chat":
    protect = chat_vector.LLAMA3_CHAT_TOKEN_IDS
  chat_vector.merge_checkpoints(
      cfg["base"], cfg["instruct"], cfg["target"], output, scales=(float(cfg.get("scale", 0.5)),),
      exclude=tuple(cfg.get("exclude", ())), protect_token_ids=tuple(protect),
      dtype=cfg.get("dtype") or None, progress=False)
  return {"model": output, "scale": float(cfg.get("scale", 0.5))}


def chat_scores(model_cfg, params, tok, rows: Sequence[Mapping[str, Any]], *,
                batch_size: int = 8, max_len: int = 2048, max_new_tokens: int = 48
                ) -> dict[str, Any]:
  """Chat-format ability on held-out single-turn chats ({"messages", "answer"} rows):
  `assistant_perplexity` of the reference replies under the Llama 3 chat template, and
  `answer_accuracy`, the share of greedy replies to the user turn that contain `answer`."""
  from swallow_jax import generate  # pylint: disable=g-import-not-at-top
  from swallow_jax.data.chat import encode_chat  # pylint: disable=g-import-not-at-top
  from swallow_jax.evaluate import loglik  # pylint: disable=g-import-not-at-top
  encoded = [encode_chat(tok, r["messages"]) for r in rows]
  lps = loglik.token_logprobs(model_cfg, params, [ids for ids, _ in encoded],
                              batch_size=batch_size, max_len=max_len)
  nll = -sum(float((lp * mask[1:]).sum()) for lp, (_, mask) in zip(lps, encoded))
  n_tokens = sum(sum(mask[1:]) for _, mask in encoded)
  prompts = [encode_chat(tok, [m for m in r["messages"] if m["role"] != "assistant"],
                         add_generation_prompt=True)[0] for r in rows]
  replies = [tok.decode(o) for o in generate.generate(
      model_cfg, params, prompts, max_new_tokens, stop_tokens=generate.stop_tokens_for(tok))]
  hits = [float(str(r["answer"]) in reply) for r, reply in zip(rows, replies)]
  return {"type": "chat", "num_examples": len(rows),
          "metrics": {"assistant_perplexity": math.exp(nll / max(n_tokens, 1)),
                      "answer_accuracy": sum(hits) / max(len(hits), 1)},
          "score": sum(hits) / max(len(hits), 1),
          "samples": [{"user": r["messages"][0]["content"], "reply": reply, "gold": r["answer"]}
                      for r, reply in list(zip(rows, replies))[:3]]}


def _eval(cfg: dict, stage_dir: str) -> dict:
  from swallow_jax import evaluate, generate, tokenizer  # pylint: disable=g-import-not-at-top
  tasks = evaluate.load_tasks(list(cfg["tasks"].values()) if isinstance(cfg["tasks"], Mapping)
                              else cfg["tasks"])
  tok = tokenizer.load_tokenizer(cfg["tokenizer"])
  max_examples = cfg.get("max_examples") or None
  chats = {}
  for name, path in (cfg.get("chat_tasks") or {}).items():
    with open(path, encoding="utf-8") as f:
      chats[name] = [json.loads(line) for line in f][:max_examples]
  models = {**cfg.get("models", {}), **cfg.get("ablations", {})}
  batch_size, max_len = int(cfg.get("batch_size", 8)), int(cfg.get("max_len", 2048))
  results = {}
  for name, path in models.items():
    out = os.path.join(stage_dir, f"{name}.json")
    if not os.path.exists(out):  # per-model results: an interrupted eval resumes at a model
      t0 = time.perf_counter()
      model_cfg, params = generate.load_model(path, cfg.get("dtype", "float32"))
      res = evaluate.run_tasks(model_cfg, params, tok, tasks, batch_size=batch_size,
                               max_len=max_len, max_examples=max_examples)
      for chat_name, rows in chats.items():
        res[chat_name] = chat_scores(model_cfg, params, tok, rows, batch_size=batch_size,
                                     max_len=min(max_len, model_cfg.max_position_embeddings))
      _write_json(out, {"model": path, "seconds": round(time.perf_counter() - t0, 2),
                        "tasks": res})
      logging.info("eval %s: %s", name, {k: _main_value(v) for k, v in res.items()})
    results[name] = out
  return {"results": results}


STAGE_KINDS: dict[str, Callable[[dict, str], dict]] = {
    "demo_data": _demo_data, "tokenizer": _tokenizer, "preprocess": _preprocess,
    "train": _train, "chat_vector": _chat_vector, "eval": _eval}
_ANY_PROCESS_KINDS = ("train",)


# ------------------------------------------------------------------------------------------
# Running.


def _write_json(path: str, obj: Any) -> None:
  """Atomic: a reader sees the old file or the whole new one, never a part."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, ensure_ascii=False, default=str)
  os.replace(tmp, path)


def _json_roundtrip(obj: Any) -> Any:
  return json.loads(json.dumps(obj, ensure_ascii=False, default=str))


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _process_info() -> tuple[int, int]:
  if "jax" not in sys.modules:  # do not start a backend just to learn there is one process
    return 0, 1
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index(), jax.process_count()


def status(config: Mapping[str, Any], workdir: str) -> dict[str, str]:
  """stage -> 'done' | 'partial' (its directory exists) | 'pending'."""
  out = {}
  for name in stage_names(config):
    d = os.path.join(workdir, name)
    out[name] = ("done" if os.path.exists(os.path.join(d, DONE)) else
                 "partial" if os.path.isdir(d) else "pending")
  return out


def run(config: Mapping[str, Any], workdir: str, only: Sequence[str] = (),
        report: bool = True) -> dict[str, Any]:
  """Runs the stages not yet done (or only `only`), then writes the report; returns it."""
  check_references(config)
  names = stage_names(config)
  unknown = set(only) - set(names)
  if unknown:
    raise ValueError(f"--stages names {sorted(unknown)} are not stages of this config {names}")
  os.makedirs(workdir, exist_ok=True)
  process, num_processes = _process_info()
  outputs: dict[str, Any] = {"workdir": os.path.abspath(workdir)}
  for name in names:
    stage_dir = os.path.join(workdir, name)
    done_path = os.path.join(stage_dir, DONE)
    kind = config[name]["kind"]
    if os.path.exists(done_path):
      done = _read_json(done_path)
      outputs[name] = done["outputs"]
      if only and name in only:
        logging.info("stage %s: already complete (delete %s to run it again)", name, stage_dir)
      if done.get("config") != _json_roundtrip(resolve(_to_plain(config[name]), outputs)):
        logging.warning("stage %s was completed with a different config; its outputs are used "
                        "as they are (delete %s to redo it)", name, stage_dir)
      continue
    if only and name not in only:
      continue
    if num_processes > 1 and kind not in _ANY_PROCESS_KINDS:
      raise StageError(f"stage {name} ({kind}) runs on one process; start it without "
                       "multi-host (e.g. --stages={name} on one host)")
    stage_cfg = resolve(_to_plain(config[name]), outputs)
    os.makedirs(stage_dir, exist_ok=True)
    logging.info("stage %s (%s): starting in %s", name, kind, stage_dir)
    t0 = time.perf_counter()
    result = STAGE_KINDS[kind](stage_cfg, stage_dir)
    seconds = round(time.perf_counter() - t0, 2)
    if process == 0:
      _write_json(done_path, {"kind": kind, "outputs": result, "seconds": seconds,
                              "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "config": stage_cfg})
    outputs[name] = result
    logging.info("stage %s: done in %.1fs", name, seconds)
  if not report or process != 0:
    return {}
  return write_report(config, workdir)


def _main_value(result: Mapping[str, Any]) -> Any:
  if result.get("score") is not None:
    return round(result["score"], 4)
  return round(result["metrics"].get("token_perplexity", math.nan), 3)


# ------------------------------------------------------------------------------------------
# Report: report.json, report.md and plots from what the stages left in their directories.

_LOWER_IS_BETTER = re.compile(r"(_ppl|perplexity|bits_per_(char|byte)|_bpc|_bpb|loss)$")
_PPL_TOLERANCE = 0.02  # relative change of a perplexity that we call "did not move"
_BLEU_TOLERANCE = 0.02  # BLEU / 100: two BLEU points


def _model_metrics(task_results: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, int]]:
  """{metric: value} and {metric: examples} for one model: a task's main score under the task's
  name; a perplexity task 'x_ppl' gives `x_ppl` (token perplexity), `x_bpc` (bits per
  character) and, if not there already, `<lang>_ppl`; a chat set 'x_chat' gives `x_chat_ppl`
  (perplexity of the assistant replies) and `x_chat_qa` (replies containing the answer)."""
  metrics, counts = {}, {}
  for task, res in task_results.items():
    n = int(res.get("num_examples", 0))
    if res["type"] == "perplexity":
      m = res["metrics"]
      bpc_key = (task[:-len("_ppl")] if task.endswith("_ppl") else task) + "_bpc"
      for key, value in ((task, m["token_perplexity"]), (bpc_key, m["bits_per_char"])):
        metrics[key], counts[key] = float(value), n
      lang_key = f"{res.get('lang', 'ja')}_ppl"
      metrics.setdefault(lang_key, float(m["token_perplexity"]))
      counts.setdefault(lang_key, n)
    elif res["type"] == "chat":
      for key, value in ((f"{task}_ppl", res["metrics"]["assistant_perplexity"]),
                         (f"{task}_qa", res["metrics"]["answer_accuracy"])):
        metrics[key], counts[key] = float(value), n
    else:
      metrics[task], counts[task] = float(res["score"]), n
  return metrics, counts


def _train_summary(stage_dir: str) -> dict[str, Any]:
  path = os.path.join(stage_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if "loss" in r]
  if not rows:
    return {}
  return {"steps": rows[-1]["step"], "first_loss": rows[0]["loss"], "final_loss": rows[-1]["loss"],
          "curve": [(r["step"], r["loss"]) for r in rows]}


def collect(config: Mapping[str, Any], workdir: str) -> dict[str, Any]:
  """report.json's content: {"models", "ablations", "stages", "comparisons", ...}."""
  names = stage_names(config)
  report_cfg = _to_plain(config.get("report", {})) or {}
  stages, models, counts, ablation_names = {}, {}, {}, set()
  for name in names:
    stage_dir = os.path.join(workdir, name)
    kind = config[name]["kind"]
    entry = {"kind": kind, "status": status(config, workdir)[name]}
    if entry["status"] == "done":
      done = _read_json(os.path.join(stage_dir, DONE))
      entry["seconds"] = done["seconds"]
    if kind == "train":
      summary = _train_summary(stage_dir)
      entry.update({k: v for k, v in summary.items() if k != "curve"})
    if kind == "eval":
      ablation_names |= set(config[name].get("ablations", {}) or {})
      for model in list(config[name].get("models", {}) or {}) + list(
          config[name].get("ablations", {}) or {}):
        path = os.path.join(stage_dir, f"{model}.json")
        if os.path.exists(path):
          models[model], counts[model] = _model_metrics(_read_json(path)["tasks"])
    stages[name] = entry
  ablations = {}
  for a in report_cfg.get("ablations", []) or []:
    name, ref = a["name"], a["reference"]
    if name in models and ref in models:
      ablations[name] = dict(
          a, metrics=models[name],
          delta={k: models[name][k] - models[ref][k] for k in models[name] if k in models[ref]},
          findings=_compare(models, counts, dict(a, before=ref, after=name)))
  comparisons = [dict(c, findings=_compare(models, counts, c))
                 for c in report_cfg.get("comparisons", []) or []
                 if c["before"] in models and c["after"] in models]
  return {"title": report_cfg.get("title", "Recipe report"),
          "models": {m: v for m, v in models.items() if m not in ablation_names},
          "ablations": ablations, "stages": stages, "comparisons": comparisons,
          "examples": {m: c for m, c in counts.items()}}


def _noise(before: float, after: float, n: int) -> float:
  """Two standard errors of the difference of two accuracies over n examples each."""
  p = min(max((before + after) / 2, 1.0 / max(n, 1)), 1 - 1.0 / max(n, 1))
  return 2 * math.sqrt(2 * p * (1 - p) / max(n, 1))


def _compare(models, counts, comparison: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Per metric: did it move between two models, which way, and was that the expectation."""
  before, after = models[comparison["before"]], models[comparison["after"]]
  expect = comparison.get("expect", {}) or {}
  out = []
  for metric in sorted(set(before) & set(after)):
    b, a = before[metric], after[metric]
    if _LOWER_IS_BETTER.search(metric):
      rel = (a - b) / b if b else 0.0
      moved = abs(rel) > _PPL_TOLERANCE
      band = None
    else:
      band = (_BLEU_TOLERANCE if "translation" in metric
              else _noise(b, a, counts[comparison["after"]].get(metric, 0)))
      moved = abs(a - b) > band
    direction = ("up" if a > b else "down") if moved else "same"
    finding = {"metric": metric, "before": b, "after": a, "direction": direction,
               "noise_band": band}
    if metric in expect:
      finding["expected"] = expect[metric]
      finding["as_expected"] = expect[metric] == direction
    out.append(finding)
  return out


def _fmt(v: float) -> str:
  return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _sentence(f: Mapping[str, Any]) -> str:
  metric, b, a = f["metric"], f["before"], f["after"]
  if f["direction"] == "same":
    how = (f"did not move ({_fmt(b)} -> {_fmt(a)}"
           + (f", within the +/-{f['noise_band']:.2f} noise band)" if f["noise_band"] is not None
              else f", under {_PPL_TOLERANCE:.0%} relative change)"))
  elif f["noise_band"] is None:
    how = f"{'rose' if f['direction'] == 'up' else 'fell'} {abs(a - b) / b:.0%} ({_fmt(b)} -> {_fmt(a)})"
  else:
    how = (f"{'rose' if f['direction'] == 'up' else 'fell'} from {_fmt(b)} to {_fmt(a)} "
           f"(beyond the +/-{f['noise_band']:.2f} noise band)")
  text = f"`{metric}` {how}"
  if "expected" in f:
    words = {"up": "rise", "down": "fall", "same": "stay"}
    text += (" -- as expected." if f["as_expected"] else
             f" -- expected to {words[f['expected']]}; that effect is absent in this run.")
  else:
    text += "."
  return text


def _findings_md(c: Mapping[str, Any]) -> list[str]:
  """A comparison in plain words: its note, what moved, what did not, what was missing."""
  lines = [c["note"].strip(), ""] if c.get("note") else []
  moved = [f for f in c["findings"] if f["direction"] != "same" or "expected" in f]
  still = [f["metric"] for f in c["findings"] if f["direction"] == "same" and "expected" not in f]
  lines += [f"- {_sentence(f)}" for f in moved]
  if still:
    lines.append(f"- Unchanged (within noise): {', '.join(f'`{m}`' for m in still)}.")
  expected = [f for f in c["findings"] if "expected" in f]
  missing = [f for f in expected if not f["as_expected"]]
  if expected:
    lines += ["", f"{len(missing)} of {len(expected)} expected effect(s) did not show up in this "
              "run." if missing else "Every expected effect showed up in this run."]
  return lines + [""]


def _markdown(report: Mapping[str, Any], config: Mapping[str, Any], plots: Sequence[str]) -> str:
  report_cfg = _to_plain(config.get("report", {})) or {}
  lines = [f"# {report['title']}", ""]
  if report_cfg.get("intro"):
    lines += [report_cfg["intro"].strip(), ""]
  checks = [(c.get("what") or c.get("name"), f) for c in
            report["comparisons"] + list(report["ablations"].values()) for f in c["findings"]
            if "expected" in f]
  if checks:
    seen = [f"{what}: `{f['metric']}`" for what, f in checks if f["as_expected"]]
    missing = [f"{what}: `{f['metric']}`" for what, f in checks if not f["as_expected"]]
    lines += ["## Summary", "",
              f"{len(seen)} of {len(checks)} expected effects showed up in this run."]
    if seen:
      lines.append(f"Seen: {'; '.join(seen)}.")
    if missing:
      lines.append(f"Not seen (the measured change was the other way or within noise): "
                   f"{'; '.join(missing)}.")
    lines.append("")
  everyone = {**report["models"], **{k: v["metrics"] for k, v in report["ablations"].items()}}
  if everyone:
    metrics = sorted({k for v in everyone.values() for k in v},
                     key=lambda k: (bool(_LOWER_IS_BETTER.search(k)), k))
    lines += ["## Scores", "",
              "Task scores are in [0, 1] (higher is better); `*_ppl` is token perplexity and "
              "`*_bpc` bits per character on held-out text (lower is better).", "",
              "| model | " + " | ".join(metrics) + " |",
              "|---|" + "---|" * len(metrics)]
    for model, m in everyone.items():
      lines.append(f"| {model} | " + " | ".join(_fmt(m[k]) if k in m else "-" for k in metrics)
                   + " |")
    lines.append("")
  if report["comparisons"]:
    lines += ["## What moved", ""]
    for c in report["comparisons"]:
      lines += [f"### {c.get('what', c['before'] + ' -> ' + c['after'])}: "
                f"`{c['before']}` -> `{c['after']}`", ""] + _findings_md(c)
  if report["ablations"]:
    lines += ["## Ablations", ""]
    for name, a in report["ablations"].items():
      lines += [f"### `{name}` vs `{a['reference']}`", ""] + _findings_md(a)
  lines += ["## Stages", "", "| stage | kind | status | seconds | steps | first loss | final loss |",
            "|---|---|---|---|---|---|---|"]
  for name, s in report["stages"].items():
    cells = [name, s["kind"], s["status"], s.get("seconds", "-"), s.get("steps", "-"),
             _fmt(s["first_loss"]) if "first_loss" in s else "-",
             _fmt(s["final_loss"]) if "final_loss" in s else "-"]
    lines.append("| " + " | ".join(str(c) for c in cells) + " |")
  total = sum(s.get("seconds", 0) for s in report["stages"].values())
  lines += ["", f"Stage time in total: {total:.0f} s (stages skipped as already done count with "
            "the time they took when they ran).", ""]
  if plots:
    lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    lines.append("")
  return "\n".join(lines)


def _plots(report: Mapping[str, Any], config: Mapping[str, Any], workdir: str) -> list[str]:
  from swallow_jax.evaluate import plots  # pylint: disable=g-import-not-at-top  (sets Agg)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  out = []
  curves = {name: _train_summary(os.path.join(workdir, name)).get("curve")
            for name, s in report["stages"].items() if s["kind"] == "train"}
  curves = {k: v for k, v in curves.items() if v}
  if curves:
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, curve) in zip(axes.flat, curves.items()):
      steps, losses = zip(*curve)
      ax.plot(steps, losses)
      ax.set_title(f"{name} ({config[name].get('data', {}).get('kind', 'pretrain')})")
      ax.set_xlabel("step")
      ax.set_ylabel("loss")
    for ax in list(axes.flat)[len(curves):]:
      ax.axis("off")
    fig.tight_layout()
    out.append(os.path.join(workdir, "loss_curves.png"))
    fig.savefig(out[-1], dpi=100)
    plt.close(fig)
  everyone = {**report["models"], **{k: v["metrics"] for k, v in report["ablations"].items()}}
  scores = {m: {k: v for k, v in vals.items() if not _LOWER_IS_BETTER.search(k)}
            for m, vals in everyone.items()}
  if scores and len({k for v in scores.values() for k in v}) >= 3:
    out.append(plots.radar_chart(scores, os.path.join(workdir, "radar.png"),
                                 title="task scores (higher is better)"))
  ppl = {m: {k: v for k, v in vals.items() if k.endswith("_ppl")} for m, vals in everyone.items()}
  if any(ppl.values()):
    out.append(plots.grouped_bars(ppl, os.path.join(workdir, "perplexity.png"),
                                  title="held-out perplexity (lower is better)",
                                  ylabel="token perplexity"))
  return out


def write_report(config: Mapping[str, Any], workdir: str) -> dict[str, Any]:
  """Writes WORKDIR/report.json, report.md and the plots; returns the report."""
  report = collect(config, workdir)
  plot_files = _plots(report, config, workdir)
  _write_json(os.path.join(workdir, "report.json"), report)
  with open(os.path.join(workdir, "report.md"), "w", encoding="utf-8") as f:
    f.write(_markdown(report, config, plot_files))
  return report


# ------------------------------------------------------------------------------------------
# Command line.

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Recipe directory: one sub-directory per stage, "
                               "report.md/.json and plots.")
_STAGES = flags.DEFINE_list("stages", [], "Run only these stages (others must be done already "
                            "if these need their outputs).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the stages and their state; run nothing.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only rewrite the report from the stages "
                                 "done so far.")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "Multi-host: jax.distributed.initialize() (auto: when a "
                                 "coordinator or a multi-process launcher is detected).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging.Filter):
  """Drops INFO chatter of Orbax and the XLA bridge so the stage and step lines stay readable."""

  def filter(self, record: logging.LogRecord) -> bool:
    noisy = "/orbax/" in record.pathname or record.pathname.endswith("xla_bridge.py")
    return record.levelno >= logging.WARNING or not noisy


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  config, workdir = _CONFIG.value, _WORKDIR.value
  try:
    check_references(config)
    if _DRY_RUN.value:
      for name, state in status(config, workdir).items():
        print(f"{name:24s} {config[name].kind:12s} {state}")
      return
    if _REPORT_ONLY.value:
      write_report(config, workdir)
      return
    from swallow_jax import parallel  # pylint: disable=g-import-not-at-top
    parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                        mode=_DISTRIBUTED.value)
    run(config, workdir, only=_STAGES.value)
  except Unfinished as e:
    logging.warning("%s; run the recipe again to continue", e)
    return
  except (StageError, ValueError, FileNotFoundError) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  if not _STAGES.value:
    print(f"report: {os.path.join(workdir, 'report.md')}")


if __name__ == "__main__":
  from swallow_jax.sweep import normalize_argv  # pylint: disable=g-import-not-at-top
  app.run(main, argv=normalize_argv(sys.argv))
