"""Hugging Face ``tokenizer.json`` files run by the ``tokenizers`` library."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable

import tokenizers

from swallow_jax.tokenizer.base import BaseTokenizer
from swallow_jax.tokenizer.specials import ModelTokens


@functools.cache
def byte_to_unicode() -> dict[int, str]:
  """GPT-2's reversible map from bytes to printable characters (ByteLevel vocabularies)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


@functools.cache
def unicode_to_byte() -> dict[str, int]:
  """The inverse of `byte_to_unicode`."""
  return {c: b for b, c in byte_to_unicode().items()}


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class HFTokenizer(BaseTokenizer):
  """A Hugging Face ``tokenizer.json`` run by the ``tokenizers`` library."""
  backend = "tokenizers"

  def __init__(self, path: str, model: ModelTokens = ModelTokens()):
    try:
      self.tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # The Rust side raises a bare Exception.
      raise ValueError(f"{path}: not a loadable tokenizer.json ({e})") from None
    # Special added tokens inside text are then tokenized as ordinary text.
    self.tok.encode_special_tokens = True
    self.config = json.loads(self.tok.to_str())
    self.byte_level = any("ByteLevel" in json.dumps(self.config.get(k))
                          for k in ("pre_tokenizer", "decoder"))
    added = self.tok.get_added_tokens_decoder()
    self._vocab = self.tok.get_vocab(with_added_tokens=True)
    self._by_id = {i: s for s, i in self._vocab.items()}
    self.vocab_size = max(self._vocab.values()) + 1
    # The ids the file's post-processor puts around a text (Llama 3's adds BOS, ChatML's none).
    added_ids = self.tok.encode("a", add_special_tokens=True).ids
    self._init_specials(path, {t.content: i for i, t in added.items() if t.special}, model,
                        adds_bos=lambda bos: added_ids[:1] == [bos])

  def _encode(self, text: str) -> list[int]:
    return self.tok.encode(text, add_special_tokens=False).ids

  def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of the text and each token's character span (the library's own offsets)."""
    enc = self.tok.encode(text, add_special_tokens=False)
    return enc.ids, list(enc.offsets)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of the ids, specials as their names."""
    return self.tok.decode(list(ids), skip_special_tokens=False)

  def _entry_bytes(self, token_id: int) -> bytes | None:
    """Bytes of a byte-level or sentencepiece-style vocab entry."""
    piece = self._by_id.get(token_id)
    if piece is None:
      return None
    if self.byte_level:
      u2b = unicode_to_byte()
      if all(c in u2b for c in piece):
        return bytes(u2b[c] for c in piece)
      return piece.encode()  # A non-special added token is stored as plain text.
    if m := _BYTE_PIECE.fullmatch(piece):
      return bytes([int(m.group(1), 16)])
    return piece.replace("▁", " ").encode()

  def _lookup(self, token: str) -> int | None:
    if self.byte_level:
      return self._vocab.get("".join(byte_to_unicode()[b] for b in token.encode()))
    return self._vocab.get(token.replace(" ", "▁"))
