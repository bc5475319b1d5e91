r"""Task files (evaluate/tasks.py format) from the public releases of the Swallow evaluation sets.

    python -m swallow_jax.evaluate.prepare --task=jcommonsenseqa \
        --input=JGLUE/datasets/jcommonsenseqa-v1.1/valid-v1.1.json \
        --fewshot_input=JGLUE/datasets/jcommonsenseqa-v1.1/train-v1.1.json \
        --output=ROOT/tasks/jcommonsenseqa.jsonl

Nothing is downloaded: fetch the files first (where from: /work/notes/eval_prepare.md and the
table below). The demonstrations are the first K (--num_fewshot) examples, in file order, of
--fewshot_input, or without it of --input (which are then not scored: the task-file rule).

task            --input (and --fewshot_input) format                       type, K
jcommonsenseqa  JGLUE JSONL (valid-v1.1.json; train-v1.1.json): q_id,      multiple_choice, 4
                question, choice0..choice4, label
jsquad          JGLUE SQuAD-v1.1 JSON (valid-v1.1.json; train-v1.1.json)   qa with context, 4
jemhopqa        JEMHopQA JSON list (corpus/dev.json; corpus/train.json):   qa, 4
                question, answer
niilc           NIILC-ECQA2015_test.xml (NIILC-ECQA2015_dev.xml) of        qa, 4
                mynlp/niilc-qa, or llm-jp-eval's evaluation JSON
                ({"samples": [{"input": "質問：...", "output": ...}]})
mgsm_ja         TSV question<TAB>answer (mgsm_ja.tsv); demonstration       math, 4
                TSVs may hold a worked answer ("ステップごとの答え：...")
wmt20_en_ja     SOURCE,REFERENCE plain-text files (one segment a line),     translation, 4
wmt20_ja_en     or one TSV source<TAB>reference, as written by
                `sacrebleu -t wmt20 -l en-ja --echo src ref` (wmt20/dev for
                demonstrations)
ja_ppl, en_ppl  JSONL with a `text` field                                  perplexity, 0

4-shot is the Swallow setting for every scored task, and the prompts follow llm-jp-eval and the
JP LM Evaluation Harness closely but not exactly (JCommonsenseQA is scored by choice
log-likelihood): docs/evaluation.md says what is confirmed and where. Scores compare models
evaluated here, not digit for digit with the Swallow leaderboard.

Bad input stops with one line naming the file and the line (or, inside a JSON or XML document,
the item) at fault. An existing non-empty --output is refused unless --overwrite.
"""

from collections.abc import Callable, Sequence
import os
from typing import Any
import xml.etree.ElementTree as ET

from absl import flags

from swallow_jax import cli
from swallow_jax import fileio
from swallow_jax.evaluate import scoring
from swallow_jax.evaluate.tasks import make_task, write_task

# Confirmed Swallow setting for every task below except perplexity (see the module docstring).
SWALLOW_NUM_FEWSHOT = 4


class InputError(ValueError):
  """A source file that does not have the documented format; the message names file and line."""


Example = dict[str, Any]


# Readers: list of source paths -> examples in the harness's fields.


def _existing(path: str) -> str:
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file")
  return path


def _one(paths: Sequence[str], what: str) -> str:
  if len(paths) != 1:
    raise InputError(f"{what} takes one input file, got {len(paths)}: {list(paths)}")
  return _existing(paths[0])


def _lines(path: str, segments: bool = False):
  """(line number, line without its newline or a BOM) for the non-blank lines of a UTF-8 text
  file; with `segments` (one segment a line) a blank line is an error."""
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        raise InputError(f"{path}:{n}: not UTF-8 ({e.reason})") from None
      if line.strip():
        yield n, line
      elif segments:
        raise InputError(f"{path}:{n}: empty segment")


def _jsonl(path: str):
  try:
    yield from fileio.read_jsonl(path)
  except ValueError as e:  # the same one-line message, as this module's input error
    raise InputError(str(e)) from None


def _json(path: str) -> Any:
  try:
    return fileio.read_json(path)
  except ValueError as e:  # the same one-line message, as this module's input error
    raise InputError(str(e)) from None


def _text(value: Any, where: str, key: str) -> str:
  """A non-empty string field; `where` names the file and line or item."""
  if not isinstance(value, dict) or key not in value:
    raise InputError(f"{where}: no {key!r}")
  if not isinstance(value[key], str) or not value[key].strip():
    raise InputError(f"{where}: {key!r} must be a non-empty string, got {value[key]!r}")
  return value[key].strip()


def read_jcommonsenseqa(paths: Sequence[str]) -> list[Example]:
  """Multiple-choice examples from JCommonsenseQA's JSONL (one input file)."""
  path = _one(paths, "jcommonsenseqa")
  out = []
  for n, row in _jsonl(path):
    where = f"{path}:{n}"
    choices = [_text(row, where, f"choice{i}") for i in range(5)]
    label = row.get("label")
    if not isinstance(label, int) or not 0 <= label < 5:
      raise InputError(f"{where}: 'label' must be an integer 0..4, got {label!r}")
    out.append({"question": _text(row, where, "question"), "choices": choices, "answer": label})
  return out


def read_jsquad(paths: Sequence[str]) -> list[Example]:
  """QA examples from JSQuAD's SQuAD-format JSON."""
  path = _one(paths, "jsquad")
  doc = _json(path)
  if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
    raise InputError(f"{path}: expected SQuAD JSON, an object with a 'data' list")
  out = []
  for i, article in enumerate(doc["data"]):
    for j, para in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else ()):
      context = _text(para, f"{path}: data[{i}].paragraphs[{j}]", "context")
      for k, qa in enumerate(para.get("qas", [])):
        where = f"{path}: data[{i}].paragraphs[{j}].qas[{k}]"
        answers = qa.get("answers") if isinstance(qa, dict) else None
        if not isinstance(answers, list) or not answers:
          raise InputError(f"{where}: no 'answers'")
        golds = list(dict.fromkeys(_text(a, f"{where}.answers[{m}]", "text")
                                   for m, a in enumerate(answers)))
        out.append({"question": _text(qa, where, "question"), "context": context,
                    "answer": golds})
  if not out:
    raise InputError(f"{path}: no questions under data[].paragraphs[].qas[]")
  return out


def read_jemhopqa(paths: Sequence[str]) -> list[Example]:
  """QA examples from a JEMHopQA JSON list of questions."""
  path = _one(paths, "jemhopqa")
  doc = _json(path)
  if not isinstance(doc, list):
    raise InputError(f"{path}: expected a JSON list of questions (the JEMHopQA corpus files)")
  return [{"question": _text(q, f"{path}: item {i}", "question"),
           "answer": _text(q, f"{path}: item {i}", "answer")} for i, q in enumerate(doc)]


def read_niilc(paths: Sequence[str]) -> list[Example]:
  """Several answers are one gold string joined by ",", as llm-jp-eval's output (its instruction
  asks for the answers comma-joined). Questions marked unanswerable ("-") are left out."""
  path = _one(paths, "niilc")
  if path.endswith(".json"):  # llm-jp-eval's evaluation JSON
    doc = _json(path)
    samples = doc.get("samples") if isinstance(doc, dict) else None
    if not isinstance(samples, list):
      raise InputError(f"{path}: expected llm-jp-eval JSON, an object with a 'samples' list")
    return [{"question": _text(s, f"{path}: samples[{i}]", "input").removeprefix("質問：").strip(),
             "answer": _text(s, f"{path}: samples[{i}]", "output")} for i, s in enumerate(samples)]
  try:
    root = ET.parse(path).getroot()
  except ET.ParseError as e:
    raise InputError(f"{path}:{e.position[0]}: not XML ({e})") from None
  out = []
  for i, q in enumerate(root.iter("question")):
    where = f"{path}: question {q.get('id') or i}"
    text = (q.findtext("text") or "").strip()
    answers = [(a.text or "").strip() for a in q.iter("answer")]
    answers = [a for a in answers if a and a != "-"]  # "-": Wikipedia does not answer it
    if not text:
      raise InputError(f"{where}: no <text>")
    if answers:
      out.append({"question": text, "answer": ",".join(answers)})
    elif not q.findall("answers/answer"):
      raise InputError(f"{where}: no <answers><answer>")
  if not out:
    raise InputError(f"{path}: no <question> with an answer")
  return out


def _tsv_pairs(path: str, expected: str):
  """(line number, (first, second)) for lines of exactly two non-blank tab-separated fields."""
  for n, line in _lines(path):
    fields = line.split("\t")
    if len(fields) != 2 or not all(f.strip() for f in fields):
      raise InputError(f"{path}:{n}: expected {expected}, got {len(fields)} field(s)")
    yield n, tuple(fields)


def read_mgsm(paths: Sequence[str]) -> list[Example]:
  """question<TAB>answer lines. A non-numeric answer is a worked solution (the exemplars'
  "ステップごとの答え：..."): it is shown in demonstrations and its last number is the answer."""
  path = _one(paths, "mgsm")
  out = []
  for n, (question, answer) in _tsv_pairs(path, "question<TAB>answer"):
    question = question.strip().removeprefix("問題：").strip()
    answer = answer.strip().removeprefix("ステップごとの答え：").strip()
    number = scoring.extract_last_number(answer)
    if number is None:
      raise InputError(f"{path}:{n}: answer {answer[:40]!r} holds no number")
    ex = {"question": question, "answer": answer}
    if str(number) != answer.replace(",", ""):
      ex.update(answer=str(number), solution=answer)
    out.append(ex)
  return out


def read_translation(paths: Sequence[str]) -> list[Example]:
  """SOURCE,REFERENCE plain-text files with one segment a line, or one source<TAB>reference TSV."""
  if len(paths) == 1:
    pairs = [fields for _, fields in _tsv_pairs(_existing(paths[0]), "source<TAB>reference")]
  elif len(paths) == 2:
    sides = [[line for _, line in _lines(_existing(p), segments=True)] for p in paths]
    if len(sides[0]) != len(sides[1]):
      raise InputError(f"{paths[0]} has {len(sides[0])} lines but {paths[1]} has "
                       f"{len(sides[1])}; the source and reference must align line by line")
    pairs = list(zip(*sides))
  else:
    raise InputError(f"translation takes SOURCE,REFERENCE or one TSV, got {list(paths)}")
  return [{"source": s.strip(), "target": t.strip()} for s, t in pairs]


def read_text(paths: Sequence[str]) -> list[Example]:
  """Perplexity examples: the `text` field of every row of the JSONL inputs."""
  return [{"text": _text(row, f"{path}:{n}", "text")}
          for path in map(_existing, paths) for n, row in _jsonl(path)]


_QA_JA = "質問：{question}\n回答："
TASKS: dict[str, tuple[Callable[[Sequence[str]], list[Example]], dict[str, Any]]] = {
    # max_new_tokens of the llm-jp-eval tasks: llm-jp-eval's output_length for the task.
    "jcommonsenseqa": (read_jcommonsenseqa, dict(
        type="multiple_choice", lang="ja",
        instruction="質問と回答の選択肢を入力として受け取り、選択肢から回答を選択してください。\n\n",
        template="質問：{question}\n選択肢：{choices_text}\n回答：")),
    "jsquad": (read_jsquad, dict(
        type="qa", lang="ja", max_new_tokens=25,
        instruction="質問に対する回答を文章から一言で抽出してください。回答は名詞で答えてください。"
                    " それ以外には何も含めないことを厳守してください。\n\n",
        template="文章：{context}\n" + _QA_JA)),
    "jemhopqa": (read_jemhopqa, dict(
        type="qa", lang="ja", max_new_tokens=15,
        instruction="質問を入力とし、回答を出力してください。回答の他には何も含めないことを厳守してください。\n\n",
        template=_QA_JA)),
    "niilc": (read_niilc, dict(
        type="qa", lang="ja", max_new_tokens=180,
        instruction="質問に対する答えを出力してください。答えが複数の場合、コンマ（,）で繋げてください。\n\n",
        template=_QA_JA)),
    # The JP LM Evaluation Harness "mgsm" prompt: one line of worked answer, cut at "\n".
    "mgsm_ja": (read_mgsm, dict(
        type="math", lang="ja", template="問題：{question}\nステップごとの答え：", stop=["\n"],
        max_new_tokens=256)),
    # lm-evaluation-harness's WMT prompt ("<lang> phrase:"), target after a space, cut at "\n".
    "wmt20_en_ja": (read_translation, dict(
        type="translation", lang="ja", template="English phrase: {source}\nJapanese phrase:",
        target_delimiter=" ", stop=["\n"], max_new_tokens=256)),
    "wmt20_ja_en": (read_translation, dict(
        type="translation", lang="en", template="Japanese phrase: {source}\nEnglish phrase:",
        target_delimiter=" ", stop=["\n"], max_new_tokens=256)),
    "ja_ppl": (read_text, dict(type="perplexity", lang="ja")),
    "en_ppl": (read_text, dict(type="perplexity", lang="en")),
}


def prepare(task: str, inputs: Sequence[str], fewshot_inputs: Sequence[str] = (),
            num_fewshot: int | None = None) -> tuple[dict[str, Any], list[Example]]:
  """(header, examples) of a task file; see the module docstring for the inputs."""
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
  read, defaults = TASKS[task]
  perplexity = defaults["type"] == "perplexity"
  k = (0 if perplexity else SWALLOW_NUM_FEWSHOT) if num_fewshot is None else num_fewshot
  if k < 0:
    raise ValueError(f"num_fewshot must be >= 0, got {k}")
  if perplexity and (k or fewshot_inputs):
    raise ValueError(f"{task} is a perplexity task: it takes no demonstrations")
  header = {"task": task, **defaults, "num_fewshot": k}
  examples = read(inputs)
  if fewshot_inputs:
    demos = read(fewshot_inputs)
    if len(demos) < k:
      raise ValueError(f"{','.join(fewshot_inputs)}: {len(demos)} demonstration(s) for "
                       f"num_fewshot={k}")
    header["fewshot"] = demos[:k]
  elif len(examples) <= k:
    raise ValueError(f"{','.join(inputs)}: {len(examples)} example(s) leave none to score after "
                     f"{k} demonstrations (pass --fewshot_input)")
  return header, examples


def write(path: str, header: dict[str, Any], examples: Sequence[Example]) -> None:
  """Checks the task as the harness will load it, then writes the file atomically."""
  make_task(header, examples, source=path)
  write_task(path, header, examples)


def main(argv: Sequence[str]) -> None:
  """The command line: reads --input, writes the task file --output."""
  del argv
  f = flags.FLAGS
  cli.check_output(f.output, f.overwrite)
  header, examples = prepare(f.task, f.input, f.fewshot_input, f.num_fewshot)
  write(f.output, header, examples)
  scored = len(examples) - (0 if "fewshot" in header else header["num_fewshot"])
  print(f"wrote {f.output}: {f.task}, {scored} examples to score, "
        f"{header['num_fewshot']}-shot")


if __name__ == "__main__":
  # Flags only when run as a program: importing this module (tests) must not define them.
  flags.DEFINE_enum("task", None, sorted(TASKS), "Task to build; input formats in the table "
                    "above.", required=True)
  flags.DEFINE_list("input", None, "Source file(s) of the examples to score (SOURCE,REFERENCE "
                    "for plain-text WMT).", required=True)
  flags.DEFINE_list("fewshot_input", [], "Source file(s) of the demonstrations (the train/dev "
                    "split); default: the first --num_fewshot examples of --input.")
  flags.DEFINE_string("output", None, "Task file to write (JSONL), e.g. "
                      "ROOT/tasks/niilc.jsonl.", required=True)
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
  flags.DEFINE_integer("num_fewshot", None, "Demonstrations per prompt (default: the Swallow "
                       "setting, 4; 0 for perplexity).")
  cli.run(main, prog="evaluate.prepare")
