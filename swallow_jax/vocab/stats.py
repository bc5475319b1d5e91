"""How many Japanese characters a vocabulary holds as single tokens, and how long text gets."""

from __future__ import annotations

import os
from collections.abc import Iterable

from swallow_jax.tokenizer import Tokenizer

# Unicode blocks counted by the Swallow vocabulary study.
BLOCKS = {"hiragana": (0x3040, 0x309F), "katakana": (0x30A0, 0x30FF), "cjk": (0x4E00, 0x9FFF)}


def single_character(tok: Tokenizer, token_id: int) -> str | None:
  """The character a vocabulary entry stands for, if it is exactly one (valid UTF-8) character."""
  data = tok.token_bytes(token_id)
  if not data or len(data) > 4:
    return None
  try:
    text = data.decode("utf-8")  # Byte-level pieces of a character are not characters.
  except UnicodeDecodeError:
    return None
  return text if len(text) == 1 else None


def vocab_stats(tok: Tokenizer) -> dict[str, int]:
  """``vocab_size`` (specials included) and single-character entry counts per block."""
  chars = [c for c in (single_character(tok, i) for i in range(tok.vocab_size)) if c]
  return {"vocab_size": tok.vocab_size,
          **{name: sum(lo <= ord(c) <= hi for c in chars) for name, (lo, hi) in BLOCKS.items()}}


def read_lines(path: str | os.PathLike) -> list[str]:
  """Non-empty lines of a UTF-8 text file, without their line ends."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{os.fspath(path)}: no such text file")
  try:
    with open(path, encoding="utf-8") as f:
      lines = [text for line in f if (text := line.rstrip("\r\n"))]
  except UnicodeDecodeError as e:
    raise ValueError(f"{os.fspath(path)}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  if not lines:
    raise ValueError(f"{os.fspath(path)}: no text")
  return lines


def count_tokens(tok: Tokenizer, lines: Iterable[str]) -> int:
  """Tokens of the text, each line encoded on its own (no BOS)."""
  return sum(len(tok.encode(line)) for line in lines)


def corpus_stats(tok: Tokenizer, lines: list[str]) -> dict[str, float]:
  """``chars`` (line ends excluded), ``tokens`` and ``chars_per_token`` over the lines."""
  chars, tokens = sum(map(len, lines)), count_tokens(tok, lines)
  return {"chars": chars, "tokens": tokens, "chars_per_token": chars / tokens}


def markdown_table(rows: list[dict[str, object]]) -> str:
  """Rows of the same keys as a markdown table; floats to 3 decimals."""
  keys = list(rows[0])
  cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
  return "\n".join(lines)
