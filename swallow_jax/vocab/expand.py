"""Vocabulary expansion study: add Japanese subwords to a tokenizer and measure the gain.

Subwords sentencepiece learns on a Japanese corpus are added (characters first) until ``num_new``
are in, old ids kept, in the base's format; on BPE bases only strings the expanded-so-far tokenizer
splits into two tokens (else ``skipped_unreachable``). Details and limits: docs/tokenizers.md.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence

import regex  # tiktoken's dependency; Python's re has no \p{L}.
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from swallow_jax import fileio
from swallow_jax import tokenizer as tokenizer_lib
from swallow_jax.vocab import convert
from swallow_jax.vocab import stats
from swallow_jax.vocab import train

# Characters that make a piece Japanese: kana, CJK ideographs (+ext. A, compatibility),
# iteration marks, half-width katakana.
JAPANESE = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3005-\u3007"
                      "\uff66-\uff9f]")
# The files that give a tokenizer's tokens their roles (tokenizer.specials); ids are kept, so
# they hold for the expanded tokenizer as they are.
ROLE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "generation_config.json")
_SMALLER_THAN_CHARS = re.compile(r"smaller than required_chars\. \d+ vs (\d+)")
Piece = collections.namedtuple("Piece", "text score")


def bpe_merge(parts: list, rank: Callable[[object, object], int | None]) -> list:
  """Greedy BPE: merge the adjacent pair of lowest rank (leftmost on ties) until none has one."""
  parts = list(parts)
  while ranked := [(r, i) for i, pair in enumerate(zip(parts, parts[1:]))
                   if (r := rank(*pair)) is not None]:
    _, i = min(ranked)
    parts[i:i + 2] = [parts[i] + parts[i + 1]]
  return parts


class _TiktokenExpander:
  """New ranks after the specials; tiktoken merges by the rank of the concatenated bytes."""

  def __init__(self, tok: tokenizer_lib.TiktokenTokenizer):
    self.tok = tok
    self.ranks = dict(tok.ranks)
    self.next_id = itertools.count(tok.vocab_size)
    self.chunks = regex.compile(tok.pattern)

  def has(self, text: str) -> bool:
    return text.encode() in self.ranks

  def add(self, piece: Piece) -> bool:
    if self.chunks.findall(piece.text) != [piece.text]:
      return False
    # Old ranks all come first, so start from the old tokenization and go on with all ranks.
    parts = [self.tok.token_bytes(i) for i in self.tok.encode(piece.text)]
    if len(bpe_merge(parts, lambda a, b: self.ranks.get(a + b))) != 2:
      return False
    self.ranks[piece.text.encode()] = next(self.next_id)
    return True

  def write(self, output_dir: str) -> str:
    path = os.path.join(output_dir, "tokenizer.model")
    tokenizer_lib.write_tiktoken_ranks(path, self.ranks)
    return path


class _HFByteLevelExpander:
  """New entries and merges appended to a byte-level BPE tokenizer.json (ids after all others)."""

  def __init__(self, tok: tokenizer_lib.HFTokenizer):
    model = tok.config["model"]
    if model.get("type") != "BPE" or not tok.byte_level:
      raise ValueError(f"{tok.path}: expansion supports byte-level BPE tokenizer.json files "
                       f"(this one is {model.get('type')}"
                       f"{'' if tok.byte_level else ', not byte-level'})")
    self.tok = tok
    self.config = json.loads(json.dumps(tok.config))
    self.model = self.config["model"]
    self.merges_as_str = bool(self.model["merges"]) and isinstance(self.model["merges"][0], str)
    pairs = (m.split(" ", 1) if self.merges_as_str else m for m in self.model["merges"])
    self.merge_rank = {tuple(p): r for r, p in enumerate(pairs)}
    self.next_id = itertools.count(tok.vocab_size)
    self.b2u = tokenizer_lib.byte_to_unicode()
    # `tokenizers` numbers added tokens missing from the model vocab after the model's entries,
    # which would move Llama 3's specials behind the new tokens; listing them keeps their ids.
    for added in self.config["added_tokens"]:
      self.model["vocab"].setdefault(added["content"], added["id"])

  def _symbol(self, text: str) -> str:
    return "".join(self.b2u[b] for b in text.encode())

  def has(self, text: str) -> bool:
    return self._symbol(text) in self.model["vocab"]

  def add(self, piece: Piece) -> bool:
    if len(self.tok.tok.pre_tokenizer.pre_tokenize_str(piece.text)) != 1:
      return False
    parts = self.tok.tok.encode(piece.text, add_special_tokens=False).tokens
    if len(bpe_merge(parts, lambda a, b: self.merge_rank.get((a, b)))) != 2:
      return False
    # As tiktoken_to_tokenizer_json: every split into two tokens is a merge, as tiktoken would
    # merge any of them.
    vocab, symbol = self.model["vocab"], self._symbol(piece.text)
    for pair in convert.token_splits(symbol, vocab):
      self.merge_rank[pair] = len(self.merge_rank)
      self.model["merges"].append(" ".join(pair) if self.merges_as_str else list(pair))
    vocab[symbol] = next(self.next_id)
    return True

  def write(self, output_dir: str) -> str:
    path = os.path.join(output_dir, "tokenizer.json")
    fileio.write_json(path, self.config, indent=None)
    return path


class _SentencePieceExpander:
  """New pieces appended to a sentencepiece model (BPE: below every score; unigram: own score)."""

  def __init__(self, tok: tokenizer_lib.SentencePieceTokenizer):
    Type = sp_pb2.ModelProto.SentencePiece  # pylint: disable=invalid-name
    self.proto = sp_pb2.ModelProto.FromString(tok.proto.SerializeToString())
    self.bpe = self.proto.trainer_spec.model_type == sp_pb2.TrainerSpec.BPE
    text_types = (Type.NORMAL, Type.USER_DEFINED)
    self.scores = {p.piece: p.score for p in self.proto.pieces if p.type in text_types}
    self.next_score = min(self.scores.values(), default=0.0) - 1.0
    self.all_pieces = {p.piece for p in self.proto.pieces}

  def has(self, text: str) -> bool:
    return text.replace(" ", "▁") in self.all_pieces

  def add(self, piece: Piece) -> bool:
    text, score = piece.text.replace(" ", "▁"), piece.score
    if self.bpe:
      # Characters are sentencepiece's starting symbols; longer pieces come from merges, by the
      # score of the concatenated piece, highest first.
      rank = lambda a, b: -self.scores[a + b] if a + b in self.scores else None
      if len(text) > 1 and (any(c not in self.scores for c in text)
                            or len(bpe_merge(list(text), rank)) != 2):
        return False
      score, self.next_score = self.next_score, self.next_score - 1.0
    self.proto.pieces.add(piece=text, score=score)
    self.scores[text] = score
    self.all_pieces.add(text)
    return True

  def write(self, output_dir: str) -> str:
    self.proto.trainer_spec.vocab_size = len(self.proto.pieces)
    path = os.path.join(output_dir, "tokenizer.model")
    with fileio.atomic_file(path, "wb") as f:
      f.write(self.proto.SerializeToString())
    return path


_EXPANDERS = {"tiktoken": _TiktokenExpander, "tokenizers": _HFByteLevelExpander,
              "sentencepiece": _SentencePieceExpander}


def required_chars(lines: Sequence[str], coverage: float) -> int:
  """How many distinct characters sentencepiece keeps at this character coverage."""
  counts = sorted(collections.Counter("".join(lines)).values(), reverse=True)
  need = coverage * sum(counts)
  return next((n for n, c in enumerate(itertools.accumulate(counts), 1) if c >= need), len(counts))


def learn_pieces(corpus: str, vocab_size: int, workdir: str, model_type: str,
                 character_coverage: float) -> tuple[list[Piece], int]:
  """Japanese pieces sentencepiece learns on the corpus (characters first, then learning order)
  and the size of the model it could train (at most ``vocab_size``)."""
  fit = lambda size: train.train_sentencepiece(
      corpus, size, os.path.join(workdir, "learned"), model_type=model_type, byte_fallback=False,
      special_tokens=(), character_coverage=character_coverage, shrink_to_fit=True)
  try:
    path = fit(vocab_size)
  except RuntimeError as e:  # Our estimate of the characters it keeps was short.
    if not (m := _SMALLER_THAN_CHARS.search(str(e))):
      raise
    path = fit(vocab_size + int(m.group(1)))
  proto = tokenizer_lib.read_sentencepiece_proto(path)
  normal = sp_pb2.ModelProto.SentencePiece.NORMAL
  pieces = [Piece(p.piece.replace("▁", " "), p.score) for p in proto.pieces
            if p.type == normal and JAPANESE.search(p.piece)]
  return sorted(pieces, key=lambda p: len(p.text) > 1), len(proto.pieces)  # Stable sort.


@dataclasses.dataclass
class Expansion:
  """What ``expand`` did; ``as_dict`` is the CLI's JSON."""
  tokenizer: str
  output: str
  num_new_requested: int
  num_new: int
  learned_pieces: int
  skipped_present: int
  skipped_unreachable: int
  vocab_size_before: int
  vocab_size_after: int
  heldout_chars: int
  heldout_tokens_before: int
  heldout_tokens_after: int
  new_tokens_used: int
  new_tokens: list[str] = dataclasses.field(repr=False)

  @property
  def reduction(self) -> float:
    """Fraction of held-out tokens the added pieces save."""
    return 1.0 - self.heldout_tokens_after / self.heldout_tokens_before

  @property
  def speedup(self) -> float:
    """Held-out tokens before / after: how much shorter the text gets."""
    return 1.0 / (1.0 - self.reduction)

  def as_dict(self) -> dict[str, object]:
    """The report as JSON-ready values, with the derived ratios."""
    out = {k: v for k, v in dataclasses.asdict(self).items() if k != "new_tokens"}
    out.update(reduction=self.reduction, speedup=self.speedup,
               chars_per_token_before=self.heldout_chars / self.heldout_tokens_before,
               chars_per_token_after=self.heldout_chars / self.heldout_tokens_after)
    return out


def expand(tokenizer_path: str, corpus: str, heldout: str, num_new: int, output_dir: str, *,
           model_type: str | None = None, character_coverage: float = 0.9995,
           max_rounds: int = 3) -> Expansion:
  """Adds up to ``num_new`` Japanese subwords learned on ``corpus``; measures on ``heldout``.

  `output_dir` gets the expanded tokenizer (the base's format and file name), the base's
  `ROLE_FILES` and ``expansion.json`` (this report plus the added strings in id order).
  `model_type` (sentencepiece 'bpe' or 'unigram') defaults to a sentencepiece base's type, else
  'bpe'. A bigger model is trained (up to `max_rounds`) while too few new pieces are found.
  """
  if num_new < 1:
    raise ValueError(f"num_new must be positive, got {num_new}")
  base = tokenizer_lib.load_tokenizer(tokenizer_path)
  expander = _EXPANDERS[base.backend](base)
  bpe = getattr(expander, "bpe", True)  # only a sentencepiece base can be unigram
  model_type = model_type or ("bpe" if bpe else "unigram")
  if not bpe and model_type != "unigram":
    raise ValueError(f"{base.path}: a unigram sentencepiece base needs model_type='unigram'")
  corpus_lines, heldout_lines = stats.read_lines(corpus), stats.read_lines(heldout)
  size = required_chars(corpus_lines, character_coverage) + 1 + num_new
  with tempfile.TemporaryDirectory() as workdir:
    for round_ in range(max_rounds):
      logging.info("vocab expand: round %d: training a %s sentencepiece model of %d pieces",
                   round_ + 1, model_type, size)
      pieces, trained = learn_pieces(corpus, size, workdir, model_type, character_coverage)
      expander = _EXPANDERS[base.backend](base)
      added, present, unreachable = [], 0, 0
      for piece in pieces:
        if len(added) == num_new:
          break
        if expander.has(piece.text):
          present += 1
        elif expander.add(piece):
          added.append(piece.text)
        else:
          unreachable += 1
      if len(added) == num_new or trained < size:  # Done, or the corpus supports no more.
        break
      size = math.ceil(size * 1.2 * num_new / max(len(added), 1))
  os.makedirs(output_dir, exist_ok=True)
  for name in ROLE_FILES:  # mode 0644, not the source's
    src, dst = os.path.join(os.path.dirname(base.path), name), os.path.join(output_dir, name)
    if os.path.isfile(src) and not (os.path.exists(dst) and os.path.samefile(src, dst)):
      shutil.copyfile(src, dst)
      os.chmod(dst, 0o644)
  path = expander.write(output_dir)
  new = tokenizer_lib.load_tokenizer(path)
  after_ids = [i for line in heldout_lines for i in new.encode(line)]
  result = Expansion(
      tokenizer=base.path, output=path, num_new_requested=num_new, num_new=len(added),
      learned_pieces=len(pieces), skipped_present=present, skipped_unreachable=unreachable,
      vocab_size_before=base.vocab_size, vocab_size_after=new.vocab_size,
      heldout_chars=sum(map(len, heldout_lines)), heldout_tokens_after=len(after_ids),
      heldout_tokens_before=stats.count_tokens(base, heldout_lines),
      new_tokens_used=len({i for i in after_ids if i >= base.vocab_size}), new_tokens=added)
  fileio.write_json(os.path.join(output_dir, "expansion.json"),
                    {**result.as_dict(), "new_tokens": added}, indent=1)
  return result
