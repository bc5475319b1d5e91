"""Writes the demo's raw corpus, chat data and evaluation tasks as files.

Layout under `out_dir`:
  raw/{ja_web,ja_wiki,en_web,en_wiki,parallel,math}.jsonl   {"text", "lang", ...} per line
  raw/{en_dialogues,ja_dialogues}.jsonl                     {"messages": [...]} per line
  tasks/<task>.jsonl                                         swallow_jax.evaluate task files
  chat_eval/{ja,en}_chat.jsonl                               held-out chats: {"messages", "answer"}
  world.json                                                 the facts, for reading reports
  manifest.json                                              arguments, per-file line counts

Everything is a pure function of (seed, scale): the same arguments write byte-identical files.
Each file draws from its own random stream, so changing one source's size never changes another.
"""

import dataclasses
import os
import random
from typing import Any

from swallow_jax import fileio
from swallow_jax.demo import text
from swallow_jax.demo.world import World, make_world

TEXT_SOURCES = ("ja_web", "ja_wiki", "en_web", "en_wiki", "parallel", "math")
CHAT_SOURCES = ("en_dialogues", "ja_dialogues")
# Lines per file at scale=1.
_SIZES = {"ja_web": 1200, "ja_wiki": 300, "en_web": 1200, "en_wiki": 300, "parallel": 600,
          "math": 800, "en_dialogues": 500, "ja_dialogues": 500}
_EVAL_SIZE = 60        # scored examples per task at scale=1 (at least 8; at most the ~62
                       # held-out facts per language for the knowledge tasks)
_FEWSHOT = 3
_MATH_JA_SHARE = 0.3   # the math source is mostly English, as OpenWebMath is
_FAQ_SHARE = 0.15      # share of web documents that are FAQ pages


@dataclasses.dataclass(frozen=True)
class DemoPaths:
  """Where build_demo_data wrote the corpus, the task files and the chat sets."""

  root: str
  raw: dict[str, str]     # source name -> JSONL path (text and chat sources)
  tasks: dict[str, str]   # task name -> task file
  chat_eval: dict[str, str]  # lang -> held-out single-turn chats about held-out facts

  def task_files(self, *names: str) -> list[str]:
    """The files of the named tasks (all of them by default)."""
    return [self.tasks[n] for n in (names or self.tasks)]


def _web(world: World, rng: random.Random, lang: str, asked) -> dict[str, Any]:
  if rng.random() < _FAQ_SHARE:
    return {"text": text.faq_page(world, rng, lang, asked), "lang": lang, "kind": "faq"}
  return {"text": text.web_post(world, rng, lang), "lang": lang, "kind": "post"}


def _parallel(world: World, rng: random.Random) -> dict[str, Any]:
  """1-4 aligned pairs; one translation direction per document, pairs separated by a blank line."""
  pairs = [text.parallel_pair(world, rng) for _ in range(rng.randint(1, 4))]
  ja_first = rng.random() < 0.5
  body = "\n\n".join(f"{ja}\n{en}" if ja_first else f"{en}\n{ja}" for ja, en in pairs)
  return {"text": body, "lang": "ja-en" if ja_first else "en-ja",
          "ja": [p[0] for p in pairs], "en": [p[1] for p in pairs]}


def _math(world: World, rng: random.Random) -> dict[str, Any]:
  lang = "ja" if rng.random() < _MATH_JA_SHARE else "en"
  return {"text": text.math_text(world, rng, lang), "lang": lang}


def _records(name: str, world: World, rng: random.Random, n: int, asked) -> list[dict[str, Any]]:
  lang, _, kind = name.rpartition("_")  # "ja_web" -> ("ja", "web"); "math" -> ("", "math")
  make = {
      "web": lambda: _web(world, rng, lang, asked),
      "wiki": lambda: {"text": text.wiki_article(world, rng, lang), "lang": lang},
      "dialogues": lambda: {"messages": text.dialogue(world, rng, lang, asked)},
      "parallel": lambda: _parallel(world, rng),
      "math": lambda: _math(world, rng),
  }[kind]
  return [make() for _ in range(n)]


def _qa_example(world: World, fact, lang: str) -> dict[str, Any]:
  """Answer aliases: the short answer and the bare value ("12300人", "12300")."""
  q, a = text.question(world, *fact, lang)
  bare = text.answer_value(world, *fact, lang)
  return {"question": q, "answer": [a] if bare == a else [a, bare]}


def _mc_example(world: World, fact, lang: str, rng: random.Random) -> dict[str, Any]:
  """The question with the true short answer and three answers of the same kind about others."""
  kind, idx = fact
  q, a = text.question(world, kind, idx, lang)
  others = sorted({text.question(world, kind, j, lang)[1] for _, j in text.all_facts(world)
                   if _ == kind and j != idx} - {a})
  choices = rng.sample(others, min(3, len(others))) + [a]
  rng.shuffle(choices)
  return {"question": q, "choices": choices, "answer": choices.index(a)}


def _tasks(world: World, seed: int, n: int, asked, held_out) -> dict[str, tuple[dict, list]]:
  """task name -> (header, examples); scored questions are about held-out facts only. Prompt
  templates follow the corpus's own layouts (FAQ pages, math solutions, parallel pairs), so a
  model is tested on formats its pretraining could have shown it."""
  out = {}

  def task(name: str, kind: str, examples: list[dict[str, Any]], **header: Any) -> None:
    out[name] = ({"task": name, "type": kind, "lang": lang, **header}, examples)

  for lang in ("ja", "en"):
    rng = random.Random(f"tasks-{seed}-{lang}")
    eval_facts = rng.sample(held_out, min(n, len(held_out)))
    demo_facts = rng.sample(asked, _FEWSHOT)
    qa_template = "質問: {question}\n回答:" if lang == "ja" else "Question: {question}\nAnswer:"
    task(f"{lang}_qa", "qa", [_qa_example(world, f, lang) for f in eval_facts],
         num_fewshot=_FEWSHOT, template=qa_template, target_delimiter=" ", max_new_tokens=16,
         fewshot=[_qa_example(world, f, lang) for f in demo_facts])
    task(f"{lang}_mc", "multiple_choice", [_mc_example(world, f, lang, rng) for f in eval_facts],
         num_fewshot=0, template=qa_template, target_delimiter=" ")
    math_rng = random.Random(f"tasks-math-{seed}-{lang}")
    problems = [{"question": q, "answer": a, "solution": sol} for q, sol, a in
                (text.math_problem(world, math_rng, lang) for _ in range(n + _FEWSHOT))]
    task(f"{lang}_math", "math", problems[_FEWSHOT:], num_fewshot=_FEWSHOT,
         template="問題: {question}\n解答:" if lang == "ja" else "Question: {question}\nSolution:",
         target_delimiter=" ", max_new_tokens=32, stop=["\n"], fewshot=problems[:_FEWSHOT])
    # Translation INTO `lang`, in the parallel corpus's layout (source line, then target line).
    tr_rng = random.Random(f"tasks-translation-{seed}-{lang}")
    src, tgt = (1, 0) if lang == "ja" else (0, 1)
    pairs = [{"source": p[src], "target": p[tgt]}
             for p in (text.parallel_pair(world, tr_rng) for _ in range(n + _FEWSHOT))]
    task("en_ja_translation" if lang == "ja" else "ja_en_translation", "translation",
         pairs[_FEWSHOT:], num_fewshot=_FEWSHOT, template="{source}\n", target_delimiter="",
         max_new_tokens=48, fewshot=pairs[:_FEWSHOT])
    ppl_rng = random.Random(f"tasks-ppl-{seed}-{lang}")
    docs = [(text.web_post if i % 2 else text.wiki_article)(world, ppl_rng, lang) for i in range(n)]
    task(f"{lang}_ppl", "perplexity", [{"text": d, "lang": lang} for d in docs])
  return out


def _chat_eval(world: World, seed: int, n: int, held_out, lang: str) -> list[dict[str, Any]]:
  """Questions about held-out facts, answered in a full sentence; `answer` is the bare value a
  good reply contains. Scores chat-format ability (the chat vector's and SFT's job)."""
  rng = random.Random(f"chat-eval-{seed}-{lang}")
  return [{"messages": [{"role": "user", "content": text.question(world, k, i, lang)[0]},
                        {"role": "assistant",
                         "content": text.statement(world, k, i, lang, rng.randrange(3))}],
           "answer": text.answer_value(world, k, i, lang)}
          for k, i in rng.sample(held_out, min(n, len(held_out)))]


def build_demo_data(out_dir: str, seed: int = 0, scale: float = 1.0) -> DemoPaths:
  """Writes the demo corpus, chat data and tasks under `out_dir` (see the module docstring)."""
  if scale <= 0:
    raise ValueError(f"scale must be positive, got {scale}")
  world = make_world(seed)
  asked, held_out = text.split_facts(world, seed)
  n_eval, counts = max(8, round(_EVAL_SIZE * scale)), {}

  def write(group: str, name: str, rows: list[dict[str, Any]],
            header: tuple[dict[str, Any], ...] = ()) -> str:
    path = os.path.join(out_dir, group, f"{name}.jsonl")
    fileio.write_jsonl(path, [*header, *rows])
    counts[name if group == "raw" else f"{group}/{name}"] = len(rows)
    return path

  raw = {name: write("raw", name, _records(name, world, random.Random(f"{name}-{seed}"),
                                           max(4, round(_SIZES[name] * scale)), asked))
         for name in TEXT_SOURCES + CHAT_SOURCES}
  tasks = {name: write("tasks", name, examples, (header,))
           for name, (header, examples) in _tasks(world, seed, n_eval, asked, held_out).items()}
  chat_eval = {lang: write("chat_eval", f"{lang}_chat",
                           _chat_eval(world, seed, n_eval, held_out, lang))
               for lang in ("ja", "en")}
  fileio.write_json(os.path.join(out_dir, "world.json"), dataclasses.asdict(world), indent=1)
  fileio.write_json(os.path.join(out_dir, "manifest.json"),
                    {"seed": seed, "scale": scale, "lines": counts,
                     "facts": {"asked": len(asked), "held_out": len(held_out)}}, indent=1)
  return DemoPaths(root=out_dir, raw=raw, tasks=tasks, chat_eval=chat_eval)
