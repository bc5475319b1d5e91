"""Shared command-line plumbing for the `python -m swallow_jax.*` programs."""

from collections.abc import Sequence


def normalize_argv(argv: Sequence[str]) -> list[str]:
  """Accepts --dry-run, --text-field, ... as well as absl's --dry_run, --text_field.

  `--config=...` and `--config.key=...` arguments are left alone: their paths and keys are the
  user's own spelling.
  """
  out = []
  for arg in argv:
    if arg.startswith("--") and len(arg) > 2 and not arg.startswith("--config"):
      name, eq, value = arg[2:].partition("=")
      arg = "--" + name.replace("-", "_") + eq + value
    out.append(arg)
  return out
