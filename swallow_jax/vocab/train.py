"""Training a small sentencepiece model (the demo's tokenizer, and the expansion study's pieces)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence

import sentencepiece as spm

# The specials a demo sentencepiece model carries (the Llama 3 chat template needs these).
CHAT_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                       "<|end_header_id|>", "<|eot_id|>")

_TOO_BIG = re.compile(r"Vocabulary size (?:is )?too (?:big|high).*<= (\d+)")


def train_sentencepiece(inputs: str | os.PathLike | Sequence[str | os.PathLike] | Iterator[str],
                        vocab_size: int, output_prefix: str | os.PathLike, *,
                        model_type: str = "bpe", byte_fallback: bool = True,
                        special_tokens: Sequence[str] = CHAT_SPECIAL_TOKENS,
                        character_coverage: float = 0.9995, shrink_to_fit: bool = False,
                        **trainer_options) -> str:
  """Trains a sentencepiece model on a text file, files or lines; returns ``{prefix}.model``.

  ``vocab_size`` counts specials, ``<unk>`` and byte pieces; ``special_tokens`` are user-defined
  symbols at ids 1.. that ``load_tokenizer`` treats as specials; ``shrink_to_fit`` trains the
  largest model the text supports instead of failing; ``trainer_options`` go to
  ``SentencePieceTrainer.train``. Text is kept as is (identity normalisation, no dummy prefix),
  so ``decode(encode(t)) == t`` and texts encoded apart concatenate (chat templates rely on it).
  """
  if model_type not in ("bpe", "unigram"):
    raise ValueError(f"model_type must be 'bpe' or 'unigram', not {model_type!r}")
  options = dict(
      model_prefix=os.fspath(output_prefix), vocab_size=vocab_size, model_type=model_type,
      byte_fallback=byte_fallback, character_coverage=character_coverage,
      user_defined_symbols=list(special_tokens), unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
      normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
      split_digits=True, allow_whitespace_only_pieces=True, max_sentence_length=1 << 16,
      # The escaped space must be a piece: byte fallback would spell it as U+2581 otherwise.
      required_chars="\u2581",
      input_sentence_size=2_000_000, shuffle_input_sentence=True,
      num_threads=os.cpu_count() or 1, minloglevel=2)
  options.update(trainer_options)
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  if isinstance(inputs, (list, tuple)):
    if missing := [p for p in inputs if not os.path.isfile(p)]:
      raise FileNotFoundError(f"{missing[0]}: no such text file")
    options["input"] = ",".join(map(os.fspath, inputs))
  else:
    inputs = list(inputs)  # A retry after shrinking needs the lines again.
  while True:
    if "input" not in options:
      options["sentence_iterator"] = iter(inputs)
    try:
      spm.SentencePieceTrainer.train(**options)
      return f"{options['model_prefix']}.model"
    except RuntimeError as e:
      m = _TOO_BIG.search(str(e))
      if not (shrink_to_fit and m and int(m.group(1)) < options["vocab_size"]):
        raise
      options["vocab_size"] = int(m.group(1))
