"""`run(config, workdir)` in process: NaN stop, resume onto another mesh, init_from, eval hook."""

import glob
import hashlib
import json
import os
import struct

import jax
import numpy as np
import pytest

from swallow_jax import config_utils
from swallow_jax.model import io as model_io
from swallow_jax.train import loop


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
  # lr(1) = 5e29: the second update blows the parameters up.
  config = tiny(optimizer__peak_lr=1e30, optimizer__warmup_steps=2, train__num_steps=4,
                checkpoint__every_steps=1)
  monkeypatch.chdir(tmp_path)  # A relative workdir, as typed on a command line (Orbax needs abspath).
  with pytest.raises(loop.NonFiniteLossError, match=r"non-finite values at step 2 .*last good "
                     r"checkpoint: step 1 in"):
    loop.run(config, "run")
  workdir = tmp_path / "run"
  assert [m["step"] for m in read_metrics(workdir)] == [1]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1"]
  model_cfg, params = model_io.load("run")
  assert model_cfg == config_utils.model_config(config)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_resume_on_another_mesh_then_init_from_and_eval_hook(tiny, tmp_path, monkeypatch):
  from swallow_jax import evaluate  # pylint: disable=g-import-not-at-top
  calls = []
  def fake_run_tasks(model_cfg, params, tok, tasks):
    calls.append(tasks)
    norm = float(sum(np.abs(x).sum() for x in jax.tree.leaves(params)))
    return {"fake": {"score": norm, "metrics": {"acc": norm / 2}, "samples": [{"p": "x"}]}}
  monkeypatch.setattr(evaluate, "run_tasks", fake_run_tasks)

  a = str(tmp_path / "a")
  loop.run(tiny(train__num_steps=4, checkpoint__every_steps=2, eval__every_steps=2,
                eval__tasks=["t.jsonl"]), a)
  first = read_metrics(a)
  assert [m["step"] for m in first] == [1, 2, 3, 4]
  assert calls == [["t.jsonl"], ["t.jsonl"]]
  with open(os.path.join(a, "eval.jsonl")) as f:
    evals = [json.loads(line) for line in f]
  assert [e["step"] for e in evals] == [2, 4]
  # The scores also reach the training run's TensorBoard events, beside the loss.
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(os.path.join(a, "tensorboard"))
  events.Reload()
  assert {"loss", "eval/fake/score", "eval/fake/acc"} <= set(events.Tags()["scalars"])
  got = [(e.step, e.value) for e in events.Scalars("eval/fake/score")]
  assert got == [(e["step"], pytest.approx(e["fake"]["score"])) for e in evals]
  for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "source_tokens"):
    assert key in first[-1]
  assert first[-1]["mfu"] is None  # CPU: no peak FLOP/s.
  assert first[-1]["source_tokens"] == {"towns": 4 * 8 * 64}

  # Same workdir, other mesh and more steps: resumes from step 4 onto (data 2, fsdp 2, tensor 2).
  summary = loop.run(tiny(train__num_steps=6, checkpoint__every_steps=2,
                          mesh__data=2, mesh__fsdp=2, mesh__tensor=2), a)
  assert summary["step"] == 6 and not summary["preempted"]
  second = read_metrics(a)
  assert second[:4] == first and [m["step"] for m in second] == [1, 2, 3, 4, 5, 6]
  assert second[4]["source_tokens"]["towns"] == 5 * 8 * 64  # Iterator state restored too.
  assert second[5]["loss"] < first[0]["loss"]

  # init_from an HF export of step 6: same weights, fresh optimizer (lr 0 at step 1 keeps them).
  # (init_from another run's workdir: tests/test_workdir_safety.py.)
  model_cfg, params = model_io.load(a)
  model_io.save_hf(str(tmp_path / "hf"), model_cfg, params, dtype=np.float32, progress=False)
  b = str(tmp_path / "b")
  summary = loop.run(tiny(train__num_steps=1, init_from=str(tmp_path / "hf")), b)
  [m] = read_metrics(b)
  assert m["lr"] == 0.0
  np.testing.assert_allclose(m["param_norm"], second[5]["param_norm"], rtol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(summary["params"]), params)


def test_unknown_keys_are_errors(tiny):
  config = tiny()
  config.optimizer.peak_lrr = 1.0  # Not locked: built in Python.
  with pytest.raises(ValueError, match=r"config.optimizer.\['peak_lrr'\]"):
    config_utils.validate(config)
  config = tiny()
  config.trian = {}
  with pytest.raises(ValueError, match=r"unknown config key\(s\) \['trian'\]"):
    config_utils.validate(config)
  with pytest.raises(ValueError, match="unknown LlamaConfig field"):
    config_utils.model_config(tiny(model__hiden_size=8))


def read_wandb_offline_run(run_file):
  """The records of a W&B transaction log (run-ID.wandb: a LevelDB-style log of protobuf
  Records in 32 KiB blocks, after a 7-byte ':W&B' header); wandb itself has no offline reader."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  with open(run_file, "rb") as f:
    data = f.read()
  assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
  block, pos, records, chunk = 32768, 7, [], b""
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # too little room for a record header: the block is padded
      pos += block - pos % block
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])  # crc32, length, full/first/...
    if (length, kind) == (0, 0):
      break
    chunk += data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # a FULL record, or the LAST piece of one
      records.append(wandb_internal_pb2.Record.FromString(chunk))
      chunk = b""
  return records


@pytest.mark.slow  # ~35 s on 2 busy cores: the tiny run's compile, and wandb's service start
def test_wandb_offline_run_holds_the_logged_metrics(tiny, tmp_path, monkeypatch):
  """`--config.train.wandb_project=NAME` under WANDB_MODE=offline: the real wandb writes a run
  with every logged step's scalars, the ones metrics.jsonl has."""
  pytest.importorskip("wandb")
  for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                   ("WANDB_DATA_DIR", "data")):
    monkeypatch.setenv(var, str(tmp_path / "wandb_home" / sub))  # nothing under ~ is touched
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  workdir = str(tmp_path / "run")
  loop.run(tiny(train__num_steps=3, train__wandb_project="swallow-test",
                train__tensorboard=False), workdir)
  runs = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))
  assert len(runs) == 1, runs
  records = read_wandb_offline_run(runs[0])
  run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
  assert run.project == "swallow-test"
  assert run.run_id == hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:16]
  config = {i.key: json.loads(i.value_json) for i in run.config.update}
  assert config["train"]["wandb_project"] == "swallow-test" and config["train"]["num_steps"] == 3
  history = {r.history.step.num: {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                  for i in r.history.item}
             for r in records if r.WhichOneof("record_type") == "history"}
  logged = read_metrics(workdir)
  assert sorted(history) == [m["step"] for m in logged] == [1, 2, 3]
  for m in logged:
    for key in ("loss", "lr", "grad_norm", "tokens_per_sec"):
      assert history[m["step"]][key] == m[key], (m["step"], key)
    assert history[m["step"]]["source_tokens/towns"] == m["source_tokens"]["towns"]
    assert "mfu" not in history[m["step"]]  # None on CPU: not a scalar
  assert any(r.WhichOneof("record_type") == "exit" for r in records)  # finished, not cut off
