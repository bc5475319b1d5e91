"""The Llama 3 Instruct chat template, as token ids with an SFT loss mask.

Meta's template renders each message as
``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content | trim}<|eot_id|>``, the
first one preceded by ``<|begin_of_text|>``, and the generation prompt as
``<|start_header_id|>assistant<|end_header_id|>\\n\\n``. Text between special tokens
is tokenized piece by piece exactly as a tokenizer does on the rendered string
(special tokens split the text), so the ids equal those of ``apply_chat_template``.

``loss_mask`` is 1 on each assistant message's content tokens and its
``<|eot_id|>`` and 0 elsewhere (BOS, headers, system and user turns, generation prompt).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from swallow_jax.data.sources import InvalidRecord

# The default system prompt of the Swallow instruct models (not added unless asked).
SWALLOW_SYSTEM_PROMPT = "あなたは誠実で優秀な日本人のアシスタントです。"
ROLES = ("system", "user", "assistant")

BOS, START_HEADER, END_HEADER, EOT = (
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


class Tokenizer(Protocol):
  bos_id: int

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


def render_chat(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
  """The template as text (what apply_chat_template(..., tokenize=False) returns)."""
  parts = [BOS]
  for m in messages:
    parts.append(f"{START_HEADER}{m['role']}{END_HEADER}\n\n{m['content'].strip()}{EOT}")
  if add_generation_prompt:
    parts.append(f"{START_HEADER}assistant{END_HEADER}\n\n")
  return "".join(parts)


def encode_chat(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]],
                add_generation_prompt: bool = False, *, system_prompt: str | None = None
                ) -> tuple[list[int], list[int]]:
  """(ids, loss_mask) of the Llama 3 Instruct rendering of `messages`.

  A conversation must have an assistant turn unless `add_generation_prompt` (a prompt
  for generation). `system_prompt` (e.g. SWALLOW_SYSTEM_PROMPT) is prepended when the
  conversation has no system turn.
  """
  messages = with_system_prompt(
      validate_messages(messages, require_assistant=not add_generation_prompt), system_prompt)
  start, end, eot = (tokenizer.token_to_id(t) for t in (START_HEADER, END_HEADER, EOT))
  newlines = tokenizer.encode("\n\n")
  ids, mask = [tokenizer.bos_id], [0]

  def add(tokens: Sequence[int], weight: int) -> None:
    ids.extend(tokens)
    mask.extend([weight] * len(tokens))

  for m in messages:
    add([start, *tokenizer.encode(m["role"]), end], 0)
    body = tokenizer.encode("\n\n" + m["content"].strip())
    # The text after a header is one piece; split its ids where "\n\n" ends. Llama 3's
    # pre-tokenizer always cuts there; other tokenizers fall back to separate pieces.
    if body[:len(newlines)] == newlines:
      head, content = newlines, body[len(newlines):]
    else:
      head, content = newlines, tokenizer.encode(m["content"].strip())
    weight = int(m["role"] == "assistant")
    add(head, 0)
    add([*content, eot], weight)
  if add_generation_prompt:
    add([start, *tokenizer.encode("assistant"), end, *newlines], 0)
  return ids, mask


def encode_prompt(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]], *,
                  system_prompt: str | None = None) -> list[int]:
  """Ids of a generation prompt: the conversation so far + the assistant header."""
  return encode_chat(tokenizer, messages, add_generation_prompt=True,
                     system_prompt=system_prompt)[0]
