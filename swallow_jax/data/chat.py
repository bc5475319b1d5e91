"""Chat templates as token ids with an SFT loss mask, rendered as transformers renders them.

``encode_chat`` renders the tokenizer's own ``chat_template`` (Llama 3 Instruct's for a Llama 3
file without one) in a transformers-like sandbox; its ids equal ``apply_chat_template(...,
tokenize=True)``. The loss mask is transformers' assistant mask for ``{% generation %}``
templates, else 1 on each assistant reply and its end-of-turn token. See docs/data.md.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from swallow_jax.data.sources import InvalidRecord
from swallow_jax.tokenizer.base import EOT_NAMES, Tokenizer
from swallow_jax.tokenizer.specials import LLAMA3_TEMPLATE

# The default system prompt of the Swallow instruct models (not added unless asked).
SWALLOW_SYSTEM_PROMPT = "あなたは誠実で優秀な日本人のアシスタントです。"
ROLES = ("system", "user", "assistant")

BOS, START_HEADER, END_HEADER, EOT = (
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

_LEADING_NEWLINES = re.compile(r"\s*\n")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")  # transformers' test


class ChatError(InvalidRecord):
  """A conversation the template cannot render for training."""


class UnknownRoleError(ChatError):
  reason = "unknown_role"


class EmptyConversationError(ChatError):
  reason = "empty_conversation"


class NoAssistantTurnError(ChatError):
  reason = "no_assistant_turn"


class MalformedMessageError(ChatError):
  reason = "missing_field"


class EmptyMessageError(ChatError):
  reason = "empty_text"


def validate_messages(messages: Any, *, require_assistant: bool = True) -> list[dict[str, str]]:
  """Checks a conversation; returns [{'role', 'content'}]; ChatError subclasses otherwise."""
  if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
    raise MalformedMessageError(f"messages must be a list, got {type(messages).__name__}")
  if not messages:
    raise EmptyConversationError("empty conversation")
  out = []
  for i, m in enumerate(messages):
    if not (isinstance(m, Mapping) and all(isinstance(m.get(k), str) for k in ("role", "content"))):
      raise MalformedMessageError(f"message {i} needs string 'role' and 'content'")
    if m["role"] not in ROLES:
      raise UnknownRoleError(f"message {i}: unknown role {m['role']!r} (want one of {ROLES})")
    if not m["content"].strip():
      raise EmptyMessageError(f"message {i} ({m['role']}) has empty content")
    out.append({"role": m["role"], "content": m["content"]})
  if require_assistant and not any(m["role"] == "assistant" for m in out):
    raise NoAssistantTurnError("no assistant turn")
  return out


class _Generation(Extension):
  """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask blocks) renders its
  body; while a rendering is tracked (``environment.generation_spans`` holds the output so far
  and a span list) it records the body's character span in the output, as transformers does."""
  tags = {"generation"}

  def __init__(self, environment):
    super().__init__(environment)
    self.tracking = contextvars.ContextVar("generation_spans", default=None)
    environment.extend(generation_spans=self.tracking)

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

  def _render(self, caller):
    body = caller()
    if (tracking := self.tracking.get()) is not None:
      blocks, spans = tracking
      start = sum(map(len, blocks))  # a block's text is yielded after its call returns
      spans.append((start, start + len(body)))
    return body


def _raise_exception(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def compile_template(template: str) -> jinja2.Template:
  """A chat template compiled in transformers' sandboxed environment."""
  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[_Generation, "jinja2.ext.loopcontrols"])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(template)


def _template(tokenizer: Tokenizer) -> tuple[dict[str, int], str]:
  """(special-token string -> id, chat template). A tokenizer needs only ``bos_id``, ``encode``
  and ``token_to_id``: without ``special_tokens`` it gets the Llama 3 chat specials, without a
  ``chat_template`` Llama 3's when it has those specials."""
  table = getattr(tokenizer, "special_tokens", None)
  if table is not None:
    specials = dict(table)
  else:
    specials = {t: tokenizer.token_to_id(t) for t in (START_HEADER, END_HEADER, EOT)}
    if tokenizer.bos_id is not None:
      specials[BOS] = tokenizer.bos_id
  if own := getattr(tokenizer, "chat_template", None):
    return specials, own
  if all(t in specials for t in (START_HEADER, END_HEADER, EOT)):
    return specials, LLAMA3_TEMPLATE
  raise ValueError(f"{getattr(tokenizer, 'path', tokenizer)}: the tokenizer has no chat_template "
                   "(tokenizer_config.json or chat_template.jinja) and is not a Llama 3 one")


def _token_strings(tokenizer: Tokenizer, specials: Mapping[str, int]) -> dict[str, str]:
  """The template's bos_token, eos_token and pad_token ("" for what the tokenizer lacks)."""
  by_id = {i: s for s, i in specials.items()}
  return {f"{role}_token": by_id.get(getattr(tokenizer, f"{role}_id", None), "")
          for role in ("bos", "eos", "pad")}


def render_chat(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False,
                tokenizer: Tokenizer | None = None) -> str:
  """The template as text (what apply_chat_template(..., tokenize=False) returns); the
  tokenizer's own template, Llama 3's without a tokenizer."""
  if tokenizer is None:
    return _render(LLAMA3_TEMPLATE, {"bos_token": BOS, "eos_token": "<|end_of_text|>"},
                   messages, add_generation_prompt)
  specials, template = _template(tokenizer)
  return _render(template, _token_strings(tokenizer, specials), messages, add_generation_prompt)


def _render(template: str, tokens: Mapping[str, str], messages, add_generation_prompt,
            spans: list[tuple[int, int]] | None = None) -> str:
  """The rendered text; `tokens`: the special-token variables (`_token_strings`); with `spans`,
  each generation block's (start, end) is appended there."""
  compiled = compile_template(template)
  blocks = []
  tracking = compiled.environment.generation_spans
  previous = tracking.set(None if spans is None else (blocks, spans))
  try:
    for block in compiled.generate(messages=[dict(m) for m in messages], tools=None,
                                   add_generation_prompt=add_generation_prompt, documents=None,
                                   **tokens):
      blocks.append(block)
  except jinja2.exceptions.TemplateError as e:
    raise ChatError(f"chat template: {e}", "invalid_conversation") from None
  finally:
    tracking.reset(previous)
  return "".join(blocks)


def _parts(specials: Mapping[str, int], text: str) -> Iterator[tuple[int, str, int | None]]:
  """(start, text, id) of each special-token string in `text` and (start, text, None) of each
  non-empty stretch between them."""
  pattern = "|".join(map(re.escape, sorted(specials, key=len, reverse=True)))
  pos = 0
  for i, part in enumerate(re.split(f"({pattern})", text) if specials else [text]):
    if part:  # re.split puts the special-token strings at odd indices
      yield pos, part, specials[part] if i % 2 else None
    pos += len(part)


def _tokenize(tokenizer: Tokenizer, specials: Mapping[str, int], text: str) -> list[int]:
  """Ids of rendered text: special-token strings are those tokens, the rest is encoded."""
  return [i for _, part, special in _parts(specials, text)
          for i in (tokenizer.encode(part) if special is None else [special])]


def _tokenize_offsets(tokenizer: Tokenizer, specials: Mapping[str, int], text: str
                      ) -> tuple[list[int], list[tuple[int, int]]]:
  """`_tokenize`'s ids and each token's (start, end) character span in `text`."""
  ids, offsets = [], []
  for start, part, special in _parts(specials, text):
    got, spans = (tokenizer.encode_offsets(part) if special is None
                  else ([special], [(0, len(part))]))
    ids.extend(got)
    offsets.extend((start + a, start + b) for a, b in spans)
  return ids, offsets


def _overlap_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
                  ) -> list[int]:
  """1 on every token overlapping one of the (ordered) spans: transformers' assistant mask."""
  mask, k = [], 0
  for start, end in offsets:
    while k < len(spans) and start >= spans[k][1]:
      k += 1
    mask.append(int(k < len(spans) and end > spans[k][0]))
  return mask


def _split(tokenizer, specials, text: str, pos: int, start: int, stop: int
           ) -> tuple[list[int], list[int]]:
  """Ids of text[pos:start] and of the reply text[start:stop], cut where the tokenizer itself
  cuts: at the reply's start, or after its leading newlines (a newline run is one pre-token in
  Llama 3's pattern, not in GPT-2's). A tokenizer that merges across both is cut at the start
  anyway, so the reply's tokens are exactly its own."""
  natural = _tokenize(tokenizer, specials, text[pos:stop])
  lead = len(m.group()) if (m := _LEADING_NEWLINES.match(text, start, stop)) else 0
  first = None
  for cut in dict.fromkeys((start, start + lead)):
    before = _tokenize(tokenizer, specials, text[pos:cut])
    reply = _tokenize(tokenizer, specials, text[cut:stop])
    if before + reply == natural:
      return before, reply
    first = first or (before, reply)
  return first


def encode_chat(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]],
                add_generation_prompt: bool = False, *, system_prompt: str | None = None
                ) -> tuple[list[int], list[int]]:
  """(ids, loss_mask) of the tokenizer's chat template rendering of `messages`.

  A conversation must have an assistant turn unless `add_generation_prompt`. `system_prompt`
  (e.g. SWALLOW_SYSTEM_PROMPT) is prepended when the conversation has no system turn.
  """
  messages = validate_messages(messages, require_assistant=not add_generation_prompt)
  if system_prompt and messages[0]["role"] != "system":
    messages = [{"role": "system", "content": system_prompt}, *messages]
  specials, template = _template(tokenizer)
  tokens = _token_strings(tokenizer, specials)
  render = functools.partial(_render, template, tokens)
  spans = [] if _GENERATION_TAG.search(template) else None
  text = render(messages, add_generation_prompt, spans)
  if spans is not None:
    ids, offsets = _tokenize_offsets(tokenizer, specials, text)
    return ids, _overlap_mask(offsets, spans)
  ends = [t for t in (*EOT_NAMES, tokens["eos_token"]) if t and t in specials]
  ids, mask, pos = [], [], 0
  for k in (k for k, m in enumerate(messages) if m["role"] == "assistant"):
    start, upto = len(render(messages[:k], True)), render(messages[:k + 1], False)
    if not (text.startswith(upto) and start <= len(upto)):
      raise ChatError(f"message {k}: the chat template does not render the conversation prefix "
                      "by prefix, so its assistant tokens cannot be found", "invalid_conversation")
    reply = text[start:len(upto)]
    found = [reply.find(t) + len(t) for t in ends if t in reply]
    stop = start + min(found) if found else len(upto)
    before, reply = _split(tokenizer, specials, text, pos, start, stop)
    ids += before + reply
    mask += [0] * len(before) + [1] * len(reply)
    pos = stop
  tail = _tokenize(tokenizer, specials, text[pos:])
  return ids + tail, mask + [0] * len(tail)


def chat_special_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
  """The special tokens the tokenizer's chat template writes (BOS, headers, end of turn, ...),
  found by rendering a short conversation and resolved in this vocabulary; sorted."""
  probe = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
           {"role": "user", "content": "c"}]
  specials, template = _template(tokenizer)
  found = set()
  for messages in ([{"role": "system", "content": "s"}, *probe], probe):
    try:
      text = _render(template, _token_strings(tokenizer, specials), messages, True)
    except ChatError:
      continue
    found.update(i for i in _tokenize(tokenizer, specials, text) if i in specials.values())
  return tuple(sorted(found))


def encode_prompt(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]], *,
                  system_prompt: str | None = None) -> list[int]:
  """Ids of a generation prompt: the conversation so far + the assistant header."""
  return encode_chat(tokenizer, messages, add_generation_prompt=True,
                     system_prompt=system_prompt)[0]
