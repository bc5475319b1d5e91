"""One tokenizer protocol over three file formats.

``load_tokenizer(path)`` takes a file or a directory and picks the backend:

* tiktoken BPE ranks (Meta's Llama 3 ``tokenizer.model``: ``base64-bytes rank`` lines), with
  Llama 3's pre-tokenization pattern and its 256 special tokens placed right after the
  contiguous ranks (``<|begin_of_text|>`` = 128000 ... ``<|eot_id|>`` = 128009), as Meta's
  ``llama/tokenizer.py`` does. Ranks after a gap (ids past the specials) are the extra tokens an
  expanded vocabulary adds; the specials keep their ids.
* Hugging Face ``tokenizer.json`` through ``tokenizers``.
* sentencepiece ``.model`` (Llama 2, Mistral, the original Swallow; and the demo models made by
  ``train_sentencepiece``, which carry the Llama 3 chat specials as user-defined symbols).

In every backend ``encode`` treats special-token strings inside the text as plain text: only
``token_to_id`` (or ``add_bos``) produces special ids. ``decode`` renders special ids as their
strings.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

import sentencepiece as spm
import tiktoken
import tokenizers
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import decoders, models, pre_tokenizers, processors

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

# The specials a demo sentencepiece model carries (the Llama 3 chat template needs these).
CHAT_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                       "<|end_header_id|>", "<|eot_id|>")

# Role of a special token -> names it goes by, first match wins.
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>")
_EOS_NAMES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>")
_EOT_NAMES = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")
# sentencepiece user-defined symbols of this form are special tokens, not text.
_SPECIAL_FORM = re.compile(r"<\|[^|]+\|>")


@runtime_checkable
class Tokenizer(Protocol):
  """What the rest of swallow_jax relies on (see CONTRACTS.md)."""
  backend: str                       # 'tiktoken' | 'tokenizers' | 'sentencepiece'
  path: str                          # the file loaded
  vocab_size: int                    # largest id + 1, special tokens included
  bos_id: int | None
  eos_id: int | None
  eot_id: int | None
  pad_id: int | None
  special_tokens: dict[str, int]

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Ids of the text; special-token strings in it are plain text."""

  def decode(self, ids: Iterable[int]) -> str:
    """Text of the ids; special ids render as their names."""

  def token_to_id(self, token: str) -> int:
    """Id of a special token or of the entry whose text is ``token``; KeyError otherwise."""

  def token_bytes(self, token_id: int) -> bytes | None:
    """What the entry stands for in text (a special: its name; None: no text, e.g. <unk>)."""

  @property
  def identity(self) -> str:
    """'{backend}:sha256:{hex digest of the file}'."""


@functools.cache
def _file_sha256(path: str, mtime_ns: int) -> str:
  del mtime_ns  # Part of the cache key only.
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


class _Base:
  """Shared bookkeeping: special-token roles, lookups, identity."""
  backend = ""

  def __init__(self, path: str, special_tokens: Mapping[str, int]):
    self.path = path
    self.special_tokens = dict(special_tokens)
    self.bos_id = self._first(_BOS_NAMES)
    self.eos_id = self._first(_EOS_NAMES)
    self.eot_id = self._first(_EOT_NAMES)
    self.pad_id = self._first(_PAD_NAMES)
    self._special_by_id = {i: s for s, i in self.special_tokens.items()}

  def _first(self, names: Sequence[str]) -> int | None:
    return next((self.special_tokens[n] for n in names if n in self.special_tokens), None)

  def _with_bos(self, ids: list[int], add_bos: bool) -> list[int]:
    if not add_bos:
      return ids
    if self.bos_id is None:
      raise ValueError(f"{self.path}: add_bos=True but the tokenizer has no BOS token")
    return [self.bos_id, *ids]

  def _lookup(self, token: str) -> int | None:
    raise NotImplementedError

  def token_to_id(self, token: str) -> int:
    """Id of a special token, or of the vocabulary entry whose text is exactly ``token``."""
    if token in self.special_tokens:
      return self.special_tokens[token]
    found = self._lookup(token)
    if found is None:
      raise KeyError(f"{token!r} is not a token of {self.path}")
    return found

  @property
  def identity(self) -> str:
    """Backend and sha256 of the file, e.g. for dataset manifests."""
    return f"{self.backend}:sha256:{_file_sha256(self.path, os.stat(self.path).st_mtime_ns)}"

  def __repr__(self) -> str:
    return f"<{type(self).__name__} {self.path} vocab_size={self.vocab_size}>"


# ---------------------------------------------------------------------------------------------
# tiktoken


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


def write_tiktoken_ranks(path: str, ranks: Mapping[bytes, int]) -> None:
  with open(path, "w", encoding="ascii") as f:
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
      f.write(f"{base64.b64encode(token).decode()} {rank}\n")


class TiktokenTokenizer(_Base):
  """Byte-level BPE ranks run by tiktoken, with Llama 3's pattern and special tokens."""
  backend = "tiktoken"

  def __init__(self, path: str):
    self.ranks = read_tiktoken_ranks(path)
    # Specials sit right after the contiguous ranks 0..n-1 (Meta: n = len(ranks)); ranks past
    # that gap come from vocabulary expansion and must not collide with them.
    taken = set(self.ranks.values())
    num_base = next(i for i in range(len(taken) + 1) if i not in taken)
    specials = {s: num_base + i for i, s in enumerate(LLAMA3_SPECIAL_TOKENS)}
    if clash := taken.intersection(specials.values()):
      raise ValueError(f"{path}: ranks {sorted(clash)[:3]} collide with the special-token ids")
    super().__init__(path, specials)
    self.pattern = LLAMA3_PATTERN
    self.enc = tiktoken.Encoding(name=os.path.basename(path), pat_str=self.pattern,
                                 mergeable_ranks=self.ranks, special_tokens=specials)
    self.vocab_size = max(max(taken), max(specials.values())) + 1
    self._bytes = {r: t for t, r in self.ranks.items()}

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    return self._with_bos(self.enc.encode_ordinary(text), add_bos)

  def decode(self, ids: Iterable[int]) -> str:
    return self.enc.decode(list(ids))

  def token_bytes(self, token_id: int) -> bytes | None:
    if token_id in self._special_by_id:
      return self._special_by_id[token_id].encode()
    return self._bytes.get(token_id)

  def _lookup(self, token: str) -> int | None:
    return self.ranks.get(token.encode())


# ---------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json


@functools.cache
def byte_to_unicode() -> dict[int, str]:
  """GPT-2's reversible map from bytes to printable characters (ByteLevel vocabularies)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


@functools.cache
def unicode_to_byte() -> dict[str, int]:
  return {c: b for b, c in byte_to_unicode().items()}


def _mentions(config: object, type_name: str) -> bool:
  return type_name in json.dumps(config)


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class HFTokenizer(_Base):
  """A Hugging Face ``tokenizer.json`` run by the ``tokenizers`` library."""
  backend = "tokenizers"

  def __init__(self, path: str):
    try:
      self.tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # The Rust side raises a bare Exception.
      raise ValueError(f"{path}: not a loadable tokenizer.json ({e})") from None
    # Special added tokens inside text are then tokenized as ordinary text.
    self.tok.encode_special_tokens = True
    self.config = json.loads(self.tok.to_str())
    self.byte_level = _mentions(self.config.get("pre_tokenizer"), "ByteLevel") or _mentions(
        self.config.get("decoder"), "ByteLevel")
    added = self.tok.get_added_tokens_decoder()
    super().__init__(path, {t.content: i for i, t in added.items() if t.special})
    self._vocab = self.tok.get_vocab(with_added_tokens=True)
    self._by_id = {i: s for s, i in self._vocab.items()}
    self.vocab_size = max(self._vocab.values()) + 1

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    return self._with_bos(self.tok.encode(text, add_special_tokens=False).ids, add_bos)

  def decode(self, ids: Iterable[int]) -> str:
    return self.tok.decode(list(ids), skip_special_tokens=False)

  def token_bytes(self, token_id: int) -> bytes | None:
    if token_id in self._special_by_id:
      return self._special_by_id[token_id].encode()
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
      b2u = byte_to_unicode()
      return self._vocab.get("".join(b2u[b] for b in token.encode()))
    return self._vocab.get(token.replace(" ", "▁"))


def bpe_merges(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
  """Merge list equivalent to tiktoken's ranks: every split of a token into two tokens, ordered
  by the rank of the result (tiktoken merges by the rank of the concatenation, HF by pair)."""
  merges = []
  for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
    splits = [(token[:i], token[i:]) for i in range(1, len(token))
              if token[:i] in ranks and token[i:] in ranks]
    merges += sorted(splits, key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
  return merges


def tiktoken_to_tokenizer_json(tok: TiktokenTokenizer, path: str | os.PathLike) -> str:
  """Writes a ``tokenizer.json`` that tokenizes exactly like the tiktoken file (ids included)."""
  b2u = byte_to_unicode()
  sym = lambda data: "".join(b2u[b] for b in data)
  vocab = {sym(t): r for t, r in tok.ranks.items()}
  merges = [(sym(a), sym(b)) for a, b in bpe_merges(tok.ranks)]
  hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
  hf.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(tok.pattern), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  hf.decoder = decoders.ByteLevel()
  hf.post_processor = processors.ByteLevel(trim_offsets=False)
  hf.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                         for s, _ in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])])
  config = json.loads(hf.to_str())
  # The specials get their tiktoken ids and are listed in the model vocab too: `tokenizers`
  # numbers added tokens missing from it after its entries.
  by_content = {a["content"]: a for a in config["added_tokens"]}
  for name, i in tok.special_tokens.items():
    by_content[name]["id"] = i
    config["model"]["vocab"][name] = i
  path = os.fspath(path)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(config, f, ensure_ascii=False)
  return path


# ---------------------------------------------------------------------------------------------
# sentencepiece


def read_sentencepiece_proto(path: str) -> sp_pb2.ModelProto:
  proto = sp_pb2.ModelProto()
  with open(path, "rb") as f:
    data = f.read()
  try:
    proto.ParseFromString(data)
  except Exception:  # protobuf's DecodeError, whose import path varies by version.
    proto.Clear()
  if not proto.pieces:
    raise ValueError(f"{path}: not a sentencepiece model")
  return proto


class SentencePieceTokenizer(_Base):
  """A sentencepiece model. User-defined symbols of the form ``<|...|>`` count as specials."""
  backend = "sentencepiece"

  def __init__(self, path: str):
    self.proto = read_sentencepiece_proto(path)
    Type = sp_pb2.ModelProto.SentencePiece  # pylint: disable=invalid-name
    specials = {}
    run_proto = sp_pb2.ModelProto()
    run_proto.CopyFrom(self.proto)
    for i, p in enumerate(run_proto.pieces):
      if p.type == Type.CONTROL:
        specials[p.piece] = i
      elif p.type == Type.USER_DEFINED and _SPECIAL_FORM.fullmatch(p.piece):
        # sentencepiece matches user-defined symbols inside text; control symbols it never does.
        p.type = Type.CONTROL
        specials[p.piece] = i
    super().__init__(path, specials)
    self.sp = spm.SentencePieceProcessor()
    self.sp.LoadFromSerializedProto(run_proto.SerializeToString())
    self.vocab_size = self.sp.get_piece_size()
    self._piece_ids = {p.piece: i for i, p in enumerate(self.proto.pieces)}

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    return self._with_bos(self.sp.encode(text, out_type=int), add_bos)

  def decode(self, ids: Iterable[int]) -> str:
    # sentencepiece drops control ids; render specials as text between decoded runs.
    out, run = [], []
    for i in ids:
      if i in self._special_by_id:
        out.append(self.sp.decode(run))
        out.append(self._special_by_id[i])
        run = []
      else:
        run.append(i)
    out.append(self.sp.decode(run))
    return "".join(out)

  def token_bytes(self, token_id: int) -> bytes | None:
    if token_id in self._special_by_id:
      return self._special_by_id[token_id].encode()
    if not 0 <= token_id < self.vocab_size or self.sp.is_unknown(token_id) or self.sp.is_unused(
        token_id):
      return None
    piece = self.sp.id_to_piece(token_id)
    if self.sp.is_byte(token_id):
      return bytes([int(piece[3:5], 16)])
    return piece.replace("▁", " ").encode()

  def _lookup(self, token: str) -> int | None:
    return self._piece_ids.get(token.replace(" ", "▁"))


# ---------------------------------------------------------------------------------------------
# Loading


_DIR_CANDIDATES = ("tokenizer.model", "tokenizer.json")


def _looks_like_tiktoken(head: bytes) -> bool:
  first = head.split(b"\n", 1)[0].strip()
  return bool(re.fullmatch(rb"[A-Za-z0-9+/=]+ \d+", first))


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """Loads a tokenizer file, or the ``tokenizer.model``/``tokenizer.json`` in a directory."""
  path = os.fspath(path)
  if os.path.isdir(path):
    found = [os.path.join(path, n) for n in _DIR_CANDIDATES
             if os.path.isfile(os.path.join(path, n))]
    found += sorted(os.path.join(path, n) for n in os.listdir(path)
                    if n.endswith((".model", ".tiktoken")) and n not in _DIR_CANDIDATES)
    if not found:
      raise FileNotFoundError(f"{path}: directory has no tokenizer.model, tokenizer.json, "
                              "*.model or *.tiktoken file")
    path = found[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such tokenizer file or directory")
  with open(path, "rb") as f:
    head = f.read(4096)
  if head.lstrip()[:1] == b"{":
    return HFTokenizer(path)
  if _looks_like_tiktoken(head):
    return TiktokenTokenizer(path)
  try:
    return SentencePieceTokenizer(path)
  except ValueError:
    raise ValueError(f"{path}: neither a tiktoken BPE file, a tokenizer.json nor a "
                     "sentencepiece model") from None


# ---------------------------------------------------------------------------------------------
# Training a small sentencepiece model (the demo's tokenizer, and the expansion study's pieces)


_TOO_BIG = re.compile(r"Vocabulary size (?:is )?too (?:big|high).*<= (\d+)")


def train_sentencepiece(inputs: str | os.PathLike | Sequence[str | os.PathLike] | Iterator[str],
                        vocab_size: int, output_prefix: str | os.PathLike, *,
                        model_type: str = "bpe", byte_fallback: bool = True,
                        special_tokens: Sequence[str] = CHAT_SPECIAL_TOKENS,
                        character_coverage: float = 0.9995, shrink_to_fit: bool = False,
                        **trainer_options) -> str:
  """Trains a sentencepiece model and returns the path of ``{output_prefix}.model``.

  Args:
    inputs: a text file, a list/tuple of text files, or an iterator of text lines.
    vocab_size: pieces in the model, specials, ``<unk>`` and byte pieces included.
    output_prefix: writes ``{output_prefix}.model`` and ``.vocab``.
    model_type: 'bpe' or 'unigram'.
    byte_fallback: unknown characters become UTF-8 byte pieces (no ``<unk>`` in practice).
    special_tokens: user-defined symbols placed at ids 1.. (the Llama 3 chat specials by
      default); ``load_tokenizer`` treats them as special tokens, never as text.
    character_coverage: share of characters covered by character pieces.
    shrink_to_fit: if the text cannot support ``vocab_size`` pieces, train the largest model
      it supports instead of failing.
    **trainer_options: passed on to ``SentencePieceTrainer.train``.

  Text is kept as is (identity normalisation, no dummy prefix, no whitespace folding), so
  ``decode(encode(text)) == text`` and ``encode(a) + encode(b)`` is how ``a + b`` splits at
  a piece boundary, which chat templates rely on.
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
    for p in inputs:
      if not os.path.isfile(p):
        raise FileNotFoundError(f"{p}: no such text file")
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
