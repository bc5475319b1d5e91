"""Vocabulary study: Japanese coverage of tokenizers, and what adding Japanese subwords buys.

  python -m swallow_jax.vocab stats --tokenizer=PATH [--corpus=FILE] [--json]
      vocab_size (specials included) and how many entries are exactly one hiragana, katakana or
      CJK ideograph (U+3040-309F, U+30A0-30FF, U+4E00-9FFF); with --corpus, chars, tokens and
      chars_per_token of that text (each line encoded alone, line ends not counted).

  python -m swallow_jax.vocab table --tokenizer=A --tokenizer=B ... [--corpus=FILE] [--json]
      the same for several tokenizers side by side, as a markdown table.

  python -m swallow_jax.vocab expand --tokenizer=PATH --corpus=FILE --heldout=FILE \\
      --num-new=48000 --output=DIR [--model-type=bpe|unigram] [--model=HF_DIR] [--json]
      adds up to --num-new Japanese subwords learned on --corpus, writes the expanded tokenizer
      (same format) and expansion.json to DIR, and reports held-out token counts before/after,
      the reduction and the implied decode speed-up 1/(1-reduction). --model also writes
      DIR/model: that HF Llama checkpoint with embedding and LM head grown (bfloat16).

A tokenizer PATH is a tiktoken tokenizer.model (Llama 3), a tokenizer.json, a sentencepiece
.model, or a directory holding one. See docs/tokenizers.md.
"""

import json
import os

from absl import flags

from swallow_jax import cli
from swallow_jax import tokenizer as tokenizer_lib
from swallow_jax.vocab import stats

COMMANDS = ("stats", "table", "expand")
_TOKENIZER = flags.DEFINE_multi_string("tokenizer", [], "Tokenizer file or directory "
                                       "(repeat for table).")
_CORPUS = flags.DEFINE_string("corpus", None, "UTF-8 text: chars_per_token (stats/table) or the "
                              "text to learn subwords on (expand).")
_HELDOUT = flags.DEFINE_string("heldout", None, "expand: UTF-8 text to measure lengths on.")
_NUM_NEW = flags.DEFINE_integer("num_new", 48000, "expand: tokens to add at most.", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None, "expand: directory for the expanded tokenizer.")
_MODEL_TYPE = flags.DEFINE_enum("model_type", None, ["bpe", "unigram"],
                                "expand: sentencepiece model that learns the subwords (default: "
                                "the base's type for sentencepiece bases, else bpe).")
_MODEL = flags.DEFINE_string("model", None, "expand: HF Llama checkpoint dir to resize into "
                             "DIR/model.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of text.")


def _require(**values):
  for name, value in values.items():
    if not value:
      raise ValueError(f"--{name.replace('_', '-')} is required")


def run(command: str) -> str:
  """Runs one command on the parsed flags; returns what to print."""
  paths = _TOKENIZER.value
  if command == "expand":
    _require(tokenizer=paths, corpus=_CORPUS.value, heldout=_HELDOUT.value, output=_OUTPUT.value)
    if len(paths) != 1:
      raise ValueError("expand takes exactly one --tokenizer")
    if _MODEL.value:  # any form model.io accepts; a wrong path is refused before the expansion
      from swallow_jax.model import io as model_io  # pylint: disable=g-import-not-at-top  # jax
      model_io.resolve(_MODEL.value)
    from swallow_jax.vocab import expand  # pylint: disable=g-import-not-at-top
    expansion = expand.expand(paths[0], _CORPUS.value, _HELDOUT.value, _NUM_NEW.value,
                              _OUTPUT.value, model_type=_MODEL_TYPE.value)
    result = expansion.as_dict()
    if _MODEL.value:
      from swallow_jax.vocab import resize  # pylint: disable=g-import-not-at-top  # jax: slow.
      result["model"] = resize.resize_hf_checkpoint(
          _MODEL.value, tokenizer_lib.load_tokenizer(expansion.tokenizer),
          tokenizer_lib.load_tokenizer(expansion.output), os.path.join(_OUTPUT.value, "model"))
    if _JSON.value:
      return json.dumps(result, ensure_ascii=False)
    return "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
                     for k, v in result.items())
  _require(tokenizer=paths)
  if command == "stats" and len(paths) != 1:
    raise ValueError("stats takes exactly one --tokenizer (use table for several)")
  corpus = stats.read_lines(_CORPUS.value) if _CORPUS.value else None
  loaded = ((path, tokenizer_lib.load_tokenizer(path)) for path in paths)  # one at a time
  rows = [{"tokenizer": path, **stats.vocab_stats(tok),
           **(stats.corpus_stats(tok, corpus) if corpus else {})} for path, tok in loaded]
  if command == "stats":
    row = rows[0]
    return json.dumps(row) if _JSON.value else "\n".join(f"{k}: {v}" for k, v in row.items())
  return json.dumps(rows) if _JSON.value else stats.markdown_table(rows)


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise cli.UsageError(f"expected one command of {', '.join(COMMANDS)}, got {argv[1:]}")
  print(run(argv[1]))


if __name__ == "__main__":
  cli.run(main, prog="vocab", positional=True)
