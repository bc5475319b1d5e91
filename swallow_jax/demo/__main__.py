"""Writes the demo corpus: `python -m swallow_jax.demo --output=DIR [--seed=0] [--scale=1.0]`."""

import json

from absl import app, flags

from swallow_jax.demo.build import build_demo_data

_OUTPUT = flags.DEFINE_string("output", None, "Directory to write raw/, tasks/ and manifests to.",
                              required=True)
_SEED = flags.DEFINE_integer("seed", 0, "World and sampling seed.")
_SCALE = flags.DEFINE_float("scale", 1.0, "Multiplies the number of documents in every file.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _SCALE.value <= 0:
    raise app.UsageError(f"--scale must be positive, got {_SCALE.value}")
  paths = build_demo_data(_OUTPUT.value, seed=_SEED.value, scale=_SCALE.value)
  print(json.dumps({"raw": paths.raw, "tasks": paths.tasks}, indent=1))


if __name__ == "__main__":
  app.run(main)
