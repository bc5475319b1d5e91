r"""Decode from any model: a plain prompt or a chat on stdin with the model's own chat template.

    python -m swallow_jax.generate --model=DIR --prompt="日本の首都は"
    python -m swallow_jax.generate --model=DIR --chat [--system="..."]

--model is any path swallow_jax.model.io.resolve accepts (HF dir, Hub id in the local cache,
`convert --to_orbax` dir, training run); --tokenizer defaults to the model's own. The prompt gets
a BOS only if the tokenizer's own config adds one, and generation stops at the tokenizer's stop
tokens. The decoding itself is `swallow_jax.decode` (`sj.generate`).
"""

from collections.abc import Sequence
import itertools
import sys

from absl import flags

from swallow_jax import cli
from swallow_jax import decode
from swallow_jax.data import chat

FLAGS = flags.FLAGS


def _chat(config, params, tok, sample_kw) -> None:
  messages = [{"role": "system", "content": FLAGS.system}] if FLAGS.system else []
  print("Chat: type a message, an empty line or Ctrl-D to quit.", file=sys.stderr)
  for turn in itertools.count():
    print("user> ", end="", file=sys.stderr, flush=True)  # stdout carries only the replies
    text = sys.stdin.readline().strip()  # "" at end of input
    if not text:
      break
    messages.append({"role": "user", "content": text})
    ids, _ = chat.encode_chat(tok, messages, add_generation_prompt=True)
    (reply,) = decode.generate(config, params, [ids], **sample_kw, seed=FLAGS.seed + turn)
    answer = tok.decode(reply).strip()
    print(f"assistant> {answer}", flush=True)
    messages.append({"role": "assistant", "content": answer})


def main(argv: Sequence[str]) -> None:
  del argv
  if not FLAGS.model:
    raise cli.UsageError("--model is required")
  if FLAGS.chat == (FLAGS.prompt is not None):
    raise cli.UsageError("give exactly one of --prompt=TEXT or --chat")
  if FLAGS.max_new_tokens < 1:
    raise cli.UsageError("--max_new_tokens must be >= 1")
  config, params, tok = decode.load_for_decoding(FLAGS.model, FLAGS.tokenizer, FLAGS.dtype)
  sample_kw = dict(max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                   top_k=FLAGS.top_k, top_p=FLAGS.top_p, stop_tokens=decode.stop_tokens_for(tok))
  if FLAGS.chat:
    _chat(config, params, tok, sample_kw)
  else:
    (out,) = decode.generate(config, params, [tok.encode(FLAGS.prompt, add_bos=True)],
                             **sample_kw, seed=FLAGS.seed)
    print(tok.decode(out))


if __name__ == "__main__":
  cli.define_decoding_flags(temperature=0.0, top_p=1.0, max_new_tokens=256)
  flags.DEFINE_string("prompt", None, "Plain-text prompt (no chat template; BOS if the tokenizer "
                      "adds one).")
  flags.DEFINE_bool("chat", False, "Chat on stdin with the model's own chat template.")
  flags.DEFINE_string("system", None, "System message for --chat.")
  cli.run(main, prog="generate")
