"""Chat sets under the Llama 3 template: perplexity against a direct forward pass, answer hits."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swallow_jax import evaluate
from swallow_jax import decode as generate_lib
from swallow_jax import model as model_lib
from swallow_jax.data import chat


class ChatByteTokenizer:
  """UTF-8 bytes as ids 3..258 and the Llama 3 chat specials after them."""
  bos_id, eos_id, pad_id = 1, 2, 0
  specials = {t: 259 + i for i, t in enumerate((chat.START_HEADER, chat.END_HEADER, chat.EOT))}
  eot_id = specials[chat.EOT]

  def encode(self, text, *, add_bos=False):
    return [self.bos_id] * add_bos + [b + 3 for b in text.encode("utf-8")]

  def decode(self, ids):
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", "replace")

  def token_to_id(self, token):
    return self.specials[token]


ROWS = [{"messages": [{"role": "user", "content": "日本の首都は？"},
                      {"role": "assistant", "content": "日本の首都は東京です。"}], "answer": "東京"},
        {"messages": [{"role": "system", "content": "短く答えて。"},
                      {"role": "user", "content": "2+3は？"},
                      {"role": "assistant", "content": "5です。"}], "answer": 5}]


def test_score_chats_against_direct_computation(monkeypatch):
  config = model_lib.presets.get("tiny")
  params = model_lib.init_params(config, jax.random.key(3))
  tok = ChatByteTokenizer()
  prompts_seen = []

  def fake_generate(cfg, prm, prompts, max_new_tokens, stop_tokens=()):
    prompts_seen.extend(prompts)
    assert stop_tokens == (tok.eos_id, tok.eot_id)
    return [tok.encode("首都は東京です。"), tok.encode("わかりません")]

  monkeypatch.setattr(generate_lib, "generate", fake_generate)
  res = evaluate.score_chats(config, params, tok, ROWS, batch_size=2, max_len=256)

  nll, n = 0.0, 0
  for row in ROWS:
    ids, mask = chat.encode_chat(tok, row["messages"])
    logits = np.asarray(model_lib.forward(config, params, jnp.asarray([ids]))[0], np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    nll -= sum(logp[t - 1, ids[t]] for t in range(1, len(ids)) if mask[t])
    n += sum(mask[1:])
  assert res["metrics"]["assistant_perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
  assert n == len("日本の首都は東京です。".encode()) + len("5です。".encode()) + 2  # + two <|eot_id|>
  assert res["metrics"]["answer_accuracy"] == res["score"] == 0.5
  assert res["num_examples"] == 2 and res["type"] == "chat"
  assert res["samples"][1] == {"user": "2+3は？", "reply": "わかりません", "gold": 5}
  # The prompts are the conversations without the assistant turn, ending in its header.
  assert prompts_seen[0] == chat.encode_prompt(tok, ROWS[0]["messages"][:1])


def test_load_chats(tmp_path):
  good = tmp_path / "chats.jsonl"
  good.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n\n" for r in ROWS))
  assert evaluate.load_chats(str(good)) == ROWS
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(ROWS[0]) + "\n{oops\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
    evaluate.load_chats(str(bad))
  bad.write_text(json.dumps({"messages": ROWS[0]["messages"]}) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:1: a chat row needs 'messages' .* and 'answer'"):
    evaluate.load_chats(str(bad))
  with pytest.raises(FileNotFoundError, match="no such file or directory"):
    evaluate.load_chats(str(tmp_path / "nope.jsonl"))
