r"""Evaluation task files and few-shot prompts.

A task file is JSONL. The FIRST line is a header object, every further line one example:

    {"task": "jcommonsenseqa", "type": "multiple_choice", "lang": "ja", "num_fewshot": 3}
    {"question": "電車に乗るときに必要なものは?", "choices": ["切符", "傘", "鍋"], "answer": 0}
    ...

Header keys (`task` and `type` are required; the rest have defaults):
  task              name used in results and plots.
  type              multiple_choice | qa | math | translation | perplexity.
  lang              "ja" or "en" (default "ja"); for translation the TARGET language.
  num_fewshot       number of demonstrations in each prompt (default 0).
  fewshot           optional list of example objects used as demonstrations; when absent, the first
                    `num_fewshot` examples of the file are the demonstrations and are not scored.
  instruction       text put once before the demonstrations (default none).
  template          str.format template over an example's fields giving its prompt (defaults below).
  target_delimiter  between a prompt and its target (default "" for ja, " " for en).
  fewshot_delimiter between demonstrations (default "\n\n").
  max_new_tokens    generation budget (qa 64, math 256, translation 256).
  stop              strings that end a generated answer
                    (qa ["\n"], math ["\n\n"], translation ["\n"]).

Example fields by type (optional ones in brackets):
  multiple_choice  question, choices (list of str), answer (index)           -> acc, acc_norm
  qa               question, answer (str or list of aliases), [context]      -> char_f1, exact_match
  math             question, answer (number), [solution: worked answer shown in demonstrations]
                                                                        -> accuracy (last number)
  translation      source, target                                            -> bleu (sacrebleu)
  perplexity       text, [lang]            -> bits_per_byte, bits_per_char, token_perplexity
Multiple choice scores each choice by the summed log-likelihood of target_delimiter + choice after
the prompt (acc); acc_norm divides by the choice's length in characters (lm-eval-harness's rule).
Default templates: _TEMPLATES below (translation with lang "ja" is en->ja, with "en" ja->en).
Multiple-choice templates may use {choices_text} (the choices joined by ", ").

The Swallow evaluation sets (JCommonsenseQA, JSQuAD, JEMHopQA, NIILC, MGSM, WMT20, perplexity
text) are converted from their public releases by `python -m swallow_jax.evaluate.prepare`.
"""

from collections.abc import Iterable, Sequence
import dataclasses
import glob
import os
from typing import Any

from swallow_jax import fileio

TYPES = ("multiple_choice", "qa", "math", "translation", "perplexity")

# Default prompt templates by (type, lang); fields come from the example.
_TEMPLATES = {
    ("multiple_choice", "ja"): "質問: {question}\n選択肢: {choices_text}\n回答:",
    ("multiple_choice", "en"): "Question: {question}\nChoices: {choices_text}\nAnswer:",
    ("qa", "ja"): "質問: {question}\n回答:",
    ("qa", "en"): "Question: {question}\nAnswer:",
    ("math", "ja"): "問題: {question}\nステップごとの答え:",
    ("math", "en"): "Question: {question}\nStep-by-step answer:",
    ("translation", "ja"): "英語: {source}\n日本語:",
    ("translation", "en"): "日本語: {source}\n英語:",
}
_QA_CONTEXT = {"ja": "文脈: {context}\n", "en": "Context: {context}\n"}
_MAX_NEW_TOKENS = {"qa": 64, "math": 256, "translation": 256}
_STOP = {"qa": ["\n"], "math": ["\n\n"], "translation": ["\n"]}
_REQUIRED = {
    "multiple_choice": ("question", "choices", "answer"),
    "qa": ("question", "answer"),
    "math": ("question", "answer"),
    "translation": ("source", "target"),
    "perplexity": ("text",),
}
_HEADER_KEYS = {"task", "type", "lang", "num_fewshot", "fewshot", "instruction", "template",
                "target_delimiter", "fewshot_delimiter", "max_new_tokens", "stop"}


@dataclasses.dataclass(frozen=True)
class Task:
  """A loaded task: the header settings plus scored examples and demonstrations."""
  name: str
  type: str
  lang: str
  examples: tuple[dict[str, Any], ...]
  fewshot: tuple[dict[str, Any], ...] = ()
  instruction: str = ""
  template: str = ""
  target_delimiter: str = ""
  fewshot_delimiter: str = "\n\n"
  max_new_tokens: int = 0
  stop: tuple[str, ...] = ()

  def prompt(self, example: dict[str, Any]) -> str:
    """Instruction + demonstrations (prompt and target each) + this example's prompt."""
    parts = [self._fill(d) + self.target_delimiter + target_text(self, d) for d in self.fewshot]
    parts.append(self._fill(example))
    return self.instruction + self.fewshot_delimiter.join(parts)

  def _fill(self, example: dict[str, Any]) -> str:
    fields = dict(example)
    if "choices" in example:
      fields["choices_text"] = ", ".join(example["choices"])
    try:
      return self.template.format(**fields)
    except KeyError as e:
      raise ValueError(f"task {self.name}: template field {e} missing from {example}") from None


def target_text(task: Task, example: dict[str, Any]) -> str:
  """The text a demonstration shows as its answer."""
  if task.type == "multiple_choice":
    return example["choices"][example["answer"]]
  if task.type == "qa":
    return example["answer"] if isinstance(example["answer"], str) else example["answer"][0]
  if task.type == "math":
    return str(example.get("solution", example["answer"]))
  if task.type == "translation":
    return example["target"]
  raise ValueError(f"task type {task.type} has no target text")


def make_task(header: dict[str, Any], examples: Sequence[dict[str, Any]], source: str = "") -> Task:
  """Validates a header and its examples and fills the defaults."""
  where = source or header.get("task", "?")
  for key in ("task", "type"):
    if key not in header:
      raise ValueError(f"{where}: header needs {key!r} (got keys {sorted(header)})")
  if unknown := set(header) - _HEADER_KEYS:
    raise ValueError(f"{where}: unknown header keys {sorted(unknown)}")
  ttype, lang = header["type"], header.get("lang", "ja")
  if ttype not in TYPES:
    raise ValueError(f"{where}: type {ttype!r} is not one of {TYPES}")
  if lang not in ("ja", "en"):
    raise ValueError(f"{where}: lang {lang!r} is not 'ja' or 'en'")
  k = int(header.get("num_fewshot", 0))
  examples = list(examples)
  for i, ex in enumerate(examples + list(header.get("fewshot", []))):
    if missing := [f for f in _REQUIRED[ttype] if f not in ex]:
      raise ValueError(f"{where}: example {i} lacks {missing} needed by type {ttype}")
    if ttype == "multiple_choice" and not 0 <= ex["answer"] < len(ex["choices"]):
      raise ValueError(f"{where}: example {i} answer {ex['answer']} is not a choice index")
  if ttype == "perplexity" and k:
    raise ValueError(f"{where}: perplexity tasks take no few-shot examples")
  demos, examples = ((list(header["fewshot"])[:k], examples) if "fewshot" in header
                     else (examples[:k], examples[k:]))
  if len(demos) < k:
    raise ValueError(f"{where}: num_fewshot={k} but only {len(demos)} demonstrations")
  if not examples:
    raise ValueError(f"{where}: no examples to score")
  template = header.get("template") or _TEMPLATES.get((ttype, lang), "")
  if ttype == "qa" and "template" not in header and all("context" in e for e in examples):
    template = _QA_CONTEXT[lang] + template
  return Task(
      name=header["task"], type=ttype, lang=lang, examples=tuple(examples), fewshot=tuple(demos),
      instruction=header.get("instruction", ""), template=template,
      target_delimiter=header.get("target_delimiter", "" if lang == "ja" else " "),
      fewshot_delimiter=header.get("fewshot_delimiter", "\n\n"),
      max_new_tokens=int(header.get("max_new_tokens", _MAX_NEW_TOKENS.get(ttype, 0))),
      stop=tuple(header.get("stop", _STOP.get(ttype, ()))))


def load_task(path: str) -> Task:
  """Reads one JSONL task file (header line, then examples)."""
  rows = [row for _, row in fileio.read_jsonl(path)]
  if not rows:
    raise ValueError(f"{path}: empty task file")
  return make_task(rows[0], rows[1:], source=path)


def load_tasks(paths: str | Iterable[str]) -> list[Task]:
  """Loads task files from a list of paths or one comma-separated string, a directory standing
  for its *.jsonl files (sorted); names must be unique."""
  if isinstance(paths, str):
    paths = [p for p in paths.split(",") if p]
  tasks = [load_task(f) for p in paths for f in (
      sorted(glob.glob(os.path.join(p, "*.jsonl"))) if os.path.isdir(p) else [p])]
  names = [t.name for t in tasks]
  if len(set(names)) != len(names):
    raise ValueError(f"duplicate task names: {names}")
  return tasks


def write_task(path: str, header: dict[str, Any], examples: Iterable[dict[str, Any]]) -> None:
  """Writes a task file in the format above, atomically (used by prepare, the demo and tests)."""
  fileio.write_jsonl(path, [header, *examples])
