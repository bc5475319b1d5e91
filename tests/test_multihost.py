"""Multi-host on one machine: N JAX processes over loopback (gloo) train exactly like one.

The end-to-end checks run configs/tiny_cpt.py as real processes; the rest are in-process unit
checks of the pieces (data shards per process, iterator state, start-up flags, launcher).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swallow_jax import checkpoint, parallel
from swallow_jax.data import pipeline
from swallow_jax.train import data as data_lib
from helpers import (REPO, exact, finish, metrics, random_docs, start_trainer, trainer_env,
                     two_source_cfg, write_dataset)

LAUNCHER = os.path.join(REPO, "launch", "local_multiprocess.sh")
STEPS, EVERY = 12, 5


# --- Which rows, shards and documents each process reads. ---------------------------------------

class _Rows:
  """Stands in for a process's view of the batch sharding: the row ranges its devices hold."""

  def __init__(self, *ranges):
    self._ranges = ranges

  def addressable_devices_indices_map(self, shape):
    del shape
    return {i: (slice(a, b), slice(None)) for i, (a, b) in enumerate(self._ranges)}


def test_local_batch_shards_partition_the_batch_between_processes():
  # 2 processes x 4 devices, one row per device, 8 shards: disjoint halves that cover all shards.
  p0 = parallel.local_batch_shards(_Rows(*[(i, i + 1) for i in range(4)]), 8, 8)
  p1 = parallel.local_batch_shards(_Rows(*[(i, i + 1) for i in range(4, 8)]), 8, 8)
  assert (p0, p1) == ([0, 1, 2, 3], [4, 5, 6, 7])
  assert parallel.local_batch_shards(_Rows((4, 6), (6, 8)), 8, 2) == [1]
  # A tensor axis across hosts: two processes hold the same rows and read the same shards.
  assert parallel.local_batch_shards(_Rows((0, 4)), 8, 4) == parallel.local_batch_shards(
      _Rows((0, 2), (2, 4)), 8, 4) == [0, 1]
  with pytest.raises(ValueError, match="do not align"):
    parallel.local_batch_shards(_Rows((0, 3)), 8, 4)
  with pytest.raises(ValueError, match="not divisible into 3"):
    parallel.local_batch_shards(_Rows((0, 8)), 8, 3)
  # One process with all 8 fake devices holds every shard.
  mesh = parallel.make_mesh({})
  assert parallel.local_batch_shards(parallel.batch_sharding(mesh), 8, 8) == list(range(8))


def test_process_shards_read_disjoint_documents_covering_each_source(tmp_path):
  # Shard k of S reads documents k::S of every source (pipeline slicing, tested for disjointness
  # in test_data_pipeline); two processes owning shards 0-3 and 4-7 together read each once.
  rng = np.random.default_rng(0)
  sources = [{"name": n, "path": write_dataset(tmp_path / n, random_docs(rng, k, 1, 5))}
             for n, k in (("a", 29), ("b", 13))]
  for index, src in enumerate(sources):
    seen = []
    for shards in ([0, 1, 2, 3], [4, 5, 6, 7]):
      ids = [int(d["tokens"][1]) for k in shards for d in pipeline.source_documents(
          src, index=index, kind="pretrain", seq_len=8, process_index=k, process_count=8,
          seed=0, repeat=False)]
      seen.append(set(ids))
      assert len(ids) == len(seen[-1])
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(13 if index else 29))


def test_num_shards_default_and_checks():
  assert data_lib.num_shards(0, 2) == 2
  assert data_lib.num_shards(0, 4) == 4
  assert data_lib.num_shards(8, 2) == 8
  with pytest.raises(ValueError, match="multiple of the number of processes"):
    data_lib.num_shards(6, 4)
  assert parallel.required_devices({"data": 2, "fsdp": 4, "tensor": 1, "dcn_data": 2}) == 16
  assert parallel.required_devices({"fsdp": -1}) is None


@pytest.mark.parametrize("kind", ["pretrain", "sft"])
def test_sharded_iterator_restores_exactly_after_any_step(tmp_path, kind):
  cfg = two_source_cfg(tmp_path, kind)
  make = lambda: data_lib.make_iterator(cfg, seq_len=16, global_batch=8, shards=4,
                                        local_shards=[1, 3], seed=0)
  it = make()
  states, batches = [], []
  for _ in range(8):  # Every step, so that packer states without a remainder are included.
    states.append(json.loads(json.dumps(it.get_state())))  # What CheckpointSave writes.
    batches.append(next(it))
  assert batches[0]["inputs"].shape == (4, 16)
  for step in (0, 1, 2, 5):
    fresh = make()
    fresh.set_state(states[step])
    for want in batches[step:step + 3]:
      got = next(fresh)
      for k in want:
        np.testing.assert_array_equal(want[k], got[k], err_msg=f"{kind} step {step} {k}")
  other = data_lib.make_iterator(cfg, seq_len=16, global_batch=8, shards=4, local_shards=[0, 1],
                                 seed=0)
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match=r"holds data shards \[1, 3\]"):
    other.set_state(states[3])


def test_checkpoint_of_another_layout_is_refused_not_set_aside(tmp_path):
  cfg = two_source_cfg(tmp_path)
  make = lambda shards: data_lib.make_iterator(cfg, seq_len=16, global_batch=4, shards=2,
                                               local_shards=shards, seed=0)
  state = {"w": jnp.arange(4.0)}
  mngr = checkpoint.make_manager(tmp_path / "checkpoints", {"async_save": False})
  checkpoint.save(mngr, 3, state, make([0, 1]))
  mngr.close()
  mngr = checkpoint.make_manager(tmp_path / "checkpoints", {})
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          state)
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match=r"holds data shards \[0, 1\], "
                     r"this process reads \[1\]"):
    checkpoint.restore_latest(mngr, abstract, make([1]))
  data_dir = tmp_path / "checkpoints" / "3" / "data"
  os.rename(data_dir / "process_0-of-1.json", data_dir / "process_0-of-2.json")
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match="written by 2 processes, this "
                     r"run has 1: .*resume with the same launch \(`python -m swallow_jax.train "
                     r"\.\.\. --num_processes=2`"):
    checkpoint.restore_latest(mngr, abstract, make([0, 1]))
  assert mngr.all_steps() == [3]  # Still there: the run is wrong, not the checkpoint.


# --- Start-up. --------------------------------------------------------------------------------

def test_initialize_passes_flags_and_defers_to_cluster_detection(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS"):
    monkeypatch.delenv(name, raising=False)
  assert parallel.initialize("10.0.0.1:1234", 4, 2, heartbeat_timeout_seconds=17)
  assert calls.pop() == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2,
                             heartbeat_timeout_seconds=17, cluster_detection_method="deactivate")
  monkeypatch.setenv("SLURM_NTASKS", "16")  # srun: JAX reads the rest from SLURM's variables.
  assert parallel.initialize()
  assert calls.pop() == dict(coordinator_address=None, num_processes=None, process_id=None,
                             heartbeat_timeout_seconds=parallel.HEARTBEAT_TIMEOUT_S,
                             cluster_detection_method=None)
  assert not parallel.initialize(mode="off") and not calls


# --- The launcher. ------------------------------------------------------------------------------

def _launch(*args):
  return subprocess.run(["bash", LAUNCHER, *args], capture_output=True, text=True, cwd=REPO)


def test_launcher_dry_run_and_errors():
  out = _launch("--dry-run", "--processes=2", "--config=configs/tiny_cpt.py",
                "--workdir=runs/two procs", "--port=4321",
                "--devices=8", "--", "--config.train.num_steps=5")
  assert out.returncode == 0, out.stderr
  py = os.path.join(REPO, ".venv", "bin", "python")
  py = py if os.path.exists(py) else "python3"
  assert out.stdout.splitlines() == [f"cd {REPO}"] + [
      f"env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4 {py} -m "
      f"swallow_jax.train --config={REPO}/configs/tiny_cpt.py '--workdir={REPO}/runs/two procs' "
      f"--coordinator_address=127.0.0.1:4321 --num_processes=2 --process_id={i} "
      "--config.train.num_steps=5" for i in range(2)]
  tiny = "--config=configs/tiny_cpt.py"
  for args, reason in ((("--processes=0", tiny, "--workdir=w"), "a positive integer"),
                       (("--processes=3", tiny, "--workdir=w", "--devices=8"), "8 devices cannot "
                        "be split evenly over 3 processes"),
                       (("--processes=2", "--config=configs/nope.py", "--workdir=w"),
                        "configs/nope.py' not found"),
                       (("--processes=2", tiny), "--workdir=DIR is required"),
                       (("2", "configs/tiny_cpt.py", "w"), "unexpected argument '2'")):
    out = _launch("--dry-run", *args)
    assert out.returncode == 2 and reason in out.stderr, (args, out.stderr)


# --- Real processes. ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
  # Restarts and the 2-process run reuse compiled programs instead of compiling again.
  env = {**trainer_env(tmp_path_factory.getbasetemp()), "JAX_PLATFORMS": "cpu"}
  subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'configs'); "
                  "import tiny_cpt; tiny_cpt.tiny_corpus()"], cwd=REPO, env=env, check=True)
  return env


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def trainer(workdir, env, devices, *flags):
  """One trainer process with `devices` fake CPU devices."""
  return start_trainer(workdir, env, *flags, steps=STEPS, every=EVERY, devices=devices)


def launch_two(workdir, env):
  """launch/local_multiprocess.sh --processes=2 (x 4 devices): (exit status, process 0's and 1's output)."""
  out = subprocess.run(["bash", LAUNCHER, "--processes=2", "--config=configs/tiny_cpt.py",
                        f"--workdir={workdir}",
                        f"--python={sys.executable}", "--",
                        f"--config.train.num_steps={STEPS}",
                        f"--config.checkpoint.every_steps={EVERY}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  logs = [open(workdir / "logs" / f"process_{i}.log").read() for i in range(2)]
  return out.returncode, logs


@pytest.fixture(scope="module")
def one_process_gloo(env, tmp_path_factory):
  """1 process x 8 devices through jax.distributed, i.e. with the same gloo collectives."""
  workdir = tmp_path_factory.mktemp("one_gloo")
  code, out = finish(trainer(workdir, env, 8, f"--coordinator_address=127.0.0.1:{free_port()}",
                             "--num_processes=1", "--process_id=0"))
  assert code == 0, out[-3000:]
  rows = metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  return exact(rows)


def test_two_processes_train_exactly_like_one(env, one_process_gloo, tmp_path):
  code, (log0, log1) = launch_two(tmp_path, env)
  assert code == 0, log0[-3000:] + log1[-3000:]
  # Bit for bit: the same batches (data shards follow batch rows, not processes) and the same
  # collectives (gloo) give the same losses, norms and token counts at every step.
  assert exact(metrics(tmp_path)) == one_process_gloo
  assert "process 1 of 2, 4 local / 8 global devices" in log1
  # Only process 0 writes metrics, TensorBoard and config.json; all take part in checkpoints.
  assert f"step {STEPS}/{STEPS}" in log0 and "step 1/" not in log1
  assert len(os.listdir(tmp_path / "tensorboard")) == 1
  assert json.load(open(tmp_path / "config.json"))["data"]["num_shards"] == 8
  data_files = sorted(os.listdir(tmp_path / "checkpoints" / str(STEPS) / "data"))
  assert [f for f in data_files if f.endswith(".json")] == ["process_0-of-2.json",
                                                            "process_1-of-2.json"]

  # The usual single-process run sums across devices in XLA's in-process order instead of
  # gloo's ring order: the same numbers up to float rounding.
  one = tmp_path / "one_in_process"
  code, out = finish(trainer(one, env, 8))
  assert code == 0, out[-3000:]
  for a, b in zip(metrics(one), one_process_gloo, strict=True):
    assert a["source_tokens"] == b["source_tokens"] and a["lr"] == b["lr"]
    for key in ("loss", "grad_norm", "param_norm"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"step {a['step']} {key}")


@pytest.mark.slow
def test_sigkill_one_process_survivor_stops_then_restart_is_exact(env, one_process_gloo,
                                                                  tmp_path):
  port = free_port()
  procs = [trainer(tmp_path, env, 4, f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}", "--heartbeat_timeout_seconds=20")
           for i in range(2)]
  while not metrics(tmp_path) or metrics(tmp_path)[-1]["step"] < EVERY + 2:
    assert procs[0].poll() is None, procs[0].stdout.read()[-3000:]
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)
  killed = time.monotonic()
  code, out = finish(procs[0], timeout=120)
  waited = time.monotonic() - killed
  procs[1].wait()
  assert code != 0 and waited < 60, (code, waited)
  # JAX's coordination service names the process that stopped sending heartbeats.
  assert re.search(r"stopped sending heartbeats\):\s*1\s", out), out[-3000:]
  assert metrics(tmp_path)[-1]["step"] < STEPS

  code, (log0, log1) = launch_two(tmp_path, env)
  assert code == 0, log0[-3000:] + log1[-3000:]
  assert re.search(r"resumed from .*/checkpoints step (5|10)\b", log0)
  assert exact(metrics(tmp_path)) == one_process_gloo
