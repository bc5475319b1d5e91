"""One run per workdir: `with workdir_lock(workdir): ...` (the trainer; the recipe runner too).

WORKDIR/.lock holds {pid, host, since, heartbeat}; a thread refreshes `heartbeat` while held.
A lock is stale, and taken over with a one-line warning, when its process is gone (same host)
or its heartbeat is older than `stale_after_s` (another host: its PID cannot be checked).
Multi-host: only process 0 locks (all processes of one run share the workdir).
"""

from collections.abc import Iterator
import contextlib
import logging
import os
import socket
import threading
import time

from swallow_jax import cli
from swallow_jax import fileio

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class WorkdirInUseError(cli.Failure):
  """Another live run holds the workdir."""


def _stale(held: dict, stale_after_s: float) -> bool:
  if held.get("host") == socket.gethostname():
    return not fileio.pid_alive(int(held.get("pid", 0)))
  return time.time() - float(held.get("heartbeat", 0)) > stale_after_s


def _acquire(path: str, stale_after_s: float) -> None:
  mine = {"pid": os.getpid(), "host": socket.gethostname(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "heartbeat": time.time()}
  claim = f"{path}.claim-{os.getpid()}"
  fileio.write_json(claim, mine)
  try:
    for _ in range(3):
      try:
        os.link(claim, path)  # Atomic, and fails if the lock exists: no two holders.
        return
      except FileExistsError:
        pass
      try:
        held = fileio.read_json(path)
      except FileNotFoundError:
        continue  # Released meanwhile.
      except ValueError:
        held = {}
      if held and not _stale(held, stale_after_s):
        raise WorkdirInUseError(
            f"{os.path.dirname(path)} is in use by PID {held['pid']} on {held['host']} since "
            f"{held['since']} (stop that run, or use another --workdir)")
      logging.warning("taking over the stale lock of %s (PID %s on %s since %s: %s)",
                      os.path.dirname(path), held.get("pid"), held.get("host"), held.get("since"),
                      "no longer running" if held.get("host") == socket.gethostname()
                      else "no heartbeat")
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    raise WorkdirInUseError(f"{os.path.dirname(path)}: could not take the lock {path}")
  finally:
    os.remove(claim)


@contextlib.contextmanager
def workdir_lock(workdir: str, *, enabled: bool = True, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S) -> Iterator[None]:
  """Holds WORKDIR/.lock for the block; raises WorkdirInUseError when a live run holds it.

  `enabled=False` (multi-host processes other than 0) does nothing.
  """
  if not enabled:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
  _acquire(path, stale_after_s)
  stop = threading.Event()

  def beat():
    while not stop.wait(heartbeat_s):
      with contextlib.suppress(OSError, ValueError):
        if (held := fileio.read_json(path)).get("pid") == os.getpid():
          fileio.write_json(path, {**held, "heartbeat": time.time()})

  thread = threading.Thread(target=beat, name="workdir-lock-heartbeat", daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
    with contextlib.suppress(OSError, ValueError):
      if fileio.read_json(path).get("pid") == os.getpid():
        os.remove(path)
