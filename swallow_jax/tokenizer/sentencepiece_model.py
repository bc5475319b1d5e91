"""sentencepiece ``.model`` files (Llama 2, Mistral, the original Swallow, the demo's models)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from swallow_jax.tokenizer.base import BaseTokenizer, char_spans
from swallow_jax.tokenizer.specials import ModelTokens

# User-defined symbols of this form (the Llama 3 chat specials of the demo's models, see
# `swallow_jax.vocab.train`) are special tokens, not text.
_SPECIAL_FORM = re.compile(r"<\|[^|]+\|>")


def read_sentencepiece_proto(path: str) -> sp_pb2.ModelProto:
  """The model's protobuf; ValueError when the file is not a sentencepiece model."""
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


class SentencePieceTokenizer(BaseTokenizer):
  """A sentencepiece model. User-defined symbols of the form ``<|...|>`` count as specials."""
  backend = "sentencepiece"

  def __init__(self, path: str, model: ModelTokens = ModelTokens()):
    self.proto = read_sentencepiece_proto(path)
    Type = sp_pb2.ModelProto.SentencePiece  # pylint: disable=invalid-name
    specials = {}
    run_proto = sp_pb2.ModelProto.FromString(self.proto.SerializeToString())
    for i, p in enumerate(run_proto.pieces):
      # sentencepiece matches user-defined symbols inside text; control symbols it never does.
      if p.type == Type.USER_DEFINED and _SPECIAL_FORM.fullmatch(p.piece):
        p.type = Type.CONTROL
      if p.type == Type.CONTROL:
        specials[p.piece] = i
    self.sp = spm.SentencePieceProcessor(model_proto=run_proto.SerializeToString())
    self.vocab_size = self.sp.get_piece_size()
    self._piece_ids = {p.piece: i for i, p in enumerate(self.proto.pieces)}
    # Llama 2's LlamaTokenizer (add_bos_token=True) starts every text with its BOS.
    self._init_specials(path, specials, model, adds_bos=lambda bos: True)

  def _encode(self, text: str) -> list[int]:
    return self.sp.encode(text, out_type=int)

  def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of the text and each token's character span (sentencepiece's byte alignment)."""
    pieces = self.sp.encode(text, out_type="proto").pieces
    return [p.id for p in pieces], char_spans(text, [(p.begin, p.end) for p in pieces])

  def decode(self, ids: Iterable[int]) -> str:
    """Text of the ids, specials as their names."""
    # sentencepiece drops control ids; render specials as text between decoded runs.
    return "".join("".join(self._special_by_id[i] for i in run) if special
                   else self.sp.decode(list(run))
                   for special, run in itertools.groupby(ids, lambda i: i in self._special_by_id))

  def _entry_bytes(self, token_id: int) -> bytes | None:
    """Bytes of a piece (byte pieces as their byte), None for <unk>."""
    if not 0 <= token_id < self.vocab_size or self.sp.is_unknown(token_id) or self.sp.is_unused(
        token_id):
      return None
    piece = self.sp.id_to_piece(token_id)
    if self.sp.is_byte(token_id):
      return bytes([int(piece[3:5], 16)])
    return piece.replace("▁", " ").encode()

  def _lookup(self, token: str) -> int | None:
    return self._piece_ids.get(token.replace(" ", "▁"))
