"""tiktoken ranks as an equivalent Hugging Face ``tokenizer.json`` (for HF tools and resize)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from swallow_jax import fileio
from swallow_jax.tokenizer import TiktokenTokenizer, byte_to_unicode


def token_splits(token: Sequence, vocab: Mapping) -> list[tuple]:
  """Every split of `token` into two entries of `vocab`, in the order of their ids."""
  splits = [(token[:i], token[i:]) for i in range(1, len(token))
            if token[:i] in vocab and token[i:] in vocab]
  return sorted(splits, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))


def bpe_merges(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
  """Merge list equivalent to tiktoken's ranks: every split of a token into two tokens, ordered
  by the rank of the result (tiktoken merges by the rank of the concatenation, HF by pair)."""
  return [pair for token, _ in sorted(ranks.items(), key=lambda kv: kv[1])
          for pair in token_splits(token, ranks)]


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
  # As Llama 3's shipped tokenizer.json: texts start with BOS when the caller asks for specials.
  bos = tok.special_tokens["<|begin_of_text|>"]
  hf.post_processor = processors.Sequence([
      processors.ByteLevel(trim_offsets=False),
      processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                    pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                    special_tokens=[("<|begin_of_text|>", bos)])])
  hf.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                         for s, _ in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])])
  config = json.loads(hf.to_str())
  # The specials get their tiktoken ids and are listed in the model vocab too: `tokenizers`
  # numbers added tokens missing from it after its entries.
  by_content = {a["content"]: a for a in config["added_tokens"]}
  for name, i in tok.special_tokens.items():
    by_content[name]["id"] = i
    config["model"]["vocab"][name] = i
  fileio.write_json(os.fspath(path), config, indent=None)
  return os.fspath(path)
