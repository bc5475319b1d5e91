"""Log-likelihood scoring (multiple choice, perplexity) against direct forward passes."""

import math

import jax
import numpy as np
import pytest

from swallow_jax import decode
from swallow_jax import model as model_lib
from swallow_jax.evaluate import loglik
from helpers import direct_logprobs


@pytest.fixture(scope="module")
def tiny():
  config = model_lib.presets.get("tiny_gqa")
  return config, model_lib.init_params(config, jax.random.key(1))


def test_continuation_logprobs_equal_direct_forward(tiny):
  config, params = tiny
  requests = [([1, 5, 6, 7], [8, 9]), ([1, 40], [41]), ([1] + list(range(100, 130)), [3, 4, 5])]
  got = loglik.continuation_logprobs(config, params, requests, batch_size=2)
  want = [direct_logprobs(config, params, c + x)[-len(x):].sum() for c, x in requests]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Contexts that do not fit keep their last tokens.
  (cut,) = loglik.continuation_logprobs(config, params, [requests[2]], max_len=16)
  seq = (requests[2][0] + requests[2][1])[-16:]
  np.testing.assert_allclose(cut, direct_logprobs(config, params, seq)[-3:].sum(), rtol=1e-5)


def test_text_nll_windows_equal_hand_computation(tiny):
  config, params = tiny
  seq = [1] + [int(x) for x in np.random.default_rng(0).integers(3, 500, 39)]  # 40 tokens
  (whole,) = loglik.text_nll(config, params, [seq])
  assert whole[1] == 39
  np.testing.assert_allclose(whole[0], -direct_logprobs(config, params, seq).sum(), rtol=1e-5)
  # max_len=16: windows [0:16], [15:31], [30:40]; each window's first token is context only.
  (windowed,) = loglik.text_nll(config, params, [seq], max_len=16)
  want = -sum(direct_logprobs(config, params, seq[a:b]).sum()
              for a, b in [(0, 16), (15, 31), (30, 40)])
  assert windowed[1] == 39
  np.testing.assert_allclose(windowed[0], want, rtol=1e-5)


def test_perplexity_metrics_hand_values():
  m = loglik.perplexity_metrics(nll_nats=10.0, num_tokens=5, num_chars=8, num_bytes=20)
  assert m["token_perplexity"] == pytest.approx(math.exp(2.0))
  assert m["bits_per_char"] == pytest.approx(10 / math.log(2) / 8)
  assert m["bits_per_byte"] == pytest.approx(10 / math.log(2) / 20)
  assert m["tokens_per_char"] == pytest.approx(5 / 8)


def test_bucket_length():
  assert [decode.bucket_length(n) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
  assert decode.bucket_length(90, cap=96) == 96


class _Tok:
  """Ids are characters' code points mod 500 (+3); `bos_id` None: a tokenizer without BOS."""

  def __init__(self, bos_id):
    self.bos_id = bos_id

  def encode(self, text, *, add_bos=False):
    return self.bos_prefix() * add_bos + [3 + ord(c) % 500 for c in text]

  def bos_prefix(self):
    return [] if self.bos_id is None else [self.bos_id]


@pytest.mark.parametrize("bos_id", [1, None])
def test_fit_prompt_keeps_bos_and_the_end(bos_id):
  from swallow_jax import evaluate  # pylint: disable=g-import-not-at-top
  tok, truncated = _Tok(bos_id), []
  ids = tok.encode("abcdefghij", add_bos=True)
  assert evaluate.fit_prompt(tok, ids, 20, truncated) == ids and not truncated
  cut = evaluate.fit_prompt(tok, ids, 4, truncated)
  assert cut == tok.bos_prefix() + tok.encode("abcdefghij")[-(4 - len(tok.bos_prefix())):]
  assert len(cut) == 4 and truncated == [1]


def test_truncated_prompts_are_counted_and_warned_once(tiny, caplog):
  import logging  # pylint: disable=g-import-not-at-top
  from swallow_jax import evaluate  # pylint: disable=g-import-not-at-top
  from swallow_jax.evaluate import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  config, params = tiny
  task = tasks_lib.make_task({"task": "mc", "type": "multiple_choice"},
                             [{"question": "x" * n, "choices": ["a", "b"], "answer": 0}
                              for n in (5, 60, 80)])
  for bos_id in (1, None):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      res = evaluate.run_task(config, params, _Tok(bos_id), task, max_len=32)
    assert res["truncated_prompts"] == 2 and res["num_examples"] == 3
    assert caplog.text.count("task mc: 2 of 3 prompts exceed max_len=32") == 1
