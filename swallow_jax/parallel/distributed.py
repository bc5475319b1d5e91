"""Multi-host start-up: `jax.distributed.initialize()` when this is one of several processes.

Must run before anything touches a JAX backend. Launchers set the environment that JAX
auto-detects (Cloud TPU VMs, SLURM, Open MPI, Kubernetes) or JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID, or pass the same as flags (docs/multihost.md).
"""

import contextlib
import glob
import importlib.util
import logging
import os

import jax
import numpy as np

# Seconds without heartbeats after which a process counts as dead and the others stop
# (JAX's default is 100). Heartbeats come from a C++ thread, so long compiles and saves are safe.
HEARTBEAT_TIMEOUT_S = 60

# Environment variables whose presence means the launcher started several processes.
_MULTI_PROCESS_ENV = {
    "SLURM_NTASKS": lambda v: int(v) > 1,
    "OMPI_COMM_WORLD_SIZE": lambda v: int(v) > 1,
    "TPU_WORKER_HOSTNAMES": lambda v: "," in v,
    "MEGASCALE_COORDINATOR_ADDRESS": bool,
}


def _launcher_detected() -> bool:
  for name, is_multi in _MULTI_PROCESS_ENV.items():
    with contextlib.suppress(ValueError):  # A malformed value counts as absent.
      if os.environ.get(name) and is_multi(os.environ[name]):
        return True
  return False


def _on_cloud_tpu_vm() -> bool:
  """libtpu installed and TPU chips attached: JAX finds the slice's hosts in the GCE metadata."""
  return (importlib.util.find_spec("libtpu") is not None
          and bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, mode: str = "auto",
               heartbeat_timeout_seconds: int = HEARTBEAT_TIMEOUT_S) -> bool:
  """Initializes multi-process JAX (again: a no-op); returns True if this is a distributed run.

  mode: 'auto' initializes when a coordinator is given (argument or JAX_COORDINATOR_ADDRESS), a
  multi-process launcher is detected (_MULTI_PROCESS_ENV) or this is a Cloud TPU VM; 'on' always
  (JAX auto-detects the cluster); 'off' never.
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"distributed mode must be 'auto', 'on' or 'off', got {mode!r}")
  if jax.distributed.is_initialized():
    return True
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if mode == "off" or (mode == "auto" and not coordinator_address and not _launcher_detected()
                       and not _on_cloud_tpu_vm()):
    return False
  explicit = None not in (coordinator_address, num_processes, process_id)
  if not jax.config.jax_cpu_collectives_implementation:
    # Cross-process collectives of the CPU backend (loopback tests, CPU clusters); the flag
    # touches only the CPU client, so TPU/GPU runs are unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout_seconds,
      # Explicit flags win over cluster detection, which under SLURM would also restrict each
      # process to one GPU (SLURM_LOCALID); launch/slurm.sbatch runs one process per node.
      cluster_detection_method="deactivate" if explicit else None)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def any_process(*flags: bool) -> tuple[bool, ...]:
  """Each flag True on every process if it is True on one (decisions all processes must share)."""
  if jax.process_count() == 1:
    return flags
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  gathered = multihost_utils.process_allgather(np.array(flags, dtype=bool))
  return tuple(bool(x) for x in np.any(gathered.reshape(-1, len(flags)), axis=0))
