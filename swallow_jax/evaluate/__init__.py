"""Evaluation harness: task files (tasks.py), scorers (scoring.py), log-likelihoods (loglik.py),
plots (plots.py), chat sets scored under the chat template (chat.py), task files built from the
public releases of the Swallow evaluation sets (prepare.py, `python -m swallow_jax.evaluate.prepare`).

    from swallow_jax import evaluate
    results = evaluate.run_tasks(config, params, tokenizer, ["ja_mc.jsonl", "niilc.jsonl"])
    results["niilc"]["score"]        # main metric scaled to [0, 1] (None for perplexity)

Each result: {"type", "lang", "num_examples", "num_fewshot", "metrics": {...}, "main_metric",
"score", "samples": first few prompts with predictions}. Main metrics: multiple_choice acc,
qa char_f1, math accuracy, translation bleu (score = bleu / 100), perplexity bits_per_byte.
Generation is greedy with the tokenizer's end tokens as stop tokens, and the answer is cut at the
task's stop strings. The command line is `python -m swallow_jax.evaluate --help`.
"""

from collections.abc import Sequence
import statistics
from typing import Any

from swallow_jax.evaluate import loglik
from swallow_jax.evaluate import scoring
from swallow_jax.evaluate.chat import load_chats, score_chats
from swallow_jax.evaluate.tasks import Task, load_task, load_tasks

__all__ = ["load_chats", "load_task", "load_tasks", "run_tasks", "score_chats", "Task"]

NUM_SAMPLES = 3  # examples per task echoed into the results for inspection
MAIN_METRIC = {"multiple_choice": "acc", "qa": "char_f1", "math": "accuracy",
               "translation": "bleu", "perplexity": "bits_per_byte"}


def _multiple_choice(config, params, tokenizer, task: Task, examples, opts) -> tuple[dict, list]:
  requests, spans = [], []
  for ex in examples:
    ctx = tokenizer.encode(task.prompt(ex), add_bos=True)
    start = len(requests)
    requests += [(ctx, tokenizer.encode(task.target_delimiter + c)) for c in ex["choices"]]
    spans.append((start, len(requests)))
  lps = loglik.continuation_logprobs(config, params, requests, batch_size=opts["batch_size"],
                                     max_len=opts["max_len"])
  acc, acc_norm, samples = [], [], []
  for ex, (a, b) in zip(examples, spans):
    scores = lps[a:b]
    norm = [s / max(1, len(task.target_delimiter + c)) for s, c in zip(scores, ex["choices"])]
    pred = max(range(len(scores)), key=scores.__getitem__)
    acc.append(float(pred == ex["answer"]))
    acc_norm.append(float(max(range(len(norm)), key=norm.__getitem__) == ex["answer"]))
    samples.append({"prediction": ex["choices"][pred], "gold": ex["choices"][ex["answer"]],
                    "logprobs": scores})
  return {"acc": statistics.fmean(acc), "acc_norm": statistics.fmean(acc_norm)}, samples


def _generate_answers(config, params, tokenizer, task: Task, examples, opts) -> list[str]:
  from swallow_jax import generate as gen  # pylint: disable=g-import-not-at-top
  room = opts["max_len"] - task.max_new_tokens
  if room < 1:
    raise ValueError(f"task {task.name}: max_new_tokens={task.max_new_tokens} leaves no room "
                     f"for the prompt in max_len={opts['max_len']}")
  prompts = [tokenizer.encode(task.prompt(ex), add_bos=True)[-room:] for ex in examples]
  outs = gen.generate(config, params, prompts, task.max_new_tokens,
                      stop_tokens=gen.stop_tokens_for(tokenizer), batch_size=opts["batch_size"])
  return [scoring.cut_at_stop(tokenizer.decode(o), task.stop).strip() for o in outs]


def _qa(config, params, tokenizer, task, examples, opts):
  preds = _generate_answers(config, params, tokenizer, task, examples, opts)
  golds = [ex["answer"] for ex in examples]
  metrics = {
      "char_f1": statistics.fmean(scoring.char_f1(p, g) for p, g in zip(preds, golds)),
      "exact_match": statistics.fmean(scoring.exact_match(p, g) for p, g in zip(preds, golds)),
  }
  return metrics, [{"prediction": p, "gold": g} for p, g in zip(preds, golds)]


def _math(config, params, tokenizer, task, examples, opts):
  preds = _generate_answers(config, params, tokenizer, task, examples, opts)
  golds = [ex["answer"] for ex in examples]
  acc = statistics.fmean(scoring.numeric_match(p, g) for p, g in zip(preds, golds))
  return {"accuracy": acc}, [{"prediction": p, "gold": g} for p, g in zip(preds, golds)]


def _translation(config, params, tokenizer, task, examples, opts):
  preds = _generate_answers(config, params, tokenizer, task, examples, opts)
  golds = [ex["target"] for ex in examples]
  tok = scoring.bleu_tokenizer(task.lang)
  metrics = {"bleu": scoring.bleu(preds, golds, tokenize=tok)}
  return metrics, [{"prediction": p, "gold": g, "bleu_tokenize": tok} for p, g in zip(preds, golds)]


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


_RUNNERS = {"multiple_choice": _multiple_choice, "qa": _qa, "math": _math,
            "translation": _translation, "perplexity": _perplexity}


def run_tasks(config, params, tokenizer, tasks: Sequence[Task | str] | str, *,
              batch_size: int = 8, max_len: int = 2048,
              max_examples: int | None = None) -> dict[str, dict[str, Any]]:
  """Runs and scores tasks (Task objects or task-file paths); returns {task name: result}."""
  if isinstance(tasks, str):
    tasks = load_tasks(tasks)
  tasks = [t if isinstance(t, Task) else load_task(t) for t in tasks]
  opts = {"batch_size": batch_size, "max_len": min(max_len, config.max_position_embeddings)}
  results = {}
  for task in tasks:
    examples = task.examples[:max_examples] if max_examples else task.examples
    metrics, samples = _RUNNERS[task.type](config, params, tokenizer, task, examples, opts)
    main = MAIN_METRIC[task.type]
    score = None if task.type == "perplexity" else metrics[main] / (
        100.0 if task.type == "translation" else 1.0)
    results[task.name] = {
        "type": task.type, "lang": task.lang, "num_examples": len(examples),
        "num_fewshot": len(task.fewshot), "metrics": metrics, "main_metric": main,
        "score": score,
        "samples": [{**({} if task.type == "perplexity" else {"prompt": task.prompt(ex)}), **s}
                    for ex, s in zip(examples[:NUM_SAMPLES], samples)],
    }
  return results
