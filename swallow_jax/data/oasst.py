r"""OpenAssistant (OASST) export -> top-1 conversation threads as ``messages`` JSONL.

    python -m swallow_jax.data.oasst --input=2023-04-12_oasst_ready.trees.jsonl.gz \
        --output=oasst_top1_en.jsonl --lang=en [--json]

Reads tree or flat message exports (JSONL or Parquet) and writes the top-1 threads of the
``ready_for_export`` trees (selection rules: docs/data.md) as ``{"messages", "message_tree_id",
"lang"}`` lines, ready for ``python -m swallow_jax.preprocess --format=chat``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from absl import flags

from swallow_jax import cli, fileio
from swallow_jax.data import sources

ROLES = {"prompter": "user", "assistant": "assistant"}
DROP_REASONS = ("deleted", "low_rank", "unranked", "no_assistant", "duplicate")


def read_trees(paths: Sequence[str]) -> Iterator[dict[str, Any]]:
  """Message trees ({'message_tree_id', 'tree_state', 'prompt'}) from tree or flat exports."""
  flat: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
  for path in paths:
    for line, payload in sources.iter_records(path):
      try:
        obj = sources.parse_json_object(payload)
      except sources.InvalidRecord as e:
        raise ValueError(f"{path}:{line}: {e}") from None
      if "prompt" in obj:
        yield obj
      elif "message_id" in obj and "message_tree_id" in obj:
        flat[obj["message_tree_id"]].append(obj)
      else:
        raise ValueError(f"{path}:{line}: neither a message tree nor a message")
  for tree_id, messages in flat.items():  # a flat export's messages, assembled into trees
    nodes = {m["message_id"]: {**m, "replies": []} for m in messages}
    roots = []
    for node in nodes.values():
      parent = nodes.get(node.get("parent_id"))
      (parent["replies"] if parent else roots).append(node)
    if len(roots) != 1:
      raise ValueError(f"tree {tree_id}: {len(roots)} root messages")
    yield {"message_tree_id": tree_id, "tree_state": roots[0].get("tree_state"), "prompt": roots[0]}


def _paths(node: Mapping[str, Any], prefix: tuple = ()) -> Iterator[tuple]:
  """Root-to-leaf paths of (message, number of replies its parent has)."""
  replies = node.get("replies") or []
  if not replies:
    yield prefix
  for reply in replies:
    yield from _paths(reply, prefix + ((reply, len(replies)),))


def thread_problem(path: Sequence[tuple[Mapping[str, Any], int]]) -> str | None:
  """Why a root-to-leaf thread is not a top-1 thread (None if it is)."""
  for message, siblings in path:
    if message.get("deleted"):
      return "deleted"
    if message.get("role") == "assistant":
      rank = message.get("rank")
      if rank is not None and rank >= 1:
        return "low_rank"
      if rank is None and siblings > 1:
        return "unranked"
  return None


def top1_threads(tree: Mapping[str, Any], counts: dict[str, int]) -> Iterator[list[dict]]:
  """The top-1 threads of one tree as lists of {'role', 'content'}; counts drops by reason."""
  seen = set()
  root = tree["prompt"]
  for path in _paths(root, ((root, 1),)):
    messages = [m for m, _ in path]
    while messages and messages[-1].get("role") != "assistant":
      messages.pop()
    key = tuple(m["message_id"] for m in messages)
    if problem := thread_problem(path) or ("no_assistant" if not messages else
                                           "duplicate" if key in seen else None):
      counts[problem] += 1
      continue
    seen.add(key)
    yield [{"role": ROLES[m["role"]], "content": m["text"]} for m in messages]


def extract(trees: Iterable[Mapping[str, Any]], langs: Sequence[str] = ()
            ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """(output rows, counts) for all trees."""
  counts = {"trees": 0, "trees_not_ready": 0, "trees_other_lang": 0, "threads": 0,
            "dropped": dict.fromkeys(DROP_REASONS, 0)}
  rows = []
  for tree in trees:
    counts["trees"] += 1
    if tree.get("tree_state") != "ready_for_export":
      counts["trees_not_ready"] += 1
      continue
    lang = tree["prompt"].get("lang")
    if langs and lang not in langs:
      counts["trees_other_lang"] += 1
      continue
    for messages in top1_threads(tree, counts["dropped"]):
      rows.append({"messages": messages, "message_tree_id": tree["message_tree_id"], "lang": lang})
  counts["threads"] = len(rows)
  return rows, counts


def _define_flags() -> None:
  """CLI flags; defined only when run as a program so importing never clashes."""
  flags.DEFINE_string("input", None, "Comma-separated globs of OASST exports "
                      "(.jsonl[.gz] trees or messages, .parquet messages).")
  flags.DEFINE_string("output", None, "Output .jsonl or .jsonl.gz file.")
  flags.DEFINE_list("lang", [], "Keep trees whose first prompt has one of these "
                    "languages (e.g. en,ja); empty keeps all.")
  flags.DEFINE_bool("json", False, "Print the counts as one JSON object.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --output.")


def main(argv: Sequence[str]) -> None:
  """Extracts the OASST threads of --input into --output and prints the counts."""
  del argv  # cli.run refuses positional arguments.
  f = flags.FLAGS
  if not f.input or not f.output:
    raise cli.UsageError("--input and --output are required")
  cli.check_output(f.output, f.overwrite)
  rows, counts = extract(read_trees(sources.expand_inputs(f.input)), f.lang)
  if not rows:
    raise cli.Failure(f"no threads left from {counts['trees']} trees ({counts})")
  fileio.write_jsonl(f.output, rows)
  if f.json:
    cli.print_json(counts)
  else:
    print(f"wrote {counts['threads']} threads from {counts['trees']} trees to "
          f"{f.output} (dropped: {counts['dropped']})")


if __name__ == "__main__":
  cli.run(main, prog="oasst", define_flags=_define_flags)
