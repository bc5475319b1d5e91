"""Writes the demo corpus: `python -m swallow_jax.demo --output=DIR [--seed=0] [--scale=1.0]`."""

import json

from absl import flags

from swallow_jax import cli
from swallow_jax.demo.build import build_demo_data

_OUTPUT = flags.DEFINE_string("output", None, "Directory to write raw/, tasks/ and manifests to.",
                              required=True)
_SEED = flags.DEFINE_integer("seed", 0, "World and sampling seed.")
_SCALE = flags.DEFINE_float("scale", 1.0, "Multiplies the number of documents in every file.")


def main(argv: list[str]) -> None:
  """Builds the demo corpus under --output and prints where its parts are."""
  del argv  # cli.run refuses positional arguments.
  if _SCALE.value <= 0:
    raise cli.UsageError(f"--scale must be positive, got {_SCALE.value}")
  paths = build_demo_data(_OUTPUT.value, seed=_SEED.value, scale=_SCALE.value)
  print(json.dumps({"raw": paths.raw, "tasks": paths.tasks}, indent=1))


if __name__ == "__main__":
  cli.run(main, prog="demo")
