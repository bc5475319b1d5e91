"""Training: optimizer and schedule, loss, sharded train step, loop, throughput/MFU metrics.

`python -m swallow_jax.train --config=configs/X.py --workdir=DIR`, or `run(config, workdir)`.
"""


def run(config, workdir):
  """See swallow_jax.train.loop.run (imported lazily: the CLI must parse flags first)."""
  from swallow_jax.train import loop  # pylint: disable=g-import-not-at-top
  return loop.run(config, workdir)
