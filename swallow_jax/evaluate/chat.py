"""Chat-format ability: held-out single-turn chats scored under the Llama 3 chat template.

A chat set is JSONL, one conversation per line, with no header (unlike task files):

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}],
     "answer": "the bare fact a good reply contains"}

Two numbers per set, both needing the template, which a task file's prompt text cannot express:
  assistant_perplexity  token perplexity of the reference replies (content and <|eot_id|>) after
                        the rendered conversation before them;
  answer_accuracy       share of greedy replies to the non-assistant turns that contain `answer`
                        (plain substring; the result's `score`).
"""

from collections.abc import Mapping, Sequence
import math
from typing import Any

from swallow_jax import decode
from swallow_jax import fileio
from swallow_jax.data.chat import encode_chat
from swallow_jax.evaluate import loglik

NUM_SAMPLES = 3  # replies echoed into the result for inspection


def load_chats(path: str) -> list[dict[str, Any]]:
  """Reads a chat set; ValueError naming the file and line of a malformed row."""
  rows = []
  for n, row in fileio.read_jsonl(path):
    if not isinstance(row.get("messages"), list) or "answer" not in row:
      raise ValueError(f"{path}:{n}: a chat row needs 'messages' (a list) and 'answer'")
    rows.append(row)
  if not rows:
    raise ValueError(f"{path}: no chats")
  return rows


def score_chats(config, params, tokenizer, rows: Sequence[Mapping[str, Any]], *,
                batch_size: int = 8, max_len: int = 2048, max_new_tokens: int = 48
                ) -> dict[str, Any]:
  """A result shaped like run_tasks' ({"type": "chat", "num_examples", "metrics", "score",
  "samples"}) for chat rows (see the module docstring)."""
  encoded = [encode_chat(tokenizer, r["messages"]) for r in rows]
  lps = loglik.token_logprobs(config, params, [ids for ids, _ in encoded],
                              batch_size=batch_size, max_len=max_len)
  nll = -sum(float((lp * mask[1:]).sum()) for lp, (_, mask) in zip(lps, encoded))
  n_tokens = sum(sum(mask[1:]) for _, mask in encoded)
  prompts = [encode_chat(tokenizer, [m for m in r["messages"] if m["role"] != "assistant"],
                         add_generation_prompt=True)[0] for r in rows]
  replies = [tokenizer.decode(o) for o in decode.generate(
      config, params, prompts, max_new_tokens, stop_tokens=decode.stop_tokens_for(tokenizer))]
  accuracy = sum(str(r["answer"]) in reply for r, reply in zip(rows, replies)) / max(len(rows), 1)
  return {"type": "chat", "num_examples": len(rows),
          "metrics": {"assistant_perplexity": math.exp(nll / max(n_tokens, 1)),
                      "answer_accuracy": accuracy},
          "score": accuracy,
          "samples": [{"user": next((m["content"] for m in reversed(r["messages"])
                                     if m["role"] == "user"), ""),
                       "reply": reply, "gold": r["answer"]}
                      for r, reply in list(zip(rows, replies))[:NUM_SAMPLES]]}
