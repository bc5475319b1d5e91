"""Resume safety: incompatible checkpoints stop before writing, config changes are recorded, the
workdir is locked, a failed async save stops the run, optional W&B / TensorBoard writers."""

import json
import os
import socket
import subprocess
import sys
import time
import types

import jax
import orbax.checkpoint as ocp
import pytest

from swallow_jax import checkpoint
from swallow_jax.train import lock as lock_lib
from swallow_jax.train import loop
from swallow_jax.train import metrics as metrics_lib


@pytest.fixture(scope="module")
def two_steps(tiny, tmp_path_factory):
  """A workdir trained 2 steps (checkpoint at 2); tests copy it."""
  workdir = str(tmp_path_factory.mktemp("two_steps") / "run")
  loop.run(tiny(train__num_steps=2, checkpoint__every_steps=2, train__tensorboard=False), workdir)
  return workdir


def snapshot(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


def copy(src, dst):
  subprocess.run(["cp", "-a", src, str(dst)], check=True)
  return str(dst)


def test_model_change_on_resume_stops_before_writing(tiny, two_steps, tmp_path):
  workdir = copy(two_steps, tmp_path / "run")
  before = snapshot(workdir)
  with pytest.raises(checkpoint.IncompatibleCheckpointError,
                     match=r"^model.num_layers: checkpoint 2, config 4 .*new workdir, or set "
                           r"config.init_from="):
    loop.run(tiny(train__num_steps=3, model__num_layers=4), workdir)
  assert snapshot(workdir) == before  # Nothing set aside, truncated or rewritten.


def test_state_structure_mismatch_is_refused_not_set_aside(tiny, two_steps, tmp_path):
  # clip_norm 0 drops the clipping stage: another optimizer-state structure, same model.
  workdir = copy(two_steps, tmp_path / "run")
  before = snapshot(workdir)
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match="another train-state structure"):
    loop.run(tiny(train__num_steps=3, optimizer__clip_norm=0.0), workdir)
  assert snapshot(workdir) == before
  assert not os.path.exists(os.path.join(workdir, "checkpoints_unreadable"))


def test_allowed_changes_are_logged_and_kept_in_history(tiny, two_steps, tmp_path, caplog):
  workdir = copy(two_steps, tmp_path / "run")
  caplog.set_level("INFO")
  loop.run(tiny(train__num_steps=3, optimizer__peak_lr=1e-3, train__tensorboard=False), workdir)
  with open(os.path.join(workdir, "config_history.jsonl")) as f:
    history = [json.loads(line) for line in f]
  assert {"step": 2, "key": "optimizer.peak_lr", "old": 3e-3, "new": 1e-3} in history
  assert {"step": 2, "key": "train.num_steps", "old": 2, "new": 3} in history
  assert "config change since the last start: optimizer.peak_lr: 0.003 -> 0.001" in caplog.text
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["optimizer"]["peak_lr"] == 1e-3
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3]
  assert not os.path.exists(os.path.join(workdir, "tensorboard"))  # train.tensorboard=False.


def test_failed_async_save_stops_the_run(tiny, tmp_path, monkeypatch):
  def failing(self):
    if self.latest_step() is not None:
      raise OSError("disk full")
  monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", failing)
  with pytest.raises(checkpoint.CheckpointSaveError,
                     match=r"failed \(OSError: disk full\); last good checkpoint: step 1"):
    loop.run(tiny(train__num_steps=5, checkpoint__every_steps=1), str(tmp_path / "run"))
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [1]


def test_workdir_lock(tmp_path, caplog):
  with lock_lib.workdir_lock(str(tmp_path)):
    with pytest.raises(lock_lib.WorkdirInUseError,
                       match=rf"{tmp_path} is in use by PID {os.getpid()} on "
                             rf"{socket.gethostname()} since "):
      with lock_lib.workdir_lock(str(tmp_path)):
        pass
  assert not os.path.exists(tmp_path / ".lock")  # Released.
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  held = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": "then",
          "heartbeat": time.time()}
  (tmp_path / ".lock").write_text(json.dumps(held))
  with lock_lib.workdir_lock(str(tmp_path)):  # Same host, PID gone: taken over.
    pass
  assert "taking over the stale lock" in caplog.text and "no longer running" in caplog.text
  (tmp_path / ".lock").write_text(json.dumps({**held, "host": "elsewhere"}))
  with pytest.raises(lock_lib.WorkdirInUseError, match="on elsewhere since then"):
    with lock_lib.workdir_lock(str(tmp_path)):
      pass
  (tmp_path / ".lock").write_text(json.dumps({**held, "host": "elsewhere", "heartbeat": 0}))
  with lock_lib.workdir_lock(str(tmp_path)):  # Other host, no heartbeat for long: taken over.
    pass
  assert "no heartbeat" in caplog.text


def test_second_signal_exits_at_once():
  code = ("import os, signal, time\n"
          "from swallow_jax.train import loop\n"
          "p = loop._Preemption()\n"
          "os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2)\n"
          "assert p.flag and p.signal_name == 'SIGINT'\n"
          "os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
          "print('not reached')\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
  assert out.returncode == -2, out.stderr[-2000:]
  assert "not reached" not in out.stdout


def test_wandb_writer_is_optional(tmp_path, monkeypatch):
  calls = []
  run = types.SimpleNamespace(log=lambda values, step: calls.append(("log", values, step)),
                              finish=lambda: calls.append(("finish",)))
  fake = types.ModuleType("wandb")
  fake.init = lambda **kw: calls.append(("init", kw)) or run
  monkeypatch.setitem(sys.modules, "wandb", fake)
  writer = metrics_lib.MetricsWriter(str(tmp_path), 0, tensorboard=False, wandb_project="p",
                                     run_config={"a": 1})
  writer.write(1, {"loss": 2.0, "mfu": None, "source_tokens": {"x": 3}})
  writer.close()
  assert calls[0][0] == "init" and calls[0][1]["project"] == "p"
  assert calls[0][1]["resume"] == "allow" and calls[0][1]["config"] == {"a": 1}
  assert calls[1] == ("log", {"loss": 2.0, "source_tokens/x": 3}, 1)
  assert calls[2] == ("finish",)
  assert not os.path.exists(tmp_path / "tensorboard")


def test_init_from_another_run_takes_its_architecture_not_the_preset(tiny, two_steps, tmp_path):
  from swallow_jax.model import io as model_io  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  # tiny_gqa has 2 KV heads; the run in `two_steps` (tiny) has 4: the workdir's config wins.
  summary = loop.run(tiny(train__num_steps=1, init_from=two_steps, model__preset="tiny_gqa",
                          train__tensorboard=False), str(tmp_path / "b"))
  assert summary["model_config"].num_kv_heads == 4
  _, params = model_io.load(two_steps)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(summary["params"]), params)
  # Weights only, onto another mesh's shardings.
  from swallow_jax import parallel  # pylint: disable=g-import-not-at-top
  from swallow_jax.model import param_logical_axes  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(dict(fsdp=8))
  shardings = parallel.param_shardings(params, param_logical_axes(summary["model_config"]), mesh)
  _, sharded = model_io.load(two_steps, shardings=shardings)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(sharded), params)
  assert any("fsdp" in x.sharding.spec for x in jax.tree.leaves(sharded))
