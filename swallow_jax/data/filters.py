"""A tiny filter language over record metadata fields.

Grammar (clauses joined by ``and``; values are bare words or quoted strings)::

    subset != web_samples_v1
    lang == ja
    subset not in [web_samples_v1, web_samples_v2]
    format in ["textbook", "wikihow"] and audience != children

Values compare as strings (any non-string JSON value as its JSON text: ``true``, ``3``, ``null``);
a missing field equals nothing, so ``==``/``in`` reject it and ``!=``/``not in`` keep it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

_CLAUSE = re.compile(r"^\s*(?P<field>[A-Za-z_][\w.\-]*)\s*"
                     r"(?P<op>==|!=|\bnot\s+in\b|\bin\b)\s*(?P<value>.+?)\s*$")
_WORD = r"""("(?:[^"\\]|\\.)*"|'[^']*'|[^,\[\]\s"']+)"""


@dataclasses.dataclass(frozen=True)
class Clause:
  """One `field op values` test of a filter."""
  field: str
  op: str  # '==', '!=', 'in', 'not in'
  values: tuple[str, ...]

  def __call__(self, meta: Mapping[str, Any]) -> bool:
    hit = self.field in meta and as_text(meta[self.field]) in self.values
    return hit if self.op in ("==", "in") else not hit


@dataclasses.dataclass(frozen=True)
class Filter:
  """A parsed filter: callable on a metadata dict; picklable."""
  clauses: tuple[Clause, ...]
  text: str

  @property
  def fields(self) -> frozenset[str]:
    """The metadata fields the filter reads."""
    return frozenset(c.field for c in self.clauses)

  def __call__(self, meta: Mapping[str, Any]) -> bool:
    return all(c(meta) for c in self.clauses)


def as_text(value: Any) -> str:
  """A metadata value as filters compare it: a string as is, anything else as its JSON text."""
  return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _unquote(word: str) -> str:
  if word.startswith('"'):
    return json.loads(word)
  return word[1:-1] if word.startswith("'") else word


def _parse_values(op: str, text: str, expr: str) -> tuple[str, ...]:
  if op in ("==", "!="):
    if not re.fullmatch(_WORD, text):
      raise ValueError(f"filter {expr!r}: bad value {text!r}")
    return (_unquote(text),)
  if not (text.startswith("[") and text.endswith("]")):
    raise ValueError(f"filter {expr!r}: '{op}' needs a list like [a, b]")
  inner = text[1:-1]
  if inner.strip() and not re.fullmatch(rf"\s*{_WORD}\s*(?:,\s*{_WORD}\s*)*", inner):
    raise ValueError(f"filter {expr!r}: bad list {text!r}")
  return tuple(_unquote(w) for w in re.findall(_WORD, inner))


def parse_filter(expr: str | None) -> Filter | None:
  """Parses ``expr`` (None or '' -> None); ValueError with the reason otherwise."""
  if expr is None or not expr.strip():
    return None
  clauses = []
  for part in re.split(r"\s+and\s+", expr.strip()):
    if not (m := _CLAUSE.match(part)):
      raise ValueError(
          f"filter {expr!r}: cannot parse {part!r}; expected 'field == v', "
          "'field != v', 'field in [a, b]' or 'field not in [a, b]'")
    op = re.sub(r"\s+", " ", m["op"])
    clauses.append(Clause(m["field"], op, _parse_values(op, m["value"], expr)))
  return Filter(tuple(clauses), expr.strip())
