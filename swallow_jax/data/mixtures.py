"""Published continual-pretraining mixtures as data: lists of source dicts.

Each function takes the root directory under which every source was preprocessed
(``ROOT/<name>``) and returns ``[dict(name, path, weight, filter)]`` for ``config.data.sources``.
Weights are relative shares of tokens (the published ones add up to 100.1%; Grain normalises).
"""

from __future__ import annotations

from collections.abc import Mapping
import os
from typing import Any

# Cosmopedia is preprocessed with --path-field=subset so each record knows its
# subset directory (data/<subset>/*.parquet); Swallow left out the web samples.
COSMOPEDIA_FILTER = "subset not in [web_samples_v1, web_samples_v2]"
_LLAMA3_SWALLOW_8B = (
    ("swallow_corpus", 0.808, None),     # Swallow Corpus (Japanese web)
    ("ja_wikipedia", 0.017, None),
    ("laboro_paracorpus", 0.009, None),  # English-Japanese parallel corpus
    ("en_wikipedia", 0.021, None),
    ("refinedweb", 0.021, None),
    ("cosmopedia", 0.051, COSMOPEDIA_FILTER),
    ("algebraic_stack", 0.037, None),
    ("openwebmath", 0.037, None),
)
# Llama 3.1 Swallow's corpora in the place of the Llama 3 Swallow ones they succeed.
_LLAMA31_RENAMES = {"swallow_corpus": "swallow_corpus_v2", "refinedweb": "dclm_baseline",
                    "algebraic_stack": "the_stack_v2"}


def llama3_swallow_8b(root: str) -> list[dict[str, Any]]:
  """Llama 3 Swallow 8B (v0.1) continual pretraining mixture (model card, 2024-07)."""
  return [dict(name=name, path=os.path.join(root, name), weight=weight, filter=flt)
          for name, weight, flt in _LLAMA3_SWALLOW_8B]


def llama31_swallow_8b(root: str) -> list[dict[str, Any]]:
  """Llama 3.1 Swallow 8B continual pretraining mixture -- WEIGHTS UNCONFIRMED: the model cards
  name the corpora but no percentages, so these carry over Llama 3 Swallow 8B's shares by role
  (`_LLAMA31_RENAMES`)."""
  renamed = [(_LLAMA31_RENAMES.get(n, n), w, f) for n, w, f in _LLAMA3_SWALLOW_8B]
  return [dict(name=n, path=os.path.join(root, n), weight=w, filter=f) for n, w, f in renamed]


def drop_source(sources: list[Mapping[str, Any]], name: str) -> list[dict[str, Any]]:
  """The mixture without source `name`, the other weights rescaled to the same total: the
  removed source's tokens go to the rest in proportion to their weights."""
  kept = [s for s in sources if s["name"] != name]
  if len(kept) == len(sources):
    raise ValueError(f"no source named {name!r} in {[s['name'] for s in sources]}")
  total, rest = sum(s["weight"] for s in sources), sum(s["weight"] for s in kept)
  return [{**s, "weight": s["weight"] * total / rest} for s in kept]
