"""Evaluation harness: task files (tasks.py), scorers (scoring.py), log-likelihoods (loglik.py),
plots (plots.py), chat sets scored under the chat template (chat.py), task files from the public
Swallow evaluation sets (prepare.py). One model in memory: `run_tasks`; models on disk, with
results.json after each task, plots and TensorBoard scalars: `evaluate_models` (the entry of the
command line and of the recipe's eval stage).

Each result: {"type", "lang", "num_examples", "num_fewshot", "metrics": {...}, "main_metric"
(MAIN_METRIC below), "score" (main metric in [0, 1]; None for perplexity), "truncated_prompts",
"samples": first few prompts with predictions}.
How each type is scored: docs/evaluation.md. The command line: `python -m swallow_jax.evaluate`.
"""

from collections.abc import Mapping, Sequence
import logging
import os
import shutil
import statistics
import time
from typing import Any

from swallow_jax import cli
from swallow_jax import decode
from swallow_jax import fileio
from swallow_jax.evaluate import loglik
from swallow_jax.evaluate import scoring
from swallow_jax.evaluate.chat import load_chats, score_chats
from swallow_jax.evaluate.tasks import Task, load_task, load_tasks

__all__ = ["evaluate_models", "load_chats", "load_task", "load_tasks", "run_task", "run_tasks",
           "score_chats", "Task"]

RESULTS = "results.json"
NUM_SAMPLES = 3  # examples per task echoed into the results for inspection
MAIN_METRIC = {"multiple_choice": "acc", "qa": "char_f1", "math": "accuracy",
               "translation": "bleu", "perplexity": "bits_per_byte"}


def fit_prompt(tokenizer, ids: Sequence[int], room: int, truncated: list[int]) -> list[int]:
  """`ids` cut to `room` tokens keeping the tokenizer's BOS (if it adds one) and the END of the
  prompt (where the question is); appends 1 to `truncated` when it had to cut."""
  ids = list(ids)
  if len(ids) <= room:
    return ids
  bos = tokenizer.bos_prefix()
  head = bos if bos and ids[:len(bos)] == bos else []
  if room <= len(head):
    raise ValueError(f"max_len leaves {room} tokens for a prompt; that is too few")
  truncated.append(1)
  return head + ids[len(ids) - (room - len(head)):]


def _multiple_choice(config, params, tokenizer, task: Task, examples, opts) -> tuple[dict, list]:
  requests = []
  for ex in examples:
    ctx = tokenizer.encode(task.prompt(ex), add_bos=True)
    conts = [tokenizer.encode(task.target_delimiter + c) for c in ex["choices"]]
    ctx = fit_prompt(tokenizer, ctx, opts["max_len"] - max(map(len, conts)), opts["truncated"])
    requests += [(ctx, cont) for cont in conts]
  lps = iter(loglik.continuation_logprobs(config, params, requests, max_len=opts["max_len"],
                                          batch_size=opts["batch_size"]))
  acc, acc_norm, samples = [], [], []
  for ex in examples:
    scores = [next(lps) for _ in ex["choices"]]
    norm = [s / max(1, len(task.target_delimiter + c)) for s, c in zip(scores, ex["choices"])]
    pred = max(range(len(scores)), key=scores.__getitem__)
    acc.append(float(pred == ex["answer"]))
    acc_norm.append(float(max(range(len(norm)), key=norm.__getitem__) == ex["answer"]))
    samples.append({"prediction": ex["choices"][pred], "gold": ex["choices"][ex["answer"]],
                    "logprobs": scores})
  return {"acc": statistics.fmean(acc), "acc_norm": statistics.fmean(acc_norm)}, samples


def _generated(config, params, tokenizer, task: Task, examples, opts) -> tuple[dict, list]:
  """qa, math and translation: greedy answers, cut at the task's stop strings, against golds."""
  room = opts["max_len"] - task.max_new_tokens
  if room < 1:
    raise ValueError(f"task {task.name}: max_new_tokens={task.max_new_tokens} leaves no room "
                     f"for the prompt in max_len={opts['max_len']}")
  prompts = [fit_prompt(tokenizer, tokenizer.encode(task.prompt(ex), add_bos=True), room,
                        opts["truncated"]) for ex in examples]
  outs = decode.generate(config, params, prompts, task.max_new_tokens,
                         stop_tokens=decode.stop_tokens_for(tokenizer),
                         batch_size=opts["batch_size"])
  preds = [scoring.cut_at_stop(tokenizer.decode(o), task.stop).strip() for o in outs]
  golds = [ex["target" if task.type == "translation" else "answer"] for ex in examples]
  if task.type == "translation":
    tok = scoring.bleu_tokenizer(task.lang)
    return ({"bleu": scoring.bleu(preds, golds, tokenize=tok)},
            [{"prediction": p, "gold": g, "bleu_tokenize": tok} for p, g in zip(preds, golds)])
  scorers = ({"char_f1": scoring.char_f1, "exact_match": scoring.exact_match}
             if task.type == "qa" else {"accuracy": scoring.numeric_match})
  metrics = {k: statistics.fmean(fn(p, g) for p, g in zip(preds, golds))
             for k, fn in scorers.items()}
  return metrics, [{"prediction": p, "gold": g} for p, g in zip(preds, golds)]


def _perplexity(config, params, tokenizer, task, examples, opts):
  seqs = [tokenizer.encode(ex["text"], add_bos=True) for ex in examples]
  nlls = loglik.text_nll(config, params, seqs, batch_size=opts["batch_size"],
                         max_len=opts["max_len"])
  by_lang: dict[str, list] = {}
  for ex, (nll, n) in zip(examples, nlls):
    by_lang.setdefault(ex.get("lang", task.lang), []).append(
        (nll, n, len(ex["text"]), len(ex["text"].encode("utf-8"))))

  def pooled(rows):
    return loglik.perplexity_metrics(*(sum(col) for col in zip(*rows)))

  metrics = pooled([r for rows in by_lang.values() for r in rows])
  if len(by_lang) > 1:
    metrics["by_lang"] = {lang: pooled(rows) for lang, rows in sorted(by_lang.items())}
  return metrics, [{"tokens": n, "nll": nll} for nll, n in nlls]


_RUNNERS = {"multiple_choice": _multiple_choice, "qa": _generated, "math": _generated,
            "translation": _generated, "perplexity": _perplexity}


def run_task(config, params, tokenizer, task: Task, *, batch_size: int = 8, max_len: int = 2048,
             max_examples: int | None = None) -> dict[str, Any]:
  """Runs and scores one task; the result also counts `truncated_prompts` (prompts cut to fit
  max_len, keeping BOS and their end), warned about once."""
  opts = {"batch_size": batch_size, "max_len": min(max_len, config.max_position_embeddings),
          "truncated": []}
  examples = task.examples[:max_examples] if max_examples else task.examples
  metrics, samples = _RUNNERS[task.type](config, params, tokenizer, task, examples, opts)
  if truncated := len(opts["truncated"]):
    logging.warning("task %s: %d of %d prompts exceed max_len=%d and were cut to their last "
                    "tokens (BOS kept)", task.name, truncated, len(examples), opts["max_len"])
  main = MAIN_METRIC[task.type]
  score = None if task.type == "perplexity" else metrics[main] / (
      100.0 if task.type == "translation" else 1.0)
  return {
      "type": task.type, "lang": task.lang, "num_examples": len(examples),
      "num_fewshot": len(task.fewshot), "metrics": metrics, "main_metric": main,
      "score": score, "truncated_prompts": truncated,
      "samples": [{**({} if task.type == "perplexity" else {"prompt": task.prompt(ex)}), **s}
                  for ex, s in zip(examples[:NUM_SAMPLES], samples)],
  }


def run_tasks(config, params, tokenizer, tasks: Sequence[Task | str] | str, *,
              batch_size: int = 8, max_len: int = 2048,
              max_examples: int | None = None) -> dict[str, dict[str, Any]]:
  """Runs and scores tasks (Task objects or task-file paths); returns {task name: result}."""
  tasks = (load_tasks(tasks) if isinstance(tasks, str)
           else [t if isinstance(t, Task) else load_task(t) for t in tasks])
  return {t.name: run_task(config, params, tokenizer, t, batch_size=batch_size, max_len=max_len,
                           max_examples=max_examples) for t in tasks}


def prepare_output(output: str, models: Sequence[str], *, overwrite: bool = False,
                   resume: bool = False) -> None:
  """Checks `output` before any work: a non-empty directory is an error unless `overwrite`
  (then what this run would write, results, plots and TensorBoard runs, is removed first, so no
  stale plot or result survives) or `resume` (results.json is kept and its finished tasks are
  not run again)."""
  from swallow_jax.evaluate import plots  # pylint: disable=g-import-not-at-top  (matplotlib)
  if os.path.isdir(output) and os.listdir(output) and not (overwrite or resume):
    raise FileExistsError(f"{output} is not empty (pass --overwrite to replace its results)")
  for path in ([os.path.join(output, f) for f in (RESULTS, *plots.PLOT_FILES)]
               + [os.path.join(output, "tensorboard", m) for m in models]):
    if resume and os.path.basename(path) == RESULTS:
      continue
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
  os.makedirs(output, exist_ok=True)


def _log_scalars(output: str, model: str, results: Mapping[str, Mapping[str, Any]]) -> None:
  """One TensorBoard run per model under output/tensorboard/<model>: every numeric metric."""
  import tensorboardX  # pylint: disable=g-import-not-at-top
  with tensorboardX.SummaryWriter(os.path.join(output, "tensorboard", model)) as writer:
    for task, res in results.items():
      for metric, value in res["metrics"].items():
        if isinstance(value, (int, float)):
          writer.add_scalar(f"eval/{task}/{metric}", float(value), 0)


def evaluate_models(models: Mapping[str, str], tasks: Sequence[Task | str],
                    tokenizer: str | Mapping[str, str | None] | None, output: str, *,
                    chats: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                    batch_size: int = 8, max_len: int = 2048, max_examples: int | None = None,
                    dtype: str = "float32", overwrite: bool = False,
                    resume: bool = False, progress: bool = True) -> dict[str, Any]:
  """Scores every model on every task and chat set, writing output/results.json ({"models": {name:
  {"path", "tasks": {task: result}}}}, also returned) after EACH task, then the plots and
  TensorBoard scalars. models: {name: path} as `model.io.resolve` takes them; tokenizer: one path,
  one per model name, or None (each model's own files); chats: {set name: rows} for `score_chats`;
  resume: keep the finished (model, task) results in output/results.json of the same model path."""
  tasks = {t.name: t for t in (x if isinstance(x, Task) else load_task(x) for x in tasks)}
  chats = dict(chats or {})
  prepare_output(output, list(models), overwrite=overwrite, resume=resume)
  saved = os.path.join(output, RESULTS)
  results = fileio.read_json(saved) if resume and os.path.exists(saved) else {"models": {}}
  results["models"] = {n: m for n, m in results["models"].items()
                       if n in models and m.get("path") == models[n]}
  names = [*tasks, *chats]
  for name, path in models.items():
    entry = results["models"].setdefault(name, {"path": path, "tasks": {}})
    todo = [n for n in names if n not in entry["tasks"]]
    if todo:
      tok_path = tokenizer.get(name) if isinstance(tokenizer, Mapping) else tokenizer
      config, params, tok = decode.load_for_decoding(path, tok_path, dtype, progress=progress)
      bar = cli.progress(total=len(todo), desc=f"eval {name}", unit="task", enabled=progress)
      for task_name in todo:
        t0 = time.perf_counter()
        if task_name in chats:
          res = score_chats(config, params, tok, chats[task_name], batch_size=batch_size,
                            max_len=min(max_len, config.max_position_embeddings))
        else:
          res = run_task(config, params, tok, tasks[task_name], batch_size=batch_size,
                         max_len=max_len, max_examples=max_examples)
        res["seconds"] = round(time.perf_counter() - t0, 2)
        entry["tasks"][task_name] = res
        fileio.write_json(saved, results)
        bar.set_postfix_str(f"{task_name} {res['seconds']:.1f}s", refresh=False)
        bar.update()
      bar.close()
      del params
    entry["tasks"] = {n: entry["tasks"][n] for n in names}
    _log_scalars(output, name, entry["tasks"])
  fileio.write_json(saved, results)
  from swallow_jax.evaluate import plots  # pylint: disable=g-import-not-at-top  (matplotlib)
  plots.plot_results({n: m["tasks"] for n, m in results["models"].items()}, output)
  return results
