"""Vocabulary statistics, the expansion study, embedding resize for expanded vocabularies, and
the tokenizer files they make (sentencepiece training, tiktoken -> tokenizer.json).

Command line: ``python -m swallow_jax.vocab {stats,table,expand} --help``.
"""

import importlib
from typing import Any

_PUBLIC = {
    "vocab_stats": "swallow_jax.vocab.stats",
    "corpus_stats": "swallow_jax.vocab.stats",
    "expand": "swallow_jax.vocab.expand",
    "Expansion": "swallow_jax.vocab.expand",
    "resize_embeddings": "swallow_jax.vocab.resize",
    "grow_rows": "swallow_jax.vocab.resize",
    "tiktoken_to_tokenizer_json": "swallow_jax.vocab.convert",
    "bpe_merges": "swallow_jax.vocab.convert",
    "train_sentencepiece": "swallow_jax.vocab.train",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
  # Lazy, so that the statistics command line does not import jax.
  if name in _PUBLIC:
    return getattr(importlib.import_module(_PUBLIC[name]), name)
  raise AttributeError(f"module 'swallow_jax.vocab' has no attribute {name!r}")
