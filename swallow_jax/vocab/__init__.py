"""Vocabulary statistics, the expansion study, embedding resize for expanded vocabularies, and
the tokenizer files they make. Command line: ``python -m swallow_jax.vocab COMMAND --help``."""

import importlib
from typing import Any

_PUBLIC = {name: f"swallow_jax.vocab.{module}" for module, names in {
    "stats": ("vocab_stats", "corpus_stats"), "expand": ("expand", "Expansion"),
    "resize": ("resize_embeddings", "grow_rows"), "train": ("train_sentencepiece",),
    "convert": ("tiktoken_to_tokenizer_json", "bpe_merges")}.items() for name in names}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
  # Lazy, so that the statistics command line does not import jax.
  if name in _PUBLIC:
    return getattr(importlib.import_module(_PUBLIC[name]), name)
  raise AttributeError(f"module 'swallow_jax.vocab' has no attribute {name!r}")
