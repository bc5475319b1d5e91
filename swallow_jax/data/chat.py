"""Chat templates as token ids with an SFT loss mask: the model's own template, rendered as
transformers renders it.

``encode_chat`` renders the tokenizer's ``chat_template`` (from the model's
tokenizer_config.json or chat_template.jinja) in a sandboxed jinja2 environment set up like
transformers' (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, ``raise_exception``,
``strftime_now``, the ``tojson`` filter, ``bos_token``/``eos_token`` variables). A Llama 3
tokenizer file that carries no template gets Meta's Llama 3 Instruct template:
``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content | trim}<|eot_id|>`` per message, the
first preceded by BOS, and ``<|start_header_id|>assistant<|end_header_id|>\\n\\n`` as the
generation prompt.

The rendered text is tokenized as a tokenizer does it (special-token strings are those tokens,
the text between them is encoded), so the ids equal ``apply_chat_template(..., tokenize=True)``.
A template with ``{% generation %}...{% endgeneration %}`` blocks gets transformers' assistant
mask (``apply_chat_template(..., return_assistant_tokens_mask=True)``): the character span of
each block is recorded while rendering, and every token whose offsets overlap one is 1 (so a
token straddling a block's start, e.g. ChatML's header newline merged with a reply's leading
one, is 1; prefix rendering below leaves it out). Tokenizers need ``encode_offsets`` for it.
Any other template gets a mask from rendering the conversation prefix by prefix, so each
assistant reply's place in the text is known; ``loss_mask`` is 1 on each assistant message's
content tokens and its end-of-turn token (``<|eot_id|>``, ``<|im_end|>``, or EOS for templates
that end a turn with it) and 0 elsewhere (BOS, headers, system and user turns, generation
prompt, what a template writes after the end-of-turn token). The text is cut where
each reply starts, at the point where the tokenizer itself cuts (the reply's start or after its
leading newlines), so the masked tokens are exactly the reply's; a tokenizer that would merge
across both is cut at the start all the same.
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from swallow_jax.data.sources import InvalidRecord
from swallow_jax.tokenizer.specials import LLAMA3_TEMPLATE

# The default system prompt of the Swallow instruct models (not added unless asked).
SWALLOW_SYSTEM_PROMPT = "あなたは誠実で優秀な日本人のアシスタントです。"
ROLES = ("system", "user", "assistant")

BOS, START_HEADER, END_HEADER, EOT = (
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

_END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>")
_LEADING_NEWLINES = re.compile(r"\s*\n")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")  # transformers' test


class Tokenizer(Protocol):
  """What encode_chat needs; ``special_tokens``, ``chat_template``, ``eos_id`` are optional
  (a tokenizer without them is rendered with the Llama 3 template, its specials found with
  ``token_to_id``), and so is ``encode_offsets`` (for templates with generation blocks)."""
  bos_id: int | None

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]: ...

  def token_to_id(self, token: str) -> int: ...


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


def validate_messages(messages: Any, *, require_assistant: bool = True
                      ) -> list[dict[str, str]]:
  """Checks a conversation; returns [{'role', 'content'}]; ChatError subclasses otherwise."""
  if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
    raise MalformedMessageError(f"messages must be a list, got {type(messages).__name__}")
  if not messages:
    raise EmptyConversationError("empty conversation")
  out = []
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(
        m.get("content"), str):
      raise MalformedMessageError(f"message {i} needs string 'role' and 'content'")
    if m["role"] not in ROLES:
      raise UnknownRoleError(f"message {i}: unknown role {m['role']!r} (want one of {ROLES})")
    if not m["content"].strip():
      raise EmptyMessageError(f"message {i} ({m['role']}) has empty content")
    out.append({"role": m["role"], "content": m["content"]})
  if require_assistant and not any(m["role"] == "assistant" for m in out):
    raise NoAssistantTurnError("no assistant turn")
  return out


def with_system_prompt(messages: Sequence[Mapping[str, str]], system_prompt: str | None
                       ) -> list[Mapping[str, str]]:
  """Prepends `system_prompt` unless it is empty or the conversation has a system turn."""
  if not system_prompt or (messages and messages[0].get("role") == "system"):
    return list(messages)
  return [{"role": "system", "content": system_prompt}, *messages]


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


def _specials(tokenizer: Tokenizer) -> dict[str, int]:
  """Special-token string -> id; a test double without a table gets the Llama 3 chat specials."""
  table = getattr(tokenizer, "special_tokens", None)
  if table is not None:
    return dict(table)
  out = {t: tokenizer.token_to_id(t) for t in (START_HEADER, END_HEADER, EOT)}
  if tokenizer.bos_id is not None:
    out[BOS] = tokenizer.bos_id
  return out


def _template(tokenizer: Tokenizer, specials: Mapping[str, int]) -> str:
  own = getattr(tokenizer, "chat_template", None)
  if own:
    return own
  if all(t in specials for t in (START_HEADER, END_HEADER, EOT)):
    return LLAMA3_TEMPLATE
  raise ValueError(f"{getattr(tokenizer, 'path', tokenizer)}: the tokenizer has no chat_template "
                   "(tokenizer_config.json or chat_template.jinja) and is not a Llama 3 one")


def _name(specials: Mapping[str, int], token_id: int | None) -> str:
  by_id = {i: s for s, i in specials.items()}
  return by_id.get(token_id, "") if token_id is not None else ""


def render_chat(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False,
                tokenizer: Tokenizer | None = None) -> str:
  """The template as text (what apply_chat_template(..., tokenize=False) returns); the
  tokenizer's own template, Llama 3's without a tokenizer."""
  if tokenizer is None:
    return compile_template(LLAMA3_TEMPLATE).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token=BOS,
        eos_token="<|end_of_text|>")
  specials = _specials(tokenizer)
  return _render(tokenizer, specials, _template(tokenizer, specials), messages,
                 add_generation_prompt)


def _render(tokenizer, specials, template, messages, add_generation_prompt,
            spans: list[tuple[int, int]] | None = None) -> str:
  """The rendered text; with `spans`, each generation block's (start, end) is appended there."""
  compiled = compile_template(template)
  variables = dict(
      messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
      tools=None, documents=None,
      bos_token=_name(specials, tokenizer.bos_id),
      eos_token=_name(specials, getattr(tokenizer, "eos_id", None)),
      pad_token=_name(specials, getattr(tokenizer, "pad_id", None)))
  try:
    if spans is None:
      return compiled.render(**variables)
    blocks = []
    token = compiled.environment.generation_spans.set((blocks, spans))
    try:
      for block in compiled.generate(**variables):
        blocks.append(block)
    finally:
      compiled.environment.generation_spans.reset(token)
    return "".join(blocks)
  except jinja2.exceptions.TemplateError as e:
    raise ChatError(f"chat template: {e}", "invalid_conversation") from None


def _parts(specials: Mapping[str, int], text: str) -> Iterator[tuple[int, str, int | None]]:
  """(start, text, id) of each special-token string in `text` and (start, text, None) of each
  non-empty stretch between them."""
  pos = 0
  if specials:
    pattern = "|".join(map(re.escape, sorted(specials, key=len, reverse=True)))
    for m in re.finditer(pattern, text):
      if m.start() > pos:
        yield pos, text[pos:m.start()], None
      yield m.start(), m.group(), specials[m.group()]
      pos = m.end()
  if pos < len(text):
    yield pos, text[pos:], None


def _tokenize(tokenizer: Tokenizer, specials: Mapping[str, int], text: str) -> list[int]:
  """Ids of rendered text: special-token strings are those tokens, the rest is encoded."""
  ids = []
  for _, part, special in _parts(specials, text):
    ids.extend(tokenizer.encode(part) if special is None else [special])
  return ids


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


def _end_of_turn(specials: Mapping[str, int], tokenizer: Tokenizer) -> list[str]:
  eos = _name(specials, getattr(tokenizer, "eos_id", None))
  return [t for t in (*_END_OF_TURN, eos) if t and t in specials]


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

  A conversation must have an assistant turn unless `add_generation_prompt` (a prompt
  for generation). `system_prompt` (e.g. SWALLOW_SYSTEM_PROMPT) is prepended when the
  conversation has no system turn. The mask comes from the template's generation blocks
  when it has them, else from prefix rendering (module docstring).
  """
  messages = with_system_prompt(
      validate_messages(messages, require_assistant=not add_generation_prompt), system_prompt)
  specials = _specials(tokenizer)
  template = _template(tokenizer, specials)
  if _GENERATION_TAG.search(template):
    spans = []
    text = _render(tokenizer, specials, template, messages, add_generation_prompt, spans)
    ids, offsets = _tokenize_offsets(tokenizer, specials, text)
    return ids, _overlap_mask(offsets, spans)
  text = _render(tokenizer, specials, template, messages, add_generation_prompt)
  ends = _end_of_turn(specials, tokenizer)
  spans = []  # (start, end) of each assistant reply and its end-of-turn token in `text`
  for k, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    start = len(_render(tokenizer, specials, template, messages[:k], True))
    stop = len(_render(tokenizer, specials, template, messages[:k + 1], False))
    if not (text.startswith(_render(tokenizer, specials, template, messages[:k + 1], False))
            and start <= stop):
      raise ChatError(f"message {k}: the chat template does not render the conversation prefix "
                      "by prefix, so its assistant tokens cannot be found", "invalid_conversation")
    reply = text[start:stop]
    found = [reply.find(t) + len(t) for t in ends if t in reply]
    spans.append((start, start + min(found) if found else stop))
  ids, mask, pos = [], [], 0
  for start, stop in spans:
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
  specials = _specials(tokenizer)
  template = _template(tokenizer, specials)
  found = set()
  for messages in ([{"role": "system", "content": "s"}, *probe], probe):
    try:
      text = _render(tokenizer, specials, template, messages, True)
    except ChatError:
      continue
    found.update(i for i in _tokenize(tokenizer, specials, text) if i in specials.values())
  return tuple(sorted(found))


def encode_prompt(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]], *,
                  system_prompt: str | None = None) -> list[int]:
  """Ids of a generation prompt: the conversation so far + the assistant header."""
  return encode_chat(tokenizer, messages, add_generation_prompt=True,
                     system_prompt=system_prompt)[0]
