"""The trainer CLI survives SIGKILL and SIGTERM anywhere with bit-identical losses (tiny_cpt)."""

import os
import re
import signal
import time

import pytest

from helpers import exact, finish, metrics, start_trainer, trainer_env

STEPS, EVERY = 60, 10


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return trainer_env(tmp_path_factory.getbasetemp())


def start(workdir, env, *extra):
  return start_trainer(workdir, env, *extra, steps=STEPS, every=EVERY)


def wait_for_step(proc, workdir, step):
  while proc.poll() is None:
    rows = metrics(workdir)
    if rows and rows[-1]["step"] >= step:
      return rows[-1]["step"]
    time.sleep(0.01)
  raise AssertionError(f"trainer exited ({proc.returncode}) before step {step}: "
                       f"{proc.stdout.read()[-3000:]}")


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  code, out = finish(start(workdir, env))
  assert code == 0, out[-3000:]
  rows = metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert rows[-1]["loss"] < rows[0]["loss"] - 2  # It learns.
  assert "step 60/60  loss" in out
  lines = out.splitlines()
  # No glog prefix: at most the time of day (swallow_jax.cli's log format).
  assert any(re.match(r"(\d\d:\d\d:\d\d )?step 60/60  loss", line) for line in lines)
  messages = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in lines]
  assert "building the data pipeline..." in messages
  assert "compiling the train step (first step)..." in messages
  for name in ("config.json", "tensorboard", "checkpoints"):
    assert os.path.exists(os.path.join(workdir, name)), name
  return exact(rows)


def test_sigkill_anywhere_then_restart_gives_identical_losses(env, reference, tmp_path):
  proc = start(tmp_path, env)
  killed_at = wait_for_step(proc, tmp_path, 2 * EVERY + 3)
  proc.kill()
  proc.wait()
  assert killed_at < STEPS
  code, out = finish(start(tmp_path, env))
  assert code == 0, out[-3000:]
  assert f"resumed from {tmp_path}/checkpoints step" in out
  assert exact(metrics(tmp_path)) == reference


def test_sigterm_saves_exits_zero_and_resumes_identically(env, reference, tmp_path):
  proc = start(tmp_path, env)
  wait_for_step(proc, tmp_path, EVERY + 2)
  proc.send_signal(signal.SIGTERM)
  code, out = finish(proc)
  assert code == 0, out[-3000:]
  assert "stopped by SIGTERM" in out
  last = metrics(tmp_path)[-1]["step"]
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert saved[-1] == last  # The SIGTERM checkpoint is the step it stopped at.
  code, out = finish(start(tmp_path, env))
  assert code == 0, out[-3000:]
  assert f"checkpoints step {last}" in out
  assert exact(metrics(tmp_path)) == reference


def test_second_run_on_a_held_workdir_is_refused_then_ctrl_c_saves(env, tmp_path):
  proc = start_trainer(tmp_path, env, steps=100000, every=EVERY)
  wait_for_step(proc, tmp_path, 2)
  t0 = time.monotonic()
  code, out = finish(start(tmp_path, env), timeout=300)
  assert code != 0 and f"{tmp_path} is in use by PID {proc.pid} on " in out, out[-3000:]
  assert time.monotonic() - t0 < 120
  assert proc.poll() is None  # The running one is untouched.
  proc.send_signal(signal.SIGINT)
  code, out = finish(proc)
  assert code == 0, out[-3000:]
  assert "stopped by SIGINT" in out
  last = metrics(tmp_path)[-1]["step"]
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert saved[-1] == last
  assert not os.path.exists(tmp_path / ".lock")


def test_misspelled_config_key_is_an_error(env, tmp_path):
  code, out = finish(start(tmp_path, env, "--config.optimizer.peak_lrr=1e-3"), timeout=120)
  assert code != 0
  assert "peak_lrr" in out
  assert not os.path.exists(tmp_path / "checkpoints")
