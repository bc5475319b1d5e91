r"""Scores one or more models on task files and plots the comparison.

    python -m swallow_jax.evaluate --model=base_hf,swallow_hf --names=base,swallow \
        --tokenizer=TOK --tasks=jcqa.jsonl,niilc.jsonl,mgsm.jsonl,wmt_en_ja.jsonl,ppl_ja.jsonl \
        --output=eval_out

Without --tokenizer each model's tokenizer is read from its own dir. Task file format:
`swallow_jax/evaluate/tasks.py` (a JSONL header line, then one example per line).

Writes to --output (a non-empty one only with --overwrite, which first removes the results,
plots and TensorBoard runs this command would write):
  results.json    {"models": {name: {"path", "tasks": {task: result}}}}, rewritten after EACH task
                  (a killed run keeps what it finished); a result holds type, lang, num_examples,
                  num_fewshot, metrics, main_metric, score (in [0, 1]), truncated_prompts (prompts
                  cut to max_len, BOS and their end kept), seconds and samples;
  scores.png      each task's main metric in its own unit (accuracy, character F1, BLEU 0-100);
  radar.png       scores in [0, 1] over tasks, one polygon per model (when >= 3 scored tasks);
  perplexity.png  bits per byte per perplexity task (lower is better), when there are any;
  tensorboard/<model>/  the metrics as TensorBoard scalars (eval/<task>/<metric>).
Prints a table of main metrics, or with --json the results.json content.
"""

from collections.abc import Sequence
import json
import os

from absl import flags

from swallow_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("model", None, "Models, comma-separated; each: " + cli.MODEL_HELP)
flags.DEFINE_list("names", None, "Labels for the models in results and plots (default: dir names).")
flags.DEFINE_list("tokenizer", None, "Tokenizer path for all models, or one per model.")
flags.DEFINE_list("tasks", None, "Comma-separated task files (JSONL, see evaluate/tasks.py) or "
                 "directories of them.")
flags.DEFINE_string("output", None, "Output directory for results.json and the plots.")
flags.DEFINE_bool("overwrite", False, "Replace the results and plots of a non-empty --output.")
flags.DEFINE_bool("json", False, "Print the results JSON instead of the table.")
flags.DEFINE_integer("batch_size", 8, "Sequences per forward / decode batch.")
flags.DEFINE_integer("max_len", 2048, "Longest sequence scored or generated, in tokens.")
flags.DEFINE_integer("max_examples", 0, "Score at most this many examples per task (0 = all).")
flags.DEFINE_enum("dtype", "float32", cli.DTYPES, "Parameter and compute dtype.")


def main(argv: Sequence[str]) -> None:
  del argv
  for name in ("model", "tasks", "output"):
    if not getattr(FLAGS, name):
      raise cli.UsageError(f"--{name} is required")
  models = FLAGS.model
  names = FLAGS.names or [os.path.basename(os.path.normpath(m)) for m in models]
  if len(names) != len(models) or len(set(names)) != len(names):
    raise cli.UsageError(f"--names needs {len(models)} distinct labels, got {names}")
  tokenizers = FLAGS.tokenizer or [None]
  tokenizers = tokenizers * len(models) if len(tokenizers) == 1 else tokenizers
  if len(tokenizers) != len(models):
    raise cli.UsageError(f"--tokenizer takes 1 or {len(models)} paths, got {len(tokenizers)}")

  from swallow_jax import evaluate  # pylint: disable=g-import-not-at-top
  tasks = evaluate.load_tasks(FLAGS.tasks)
  results = evaluate.evaluate_models(
      dict(zip(names, models)), tasks, dict(zip(names, tokenizers)), FLAGS.output,
      batch_size=FLAGS.batch_size, max_len=FLAGS.max_len,
      max_examples=FLAGS.max_examples or None, dtype=FLAGS.dtype, overwrite=FLAGS.overwrite)
  if FLAGS.json:
    print(json.dumps(results, ensure_ascii=False, indent=2))
    return
  per_model = {n: results["models"][n]["tasks"] for n in names}
  print("| task | metric | " + " | ".join(names) + " |")
  print("|---|---|" + "---|" * len(names))
  for task in tasks:
    first = per_model[names[0]][task.name]
    cells = [f"{per_model[n][task.name]['metrics'][first['main_metric']]:.4f}" for n in names]
    print(f"| {task.name} | {first['main_metric']} | " + " | ".join(cells) + " |")
  print(f"wrote {os.path.join(FLAGS.output, evaluate.RESULTS)}")


if __name__ == "__main__":
  cli.run(main, prog="evaluate")
