"""tiktoken BPE ranks (Meta's Llama 3 ``tokenizer.model``: ``base64-bytes rank`` lines).

Parsed here, not by ``tiktoken.load.load_tiktoken_bpe``: that caches every file under /tmp keyed
by its path (a rewritten file at the same path would load stale) and names no line in errors.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
from collections.abc import Iterable, Mapping

import tiktoken

from swallow_jax import fileio
from swallow_jax.tokenizer.base import BaseTokenizer, char_spans
from swallow_jax.tokenizer.specials import ModelTokens

# Meta's llama/tokenizer.py (Llama 3).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+")
NUM_RESERVED_SPECIAL_TOKENS = 256
LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>",
    "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
    "<|start_header_id|>", "<|end_header_id|>",
    "<|reserved_special_token_4|>", "<|eot_id|>",
) + tuple(f"<|reserved_special_token_{i}|>" for i in range(5, NUM_RESERVED_SPECIAL_TOKENS - 5))


def read_tiktoken_ranks(path: str) -> dict[bytes, int]:
  """Parses a tiktoken BPE file: one ``base64(token bytes) rank`` per line."""
  ranks = {}
  with open(path, "rb") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        token, rank = line.split()
        ranks[base64.b64decode(token, validate=True)] = int(rank)
      except (ValueError, binascii.Error):
        raise ValueError(f"{path}:{lineno}: not a tiktoken 'base64 rank' line") from None
  if not ranks:
    raise ValueError(f"{path}: empty tiktoken file")
  return ranks


def write_tiktoken_ranks(path: str | os.PathLike, ranks: Mapping[bytes, int]) -> None:
  """Writes ranks as a tiktoken BPE file, in rank order."""
  with fileio.atomic_file(os.fspath(path), encoding="ascii") as f:
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
      f.write(f"{base64.b64encode(token).decode()} {rank}\n")


class TiktokenTokenizer(BaseTokenizer):
  """Byte-level BPE ranks run by tiktoken, with Llama 3's pattern and special tokens."""
  backend = "tiktoken"

  def __init__(self, path: str, model: ModelTokens = ModelTokens()):
    self.ranks = read_tiktoken_ranks(path)
    # Specials sit right after the contiguous ranks 0..n-1 (Meta: n = len(ranks)); ranks past
    # that gap come from vocabulary expansion and must not collide with them.
    taken = set(self.ranks.values())
    num_base = next(i for i in range(len(taken) + 1) if i not in taken)
    specials = {s: num_base + i for i, s in enumerate(LLAMA3_SPECIAL_TOKENS)}
    if clash := taken.intersection(specials.values()):
      raise ValueError(f"{path}: ranks {sorted(clash)[:3]} collide with the special-token ids")
    self.pattern = LLAMA3_PATTERN
    self.enc = tiktoken.Encoding(name=os.path.basename(path), pat_str=self.pattern,
                                 mergeable_ranks=self.ranks, special_tokens=specials)
    self.vocab_size = max(max(taken), max(specials.values())) + 1
    self._bytes = {r: t for t, r in self.ranks.items()}
    # Meta's Llama 3 code, and HF's Llama 3 tokenizer, start every text with BOS.
    self._init_specials(path, specials, model, adds_bos=lambda bos: True)

  def _encode(self, text: str) -> list[int]:
    return self.enc.encode_ordinary(text)

  def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of the text and each token's character span (its bytes' place in the text)."""
    ids = self.enc.encode_ordinary(text)
    ends = list(itertools.accumulate(len(self._bytes[i]) for i in ids))
    return ids, char_spans(text, zip([0, *ends], ends))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of the ids, specials as their names."""
    return self.enc.decode(list(ids))

  def _entry_bytes(self, token_id: int) -> bytes | None:
    return self._bytes.get(token_id)  # None for an unused id

  def _lookup(self, token: str) -> int | None:
    return self.ranks.get(token.encode())
