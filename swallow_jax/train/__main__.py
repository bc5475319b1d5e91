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
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py, optionally with ':arg' for get_config(arg)).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (multi-host: a filesystem all "
                               "hosts share): checkpoints/, metrics.jsonl, config.json, "
                               "tensorboard/.")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "Multi-host: call jax.distributed.initialize() (auto: when a "
                                 "coordinator or a multi-process launcher is detected).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-host without auto-detection).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_seconds", None,
                                  "Multi-host: if a process stops sending heartbeats for this "
                                  "long, all others exit (non-zero) naming it (default 60).",
                                  lower_bound=1)
_LOG_PREFIX = flags.DEFINE_boolean("log_prefix", False, "Prefix log lines with absl's "
                                   "'I1201 12:00:00.123 pid file:line]' header.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with one-line errors (bad config file, override of a missing key, ...)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [x for x in str(e).splitlines() if x.strip()]
    where = lines[0].split(": Error whilst parsing")[0]
    reason = lines[-1] if len(lines) > 1 else ""  # The exception line of a config traceback.
    sys.exit(f"error: {where}{': ' + reason if reason else ''} (see --help)")
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # From config_flags overrides.
    reason = " ".join(re.sub(r"\\n|[\\'\"]", " ", str(e)).split())
    sys.exit(f"error: bad --config override: {reason}")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  logging.getLogger().setLevel(logging.INFO)  # The progress lines.
  if not _LOG_PREFIX.value:  # absl's handler on the root logger: plain lines.
    absl_logging.get_absl_handler().setFormatter(logging.Formatter("%(message)s"))
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter.
  from swallow_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                      mode=_DISTRIBUTED.value,
                      heartbeat_timeout_seconds=_HEARTBEAT.value or parallel.HEARTBEAT_TIMEOUT_S)
  from swallow_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from swallow_jax.train import lock, loop  # pylint: disable=g-import-not-at-top
  try:
    config = _CONFIG.value
    config.keys()  # A lazy error object when the file failed to load.
  except OSError as e:  # config_flags defers a missing/broken config file's error to here.
    sys.exit(f"error: --config: {' '.join(str(e).split())}")
  try:
    summary = loop.run(config, _WORKDIR.value)
  except (loop.NonFiniteLossError, lock.WorkdirInUseError, checkpoint.CheckpointSaveError,
          ValueError, FileNotFoundError) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  logging.info("done: step %d, loss %s%s", summary["step"], summary["loss"],
               " (stopped by a signal, checkpoint saved)" if summary["preempted"] else "")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
