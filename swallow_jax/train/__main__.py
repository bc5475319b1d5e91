r"""Trainer CLI (continual pretraining and SFT).

    python -m swallow_jax.train --config=configs/tiny_cpt.py --workdir=/tmp/tiny
    python -m swallow_jax.train --config=configs/llama3_swallow_8b_cpt.py:v5p-128 \
        --workdir=/mnt/runs/8b --config.train.num_steps=100

Resumes automatically when WORKDIR/checkpoints holds a step. `--config.a.b=value` overrides a
field of the config; a key the config does not have is an error. Exit status: 0 when done or
stopped by SIGTERM / Ctrl-C after saving (a second one exits at once), 1 on a NaN/inf loss, a bad
config, a checkpoint this config cannot continue, a workdir another run holds, or a failed
checkpoint save (one-line reason on stderr).
"""

import logging

from absl import flags
from ml_collections import config_flags

from swallow_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py, optionally with ':arg' for get_config(arg)).",
    lock_config=True)
flags.mark_flag_as_required("config")
cli.define_multihost_flags("Output directory (multi-host: a filesystem all hosts share): "
                           "checkpoints/, metrics.jsonl, config.json, tensorboard/.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_seconds", None,
                                  "Multi-host: if a process stops sending heartbeats for this "
                                  "long, all others exit (non-zero) naming it (default 60).",
                                  lower_bound=1)


def main(argv: list[str]) -> None:
  del argv
  logging.getLogger().setLevel(logging.INFO)  # The progress lines.
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter.
  from swallow_jax import parallel  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  parallel.initialize(f.coordinator_address, f.num_processes, f.process_id, mode=f.distributed,
                      heartbeat_timeout_seconds=_HEARTBEAT.value or parallel.HEARTBEAT_TIMEOUT_S)
  from swallow_jax.train import loop  # pylint: disable=g-import-not-at-top
  summary = loop.run(_CONFIG.value, f.workdir)  # its errors are cli.Failure: one line, exit 1
  logging.info("done: step %d, loss %s%s", summary["step"], summary["loss"],
               " (stopped by a signal, checkpoint saved)" if summary["preempted"] else "")


if __name__ == "__main__":
  cli.run(main, prog="train")
