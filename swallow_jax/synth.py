r"""Imitation-data synthesis: sample an instruct model's answers, filter them, write SFT JSONL.

    python -m swallow_jax.synth --model=DIR --tokenizer=PATH --input=prompts.jsonl \
        --output=sft.jsonl --num_samples=1 --temperature=1.0 --top_p=0.95 [--json]

Input: JSONL with a `messages` list per line (OpenAI roles). A trailing assistant turn is dropped,
so existing SFT data can be re-answered. Each prompt is encoded with the model's own chat template
(swallow_jax.data.chat; Llama 3's for Llama 3 tokenizer files without one) and answered
`--num_samples` times (Swallow: temperature 1.0, top_p 0.95).

Each response goes through the filters in this order and is counted under the first that rejects it:
  empty       nothing but whitespace;
  truncated   no stop token (the tokenizer's stop_ids: generation_config.json's EOS list and the
              end-of-turn token, e.g. <|eot_id|> or <|im_end|>) within --max_new_tokens;
  length      fewer than --min_chars or more than --max_chars characters;
  language    Japanese ratio below --min_ja_ratio or no kana (with --lang=ja; Chinese text is all
              CJK ideographs and has no kana, so the kana test tells it apart);
  repetition  repeated n-gram ratio above --max_repeat_ratio (character n-grams, n = --repeat_n).
Japanese ratio = characters that are hiragana, katakana or CJK ideographs / all letters (Unicode
L*), so digits, punctuation and spaces do not count either way.
Repeated n-gram ratio = share of the text's character n-grams that occur more than once
(0 for text without loops; "abcabcabc..." tends to 1).

Output: kept examples as {"messages": prompt + [assistant answer]} JSONL at --output, and a stats
summary (counts removed per filter, share of Japanese responses) at --output + ".stats.json", also
printed (as JSON with --json).
"""

from collections import Counter
from collections.abc import Sequence
from typing import Any

from absl import flags

from swallow_jax import cli
from swallow_jax import fileio

KANA_RANGES = ((0x3040, 0x309F), (0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9D))
CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FFFF))
FILTERS = ("empty", "truncated", "length", "language", "repetition")


def _in(c: str, ranges) -> bool:
  return any(lo <= ord(c) <= hi for lo, hi in ranges)


def japanese_ratio(text: str) -> float:
  """Share of letters that are kana or CJK ideographs (0 when the text has no letters)."""
  letters = [c for c in text if c.isalpha()]
  return sum(_in(c, KANA_RANGES) or _in(c, CJK_RANGES) for c in letters) / max(1, len(letters))


def is_japanese(text: str, min_ratio: float = 0.5) -> bool:
  """Whether at least `min_ratio` of the characters are Japanese and some are kana."""
  return japanese_ratio(text) >= min_ratio and any(_in(c, KANA_RANGES) for c in text)


def repeated_ngram_ratio(text: str, n: int = 10) -> float:
  """Share of character n-grams (whitespace collapsed) that occur more than once in the text."""
  text = " ".join(text.split())
  grams = [text[i:i + n] for i in range(len(text) - n + 1)]
  return sum(c for c in Counter(grams).values() if c > 1) / max(1, len(grams))


def first_failing_filter(text: str, stopped: bool, *, min_chars: int = 1, max_chars: int = 8192,
                         lang: str = "ja", min_ja_ratio: float = 0.5, repeat_n: int = 10,
                         max_repeat_ratio: float = 0.3) -> str | None:
  """The name of the first filter (in FILTERS order) that rejects a response, or None to keep it."""
  if not text.strip():
    return "empty"
  if not stopped:
    return "truncated"
  if not min_chars <= len(text.strip()) <= max_chars:
    return "length"
  if lang == "ja" and not is_japanese(text, min_ja_ratio):
    return "language"
  if repeated_ngram_ratio(text, repeat_n) > max_repeat_ratio:
    return "repetition"
  return None


def filter_responses(responses: Sequence[tuple[str, bool]], *, min_ja_ratio: float = 0.5,
                     **filter_kw) -> tuple[list[bool], dict[str, Any]]:
  """Applies the filters to (text, stopped) pairs; returns keep flags and the stats summary."""
  reasons = [first_failing_filter(t, s, min_ja_ratio=min_ja_ratio, **filter_kw)
             for t, s in responses]
  nonempty = [t for t, _ in responses if t.strip()]
  stats = {
      "responses": len(responses),
      "kept": reasons.count(None),
      "removed": {f: reasons.count(f) for f in FILTERS},
      # Share over all non-empty responses, before any filter: the model's own language behaviour.
      "japanese_share": sum(is_japanese(t, min_ja_ratio) for t in nonempty) / max(1, len(nonempty)),
      "mean_japanese_ratio": sum(map(japanese_ratio, nonempty)) / max(1, len(nonempty)),
  }
  return [r is None for r in reasons], stats


def read_prompts(path: str) -> list[list[dict[str, str]]]:
  """`messages` lists from JSONL, without a trailing assistant turn."""
  prompts = []
  for n, row in fileio.read_jsonl(path):
    messages = row.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
      raise ValueError(f"{path}:{n}: expected a JSON object with a 'messages' list")
    if messages and messages[-1].get("role") == "assistant":
      messages = messages[:-1]
    if not messages or messages[-1].get("role") != "user":
      raise ValueError(f"{path}:{n}: the conversation must end with a user turn")
    prompts.append(messages)
  if not prompts:
    raise ValueError(f"{path}: no prompts")
  return prompts


def synthesize(config, params, tokenizer, prompts: Sequence[list[dict[str, str]]], *,
               num_samples: int = 1, max_new_tokens: int = 512, temperature: float = 1.0,
               top_p: float = 0.95, top_k: int = 0, seed: int = 0, batch_size: int = 8,
               progress: bool = False, **filter_kw) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Samples, filters, and returns (SFT examples, stats); `progress` shows a bar per batch."""
  from swallow_jax import decode as gen  # pylint: disable=g-import-not-at-top
  from swallow_jax.data import chat  # pylint: disable=g-import-not-at-top

  encoded = [chat.encode_chat(tokenizer, m, add_generation_prompt=True)[0] for m in prompts]
  rows = [(i, ids) for i, ids in enumerate(encoded) for _ in range(num_samples)]
  outs = gen.generate_detailed(
      config, params, [ids for _, ids in rows], max_new_tokens, temperature=temperature,
      top_k=top_k, top_p=top_p, stop_tokens=gen.stop_tokens_for(tokenizer), seed=seed,
      batch_size=batch_size, progress="synth" if progress else "")
  responses = [(tokenizer.decode(o.tokens).strip(), o.stopped) for o in outs]
  keep, stats = filter_responses(responses, **filter_kw)
  examples = [{"messages": [*prompts[i], {"role": "assistant", "content": text}]}
              for (i, _), (text, _), k in zip(rows, responses, keep) if k]
  return examples, {"prompts": len(prompts), "num_samples": num_samples, **stats}


FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
  del argv
  for name in ("model", "input", "output"):
    if not getattr(FLAGS, name):
      raise cli.UsageError(f"--{name} is required")
  if FLAGS.num_samples < 1 or FLAGS.max_new_tokens < 1:
    raise cli.UsageError("--num_samples and --max_new_tokens must be positive")
  cli.check_output(FLAGS.output, FLAGS.overwrite)
  prompts = read_prompts(FLAGS.input)
  from swallow_jax import decode as gen  # pylint: disable=g-import-not-at-top
  config, params, tokenizer = gen.load_for_decoding(FLAGS.model, FLAGS.tokenizer, FLAGS.dtype)
  examples, stats = synthesize(config, params, tokenizer, prompts, progress=True, **{
      name: FLAGS[name].value for name in (
          "num_samples", "max_new_tokens", "temperature", "top_p", "top_k", "seed", "batch_size",
          "lang", "min_ja_ratio", "min_chars", "max_chars", "repeat_n", "max_repeat_ratio")})
  fileio.write_jsonl(FLAGS.output, examples)
  fileio.write_json(FLAGS.output + ".stats.json", stats)
  if FLAGS.json:
    cli.print_json(stats)
  else:
    removed = ", ".join(f"{k} {v}" for k, v in stats["removed"].items())
    print(f"{stats['kept']}/{stats['responses']} responses kept (removed: {removed}); "
          f"Japanese share {stats['japanese_share']:.1%}; wrote {FLAGS.output}")


if __name__ == "__main__":
  cli.alias("prompts", "input")
  cli.define_decoding_flags(temperature=1.0, top_p=0.95, max_new_tokens=512)
  flags.DEFINE_string("input", None, "Prompts: JSONL with a `messages` list per line.")
  flags.DEFINE_string("output", None, "Output SFT JSONL; stats go to OUTPUT.stats.json.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
  flags.DEFINE_integer("num_samples", 1, "Responses sampled per prompt.")
  flags.DEFINE_integer("batch_size", 8, "Prompts decoded together.")
  flags.DEFINE_enum("lang", "ja", ["ja", "any"], "Language filter: keep Japanese only, or any.")
  flags.DEFINE_float("min_ja_ratio", 0.5, "Minimum Japanese character ratio for --lang=ja.")
  flags.DEFINE_integer("min_chars", 1, "Minimum response length in characters.")
  flags.DEFINE_integer("max_chars", 8192, "Maximum response length in characters.")
  flags.DEFINE_integer("repeat_n", 10, "Character n-gram size of the repetition filter.")
  flags.DEFINE_float("max_repeat_ratio", 0.3, "Maximum repeated n-gram ratio.")
  flags.DEFINE_bool("json", False, "Print the stats summary as JSON.")
  cli.run(main, prog="synth")
