r"""Scores one or more models on task files and plots the comparison.

    python -m swallow_jax.evaluate --model=base_hf,swallow_hf --names=base,swallow \
        --tokenizer=TOK --tasks=jcqa.jsonl,niilc.jsonl,mgsm.jsonl,wmt_en_ja.jsonl,ppl_ja.jsonl \
        --output=eval_out

--model: comma-separated HF safetensors dirs or training workdirs / Orbax checkpoints.
--tokenizer: one path for all models, one per model (comma-separated), or empty to read each
model's own dir. Task file format: see `swallow_jax/evaluate/tasks.py` (a JSONL header line, then
one example per line).

Writes to --output:
  results.json    {"models": {name: {"path", "tasks": {task: result}}}}; a result holds type, lang,
                  num_examples, num_fewshot, metrics, main_metric, score (in [0, 1]) and samples;
  radar.png       main scores over tasks, one polygon per model (when >= 3 scored tasks);
  scores.png      the same as grouped bars;
  perplexity.png  bits per byte per perplexity task (lower is better), when there are any.
and prints a table of main metrics.
"""

from collections.abc import Sequence
import json
import os
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_list("model", None, "Model dirs (HF safetensors or training workdirs).")
flags.DEFINE_list("names", None, "Labels for the models in results and plots (default: dir names).")
flags.DEFINE_list("tokenizer", None, "Tokenizer path for all models, or one per model.")
flags.DEFINE_list("tasks", None, "Comma-separated task files (JSONL, see evaluate/tasks.py).")
flags.DEFINE_string("output", None, "Output directory for results.json and the plots.")
flags.DEFINE_integer("batch_size", 8, "Sequences per forward / decode batch.")
flags.DEFINE_integer("max_len", 2048, "Longest sequence scored or generated, in tokens.")
flags.DEFINE_integer("max_examples", 0, "Score at most this many examples per task (0 = all).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and compute dtype.")


def _fail(msg: str) -> None:
  sys.exit(f"error: {msg}")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in ("model", "tasks", "output"):
    if not getattr(FLAGS, name):
      raise app.UsageError(f"--{name} is required")
  models = FLAGS.model
  names = FLAGS.names or [os.path.basename(os.path.normpath(m)) for m in models]
  if len(names) != len(models) or len(set(names)) != len(names):
    raise app.UsageError(f"--names needs {len(models)} distinct labels, got {names}")
  tokenizers = FLAGS.tokenizer or [None] * len(models)
  if len(tokenizers) == 1:
    tokenizers = tokenizers * len(models)
  if len(tokenizers) != len(models):
    raise app.UsageError(f"--tokenizer takes 1 or {len(models)} paths, got {len(tokenizers)}")

  from swallow_jax import evaluate  # pylint: disable=g-import-not-at-top
  from swallow_jax import generate as gen  # pylint: disable=g-import-not-at-top
  from swallow_jax.evaluate import plots  # pylint: disable=g-import-not-at-top
  try:
    tasks = evaluate.load_tasks(FLAGS.tasks)
  except (OSError, ValueError) as e:
    _fail(str(e))
  for m in models:
    if not os.path.isdir(m):
      _fail(f"model directory not found: {m}")

  os.makedirs(FLAGS.output, exist_ok=True)
  all_results = {}
  for path, name, tok_path in zip(models, names, tokenizers):
    config, params, tokenizer = gen.load_for_cli(path, tok_path, FLAGS.dtype,
                                                 per_layer=True)  # generation decodes per layer
    try:
      results = evaluate.run_tasks(config, params, tokenizer, tasks, batch_size=FLAGS.batch_size,
                                   max_len=FLAGS.max_len, max_examples=FLAGS.max_examples or None)
    except ValueError as e:
      _fail(f"{name}: {e}")
    all_results[name] = {"path": path, "tasks": results}
    del params
  with open(os.path.join(FLAGS.output, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"models": all_results}, f, ensure_ascii=False, indent=2)

  scores = {n: {t: r["score"] for t, r in m["tasks"].items() if r["score"] is not None}
            for n, m in all_results.items()}
  bpb = {n: {t: r["metrics"]["bits_per_byte"] for t, r in m["tasks"].items()
             if r["type"] == "perplexity"} for n, m in all_results.items()}
  if any(scores.values()):
    plots.grouped_bars(scores, os.path.join(FLAGS.output, "scores.png"), ylabel="score")
    if len(next(iter(scores.values()))) >= 3:
      plots.radar_chart(scores, os.path.join(FLAGS.output, "radar.png"))
  if any(bpb.values()):
    plots.grouped_bars(bpb, os.path.join(FLAGS.output, "perplexity.png"),
                       ylabel="bits per byte (lower is better)")

  print("| task | metric | " + " | ".join(names) + " |")
  print("|---|---|" + "---|" * len(names))
  for task in tasks:
    first = all_results[names[0]]["tasks"][task.name]
    cells = [f"{all_results[n]['tasks'][task.name]['metrics'][first['main_metric']]:.4f}"
             for n in names]
    print(f"| {task.name} | {first['main_metric']} | " + " | ".join(cells) + " |")
  print(f"wrote {FLAGS.output}/results.json")


if __name__ == "__main__":
  app.run(main)
