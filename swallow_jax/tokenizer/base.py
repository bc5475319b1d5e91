"""The tokenizer protocol and what every backend shares: special-token roles, lookups, identity."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from swallow_jax.tokenizer.specials import ModelTokens

# Role of a special token -> names it goes by, first match wins (bare tokenizer files only;
# a model directory's tokenizer_config.json says so itself). EOT is by name (no config file
# names the end-of-turn token), preferring the one the chat template writes.
_GUESS = {"bos": ("<|begin_of_text|>", "<s>", "<bos>"),
          "eos": ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>"),
          "pad": ("<pad>", "<|pad|>", "[PAD]")}
EOT_NAMES = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>")


@runtime_checkable
class Tokenizer(Protocol):
  """What the rest of swallow_jax relies on (see docs/tokenizers.md)."""
  backend: str                       # 'tiktoken' | 'tokenizers' | 'sentencepiece'
  path: str                          # the file loaded
  vocab_size: int                    # largest id + 1, special tokens included
  bos_id: int | None
  eos_id: int | None
  eot_id: int | None                 # end of turn (<|eot_id|>, <|im_end|>)
  pad_id: int | None
  add_bos: bool                      # the model's own files say BOS starts a text
  stop_ids: tuple[int, ...]          # generation stops on these (eos list + eot)
  chat_template: str | None          # the model's own jinja template, if it has one
  special_tokens: dict[str, int]

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Ids (BOS first if add_bos and the tokenizer adds one); special-token strings are text."""

  def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """``encode(text)`` and each token's (start, end) character span in `text`, as a fast
    transformers tokenizer's offsets (a token covering part of a character spans all of it)."""

  def bos_prefix(self) -> list[int]:
    """``[bos_id]`` when this tokenizer adds a BOS, else ``[]``."""

  def decode(self, ids: Iterable[int]) -> str:
    """Text of the ids; special ids render as their names."""

  def token_to_id(self, token: str) -> int:
    """Id of a special token or of the entry whose text is ``token``; KeyError otherwise."""

  def token_bytes(self, token_id: int) -> bytes | None:
    """What the entry stands for in text (a special: its name; None: no text, e.g. <unk>)."""

  @property
  def identity(self) -> str:
    """'{backend}:sha256:{hex digest of the file}'."""


def char_spans(text: str, byte_spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
  """Character spans of (start, end) byte spans of ``text.encode()``; a span covering part of
  a character (a byte-level token, or an empty one of a byte-fallback run) spans all of it."""
  char_of = [i for i, c in enumerate(text) for _ in range(len(c.encode()))] + [len(text)]
  out = []
  for start, end in byte_spans:
    first = char_of[start]
    out.append((first, char_of[end - 1] + 1 if end > start else min(first + 1, len(text))))
  return out


@functools.cache
def _file_sha256(path: str, mtime_ns: int) -> str:
  del mtime_ns  # Part of the cache key only.
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


class BaseTokenizer:
  """Shared bookkeeping. A backend sets up its vocabulary, then calls `_init_specials`; it
  defines `_encode` (ids of text), `_entry_bytes` (of a non-special id) and `_lookup`."""
  backend = ""

  def _init_specials(self, path: str, special_tokens: Mapping[str, int],
                     model: ModelTokens, adds_bos: Callable[[int], bool]) -> None:
    """Roles from the model's files (``model``), by name for a bare tokenizer file;
    ``adds_bos(bos_id)``: whether the file itself starts texts with that BOS."""
    self.path = path
    self.special_tokens = dict(special_tokens)
    self._special_by_id = {i: s for s, i in self.special_tokens.items()}
    roles = {}
    for role, names in _GUESS.items():
      if model.found:
        token = model.tokens.get(role)
        roles[role] = None if token is None else self._role_id(token, role)
      else:
        roles[role] = self._first(names)
      if roles[role] is None and role not in model.tokens:
        roles[role] = model.ids.get(role)
    self.bos_id, self.eos_id, self.pad_id = roles["bos"], roles["eos"], roles["pad"]
    # The end-of-turn token the model's template writes, else the first known one present.
    used = [n for n in EOT_NAMES if n in (model.chat_template or "")]
    self.eot_id = self._first(used or EOT_NAMES)
    # A bare file adds the BOS its names give; a model directory says so in add_bos_token,
    # else the file decides (as transformers: a tokenizer.json's post-processor).
    self.add_bos = self.bos_id is not None and (
        model.add_bos if model.add_bos is not None else not model.found or adds_bos(self.bos_id))
    stops = model.stop_ids or (self.eos_id,)
    self.stop_ids = tuple(dict.fromkeys(i for i in (*stops, self.eot_id) if i is not None))
    self.chat_template = model.chat_template

  def _role_id(self, token: str, role: str) -> int:
    try:
      return self.token_to_id(token)
    except KeyError:
      raise ValueError(f"{self.path}: {role}_token {token!r} of the model's tokenizer config "
                       "is not in the vocabulary") from None

  def _first(self, names: Sequence[str]) -> int | None:
    return next((self.special_tokens[n] for n in names if n in self.special_tokens), None)

  def bos_prefix(self) -> list[int]:
    """``[bos_id]`` when this tokenizer adds a BOS, else ``[]``."""
    return [self.bos_id] if self.add_bos else []

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Ids (BOS first if add_bos and the tokenizer adds one); special-token strings are text."""
    return [*self.bos_prefix(), *self._encode(text)] if add_bos else self._encode(text)

  def token_bytes(self, token_id: int) -> bytes | None:
    """What the entry stands for in text (a special: its name; None: no text, e.g. <unk>)."""
    if token_id in self._special_by_id:
      return self._special_by_id[token_id].encode()
    return self._entry_bytes(token_id)

  def token_to_id(self, token: str) -> int:
    """Id of a special token, or of the vocabulary entry whose text is exactly ``token``."""
    if (found := self.special_tokens.get(token)) is None and (found := self._lookup(token)) is None:
      raise KeyError(f"{token!r} is not a token of {self.path}")
    return found

  @property
  def identity(self) -> str:
    """Backend and sha256 of the file, e.g. for dataset manifests."""
    return f"{self.backend}:sha256:{_file_sha256(self.path, os.stat(self.path).st_mtime_ns)}"

  def __repr__(self) -> str:
    return f"<{type(self).__name__} {self.path} vocab_size={self.vocab_size}>"
