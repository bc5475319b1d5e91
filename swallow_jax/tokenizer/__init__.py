"""One tokenizer protocol over three file formats, with the model's own special tokens.

``load_tokenizer(path)`` (a file or a directory) picks the backend: tiktoken BPE ranks (Meta's
Llama 3 ``tokenizer.model``), a Hugging Face ``tokenizer.json`` or a sentencepiece ``.model``;
special-token roles, add_bos, stop ids and the chat template come from the model's files beside
it (`specials`). ``encode`` treats special-token strings as plain text. See docs/tokenizers.md.
"""

from __future__ import annotations

import os
import re

from swallow_jax.tokenizer.base import EOT_NAMES, BaseTokenizer, Tokenizer
from swallow_jax.tokenizer.hf_json import HFTokenizer, byte_to_unicode, unicode_to_byte
from swallow_jax.tokenizer.sentencepiece_model import (SentencePieceTokenizer,
                                                       read_sentencepiece_proto)
from swallow_jax.tokenizer.specials import ModelTokens, read_model_tokens
from swallow_jax.tokenizer.tiktoken_bpe import (LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS,
                                                TiktokenTokenizer, read_tiktoken_ranks,
                                                write_tiktoken_ranks)

__all__ = [
    "EOT_NAMES", "LLAMA3_PATTERN", "LLAMA3_SPECIAL_TOKENS", "BaseTokenizer", "HFTokenizer",
    "ModelTokens", "SentencePieceTokenizer", "TiktokenTokenizer", "Tokenizer",
    "byte_to_unicode", "load_tokenizer", "read_model_tokens", "read_sentencepiece_proto",
    "read_tiktoken_ranks", "unicode_to_byte", "write_tiktoken_ranks",
]

_DIR_CANDIDATES = ("tokenizer.model", "tokenizer.json")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """Loads a tokenizer file, or the ``tokenizer.model``/``tokenizer.json`` in a directory,
  with the special tokens and chat template of the model files beside it."""
  path = os.fspath(path)
  if os.path.isdir(path):
    found = [n for n in _DIR_CANDIDATES if os.path.isfile(os.path.join(path, n))] or sorted(
        n for n in os.listdir(path)
        if n.endswith((".model", ".tiktoken")) and n not in _DIR_CANDIDATES)
    if not found:
      raise FileNotFoundError(f"{path}: directory has no tokenizer.model, tokenizer.json, "
                              "*.model or *.tiktoken file")
    path = os.path.join(path, found[0])
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such tokenizer file or directory")
  model = read_model_tokens(os.path.dirname(os.path.abspath(path)))
  with open(path, "rb") as f:
    head = f.read(4096)
  if head.lstrip()[:1] == b"{":
    return HFTokenizer(path, model)
  if re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+", head.split(b"\n", 1)[0].strip()):
    return TiktokenTokenizer(path, model)
  try:
    return SentencePieceTokenizer(path, model)
  except ValueError:
    raise ValueError(f"{path}: neither a tiktoken BPE file, a tokenizer.json nor a "
                     "sentencepiece model") from None
