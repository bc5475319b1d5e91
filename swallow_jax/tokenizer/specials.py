"""Special tokens and the chat template from a model's own files.

`read_model_tokens` reads them in transformers' order of authority: ``tokenizer_config.json``
(``bos/eos/pad_token`` as strings or AddedToken dicts, an explicit null meaning none;
``add_bos_token``; ``chat_template``, a string or a list with a "default" entry), then
``special_tokens_map.json``, ``chat_template.jinja``, and the ``bos/eos/pad_token_id`` of
``generation_config.json`` (eos may be a list: the stop tokens) and ``config.json``. Without
the first two files, roles are guessed by token name (`swallow_jax.tokenizer.base`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from swallow_jax import fileio

# The chat_template of meta-llama/Meta-Llama-3-8B-Instruct's tokenizer_config.json.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
ROLES = ("bos", "eos", "pad")


@dataclasses.dataclass(frozen=True)
class ModelTokens:
  """What a model directory's files say; ``None`` where they say nothing.

  ``tokens[role]`` is a token string, ``ids[role]`` an id (from generation_config/config.json);
  a role present in ``tokens`` with value None was explicitly set to none. ``found``: a
  tokenizer_config.json or special_tokens_map.json exists (else roles are guessed by name).
  """
  found: bool = False
  tokens: dict[str, str | None] = dataclasses.field(default_factory=dict)
  ids: dict[str, int | None] = dataclasses.field(default_factory=dict)
  stop_ids: tuple[int, ...] = ()
  add_bos: bool | None = None
  chat_template: str | None = None


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.isfile(path):
    return None
  if not isinstance(data := fileio.read_json(path), dict):
    raise ValueError(f"{path}: expected a JSON object")
  return data


def _token_string(value: Any, path: str, key: str) -> str | None:
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return value["content"]
  raise ValueError(f"{path}: {key} must be a string or an AddedToken object, got {value!r}")


def _ids(value: Any, path: str, key: str) -> tuple[int, ...]:
  values = value if isinstance(value, list) else [value]
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
    raise ValueError(f"{path}: {key} must be an id or a list of ids, got {value!r}")
  return tuple(values)


def _template(value: Any, path: str) -> str | None:
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, list):
    named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
    if isinstance(named.get("default"), str):
      return named["default"]
  raise ValueError(f"{path}: chat_template must be a string or a list with a 'default' entry")


def read_model_tokens(directory: str) -> ModelTokens:
  """The special tokens, stop ids, add_bos and chat template that `directory`'s files give."""
  tokens: dict[str, str | None] = {}
  ids: dict[str, int | None] = {}
  stop: tuple[int, ...] = ()
  add_bos = template = None
  found = False
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    path = os.path.join(directory, name)
    if (data := _read_json(path)) is None:
      continue
    found = True
    for role in ROLES:
      if f"{role}_token" in data and role not in tokens:
        tokens[role] = _token_string(data[f"{role}_token"], path, f"{role}_token")
    if name == "tokenizer_config.json":
      if isinstance(data.get("add_bos_token"), bool):
        add_bos = data["add_bos_token"]
      template = _template(data.get("chat_template"), path)
  jinja = os.path.join(directory, "chat_template.jinja")
  if template is None and os.path.isfile(jinja):
    with open(jinja, encoding="utf-8") as f:
      template = f.read()
  for name in ("generation_config.json", "config.json"):
    path = os.path.join(directory, name)
    if (data := _read_json(path)) is None:
      continue
    for role in ROLES:
      value = data.get(f"{role}_token_id")
      if value is not None and role not in ids:
        ids[role] = _ids(value, path, f"{role}_token_id")[0]
    if not stop and data.get("eos_token_id") is not None:
      stop = _ids(data["eos_token_id"], path, "eos_token_id")
  return ModelTokens(found, tokens, ids, stop, add_bos, template)
