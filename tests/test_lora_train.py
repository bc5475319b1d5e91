"""LoRA training: adapter-only optimizer, frozen base, SFT run, small checkpoints, resume after
SIGKILL, merged loading through model/io, convert --to_hf / --to_peft (vs peft)."""

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import exact, finish, metrics, random_docs, start_trainer, trainer_env, write_dataset
from swallow_jax import checkpoint, convert, parallel
from swallow_jax.model import forward, init_params, param_logical_axes, presets
from swallow_jax.model import io as model_io
from swallow_jax.model.lora import LoraConfig, merge_lora
from swallow_jax.train import loop
from swallow_jax.train import optimizer as optimizer_lib
from swallow_jax.train import step as step_lib

# tiny_cpt's model with room for helpers.random_docs' token ids (< 1000).
MODEL = presets.get("tiny", vocab_size=1024)
LORA = LoraConfig(rank=4, alpha=8.0)
OPT = dict(peak_lr=1e-2, min_lr_ratio=0.1, warmup_steps=2, decay_steps=40, clip_norm=1.0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """An HF dir with a random tiny Llama (fp32): the frozen base of every run here. Its head is
  scaled up so that a rank-4 adapter can move the logits far in a few steps."""
  path = str(tmp_path_factory.mktemp("base") / "hf")
  params = init_params(MODEL, jax.random.key(3))
  params["lm_head"]["kernel"] = 10 * params["lm_head"]["kernel"]
  model_io.save_hf(path, MODEL, params, dtype=np.float32, progress=False)
  return path


def _batch(rng, b=8, t=32):
  """Rows counting up by a random stride mod 64: each next token follows from the last."""
  stride = rng.integers(1, 8, (b, 1))
  inputs = (3 + (rng.integers(0, 64, (b, 1)) + stride * np.arange(t)) % 64).astype(np.int32)
  return {"inputs": inputs, "targets": np.roll(inputs, -1, axis=1),
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
          "segment_ids": np.ones((b, t), np.int32),
          "loss_weights": (rng.random((b, t)) < 0.7).astype(np.float32)}


def _lora_steps(lora_cfg, accum, batches, mesh_cfg=None):
  """Runs jitted LoRA steps from a random base; (initial state, final state, metrics)."""
  mesh = parallel.make_mesh(mesh_cfg or dict(data=2, fsdp=2, tensor=2))
  tx, lr = optimizer_lib.make_optimizer(OPT)
  with parallel.mesh_context(mesh):
    abstract = jax.eval_shape(lambda: step_lib.init_state(MODEL, tx, 0, lora_cfg))
    param_sh = parallel.param_shardings(abstract["params"], param_logical_axes(MODEL), mesh)
    lora_sh = step_lib.lora_shardings(MODEL, lora_cfg, abstract["lora"], mesh)
    shardings = step_lib.state_shardings(abstract, tx, param_sh, mesh, lora_sh)
    state = step_lib.jit_init(MODEL, tx, 0, shardings, lora_cfg)()
    first = jax.device_get(state)
    fn = step_lib.jit_train_step(step_lib.make_train_step(
        MODEL, tx, lr, grad_accum_steps=accum, neftune_alpha=5.0, param_shardings=param_sh,
        lora_cfg=lora_cfg, lora_shardings=lora_sh), shardings, mesh)
    out = []
    for b in batches:
      state, m = fn(state, b)
      out.append(jax.device_get(m))
    assert state["lora"]["layers"]["mlp"]["up_proj"]["lora_b"].sharding.spec == \
        lora_sh["layers"]["mlp"]["up_proj"]["lora_b"].spec
    return first, jax.device_get(state), out


def test_lora_step_trains_only_the_adapter_and_extras():
  cfg = LoraConfig(rank=4, alpha=8.0, trainable=("final_norm",))
  batches = [_batch(np.random.default_rng(0))] * 12
  first, last, m = _lora_steps(cfg, 2, batches)
  # The optimizer's moments cover the adapter and the listed extra tensor only.
  train = step_lib.trainable(first)
  mu = first["opt_state"][1][0].mu
  assert jax.tree.structure(mu) == jax.tree.structure(train)
  n_opt = sum(x.size for x in jax.tree.leaves(first["opt_state"]))
  n_train = sum(x.size for x in jax.tree.leaves(train))
  assert n_opt <= 2 * n_train + 8  # mu + nu (+ counters)
  assert n_train < 0.2 * sum(x.size for x in jax.tree.leaves(first["params"]))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(train))
  # Step 0 is the base model (B = 0); the base never changes; the adapter and extras do.
  assert not np.any(first["lora"]["layers"]["attn"]["q_proj"]["lora_b"])
  jax.tree.map(np.testing.assert_array_equal, first["params"], last["params"])
  assert np.any(last["lora"]["layers"]["attn"]["q_proj"]["lora_b"])
  assert not np.array_equal(last["extra"]["final_norm"]["scale"],
                            first["params"]["final_norm"]["scale"])
  assert m[-1]["loss"] < m[0]["loss"] - 0.1  # Random base: its small head limits the logits.
  np.testing.assert_allclose(m[-1]["param_norm"], float(np.sqrt(sum(
      np.sum(np.square(x)) for x in jax.tree.leaves(step_lib.trainable(last))))), rtol=1e-5)


def test_bf16_base_fp32_adapter_and_grad_accumulation():
  """A bf16 frozen base trains an fp32 adapter; 2 microbatches give the 1-batch updates."""
  tx, lr = optimizer_lib.make_optimizer(OPT)
  base = jax.tree.map(lambda x: x.astype(jnp.bfloat16), init_params(MODEL, jax.random.key(0)))
  batch = _batch(np.random.default_rng(1))
  outs = []
  for accum in (1, 2):
    state = step_lib.state_from_params(base, tx, 0, LORA)
    fn = jax.jit(step_lib.make_train_step(MODEL, tx, lr, grad_accum_steps=accum, lora_cfg=LORA,
                                          loss_chunk_size=16))
    for _ in range(3):
      state, m = fn(state, batch)
    assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(state["lora"])} == {jnp.dtype(jnp.float32)}
    jax.tree.map(np.testing.assert_array_equal, state["params"], base)
    outs.append((jax.device_get(state["lora"]), jax.device_get(m)))
  (a, ma), (b, mb) = outs
  assert np.any(a["layers"]["mlp"]["down_proj"]["lora_b"])
  np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-3)
  np.testing.assert_allclose(ma["grad_norm"], mb["grad_norm"], rtol=1e-2)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-2, atol=1e-5), a, b)


def _sft_data(tmp_path):
  """Chat-format records (loss only where the mask says: the assistant turns)."""
  if (tmp_path / "sft").exists():
    return str(tmp_path / "sft")
  rng = np.random.default_rng(5)
  docs = random_docs(rng, 24, 8, 40)
  masks = [(np.arange(len(d)) > len(d) // 2).astype(np.int64) for d in docs]
  return write_dataset(tmp_path / "sft", docs, "chat", masks)


def _sft_config(tiny, tmp_path, base, **overrides):
  kw = dict(model__vocab_size=MODEL.vocab_size, init_from=base,
            model__lora=dict(rank=4, alpha=8.0, dropout=0.05, trainable=()),
            data__kind="sft", data__sources=[dict(name="chat", path=_sft_data(tmp_path),
                                                  weight=1.0, filter=None)],
            data__seq_len=64, train__num_steps=12, train__grad_accum_steps=2,
            train__neftune_alpha=5.0, checkpoint__every_steps=6,
            optimizer__peak_lr=1e-2, optimizer__warmup_steps=2)
  kw.update(overrides)
  return tiny(**kw)


def test_a_run_with_extra_trainable_tensors_loads_and_streams_merged(tiny, tmp_path, base):
  """`model.lora.trainable` tensors replace the base's in `load` and in `open_tensors`."""
  workdir = str(tmp_path / "run")
  loop.run(_sft_config(tiny, tmp_path, base, train__num_steps=2, checkpoint__every_steps=2,
                       model__lora=dict(rank=2, alpha=4.0, dropout=0.0,
                                        trainable=("final_norm",))), workdir)
  adapter, extra, lora_cfg = model_io.load_adapter(workdir)
  _, base_params = model_io.load(base)
  assert not np.array_equal(extra["final_norm"]["scale"], base_params["final_norm"]["scale"])
  want = merge_lora(MODEL, {**base_params, "final_norm": extra["final_norm"]}, adapter, lora_cfg)
  _, merged = model_io.load(workdir)
  jax.tree.map(np.testing.assert_array_equal, merged, want)
  reader = model_io.open_tensors(workdir)
  for name, x in model_io.hf_tensors(MODEL, want, np.float32):
    np.testing.assert_array_equal(reader.read(name), x, err_msg=name)
  reader.close()


def test_lora_sft_run_checkpoint_export_peft_and_resume_checks(tiny, tmp_path, base):
  workdir = str(tmp_path / "run")
  summary = loop.run(_sft_config(tiny, tmp_path, base), workdir)
  rows = metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, 13))
  assert np.mean([r["loss"] for r in rows[-4:]]) < np.mean([r["loss"] for r in rows[:4]]) - 0.3
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["init_from"] == os.path.abspath(base)

  # The checkpoint holds the adapter, its optimizer state, step and rng: not the base.
  step_dir = os.path.join(workdir, "checkpoints", "12")
  meta = checkpoint.ocp.StandardCheckpointer().metadata(os.path.join(step_dir, "state"))
  tree = getattr(meta, "item_metadata", meta).tree
  assert sorted(tree) == ["lora", "opt_state", "rng", "step"]
  saved = sum(math.prod(m.shape) * np.dtype(m.dtype).itemsize for m in jax.tree.leaves(tree))
  adapter_bytes = 4 * sum(x.size for x in jax.tree.leaves(model_io.load_adapter(workdir)[0]))
  assert adapter_bytes * 3 <= saved < adapter_bytes * 3 + 100  # adapter + 2 Adam moments
  on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(step_dir)
                for f in fs)
  assert on_disk < os.path.getsize(os.path.join(base, "model.safetensors"))  # (Orbax overhead)

  # io.load of the workdir (or its step dir) = base + merged adapter; the base is unchanged.
  ref = model_io.resolve(step_dir)
  assert ref.lora == LoraConfig(rank=4, alpha=8.0, dropout=0.05)
  assert ref.base == os.path.abspath(base)
  _, base_params = model_io.load(base)
  adapter, extra, lora_cfg = model_io.load_adapter(workdir)
  assert extra == {}
  _, merged = model_io.load(workdir)
  want = merge_lora(MODEL, base_params, adapter, lora_cfg)
  jax.tree.map(np.testing.assert_array_equal, merged, want)
  # (The trainer merges on the sharded arrays: float32 rounding may differ in the last bit.)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6),
               jax.device_get(summary["params"]), want)

  # Streaming tools (chat vector) see the merged model, a row range at a time, bit for bit.
  reader = model_io.open_tensors(workdir)
  expected = dict(model_io.hf_tensors(MODEL, want, np.float32))
  assert set(reader.entries) == set(expected)
  for name, x in expected.items():
    np.testing.assert_array_equal(reader.read(name), x, err_msg=name)
    if x.ndim and x.shape[0] > 3:
      np.testing.assert_array_equal(reader.read(name, 1, 3), x[1:3], err_msg=name)
  reader.close()

  # convert --to_hf: the merged model; --to_peft: the adapter, refused for a non-LoRA model.
  hf_out, peft_out = str(tmp_path / "hf"), str(tmp_path / "peft")
  convert.convert(workdir, to_hf=hf_out, dtype="float32", progress=False)
  jax.tree.map(np.testing.assert_array_equal, model_io.load(hf_out)[1], want)
  convert.convert(workdir, to_peft=peft_out, progress=False)
  with open(os.path.join(peft_out, "adapter_config.json")) as f:
    peft_cfg = json.load(f)
  assert (peft_cfg["r"], peft_cfg["lora_alpha"]) == (4, 8.0)
  assert peft_cfg["base_model_name_or_path"] == os.path.abspath(base)
  with pytest.raises(convert.ConvertError, match="not a LoRA training run"):
    convert.convert(base, to_peft=str(tmp_path / "p2"), progress=False)
  # A resume must use the same base and adapter settings (refused before anything is written).
  _refuses_another_base_or_adapter(tiny, tmp_path, base, workdir)

  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  hf_base = transformers.LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
  model = peft.PeftModel.from_pretrained(hf_base, peft_out).eval()
  tokens = np.random.default_rng(0).integers(0, MODEL.vocab_size, (2, 24))
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens)).logits.numpy()
  np.testing.assert_allclose(forward(MODEL, merged, jnp.asarray(tokens)), theirs, atol=1e-4)


def _refuses_another_base_or_adapter(tiny, tmp_path, base, workdir):
  other = str(tmp_path / "other_base")
  model_io.save_hf(other, MODEL, init_params(MODEL, jax.random.key(4)), dtype=np.float32,
                   progress=False)
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match="init_from.*this LoRA"):
    loop.run(_sft_config(tiny, tmp_path, other, train__num_steps=14), workdir)
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match="model.lora.alpha"):
    loop.run(_sft_config(tiny, tmp_path, base, train__num_steps=14,
                         model__lora=dict(rank=4, alpha=16.0, dropout=0.05, trainable=())), workdir)
  assert metrics(workdir)[-1]["step"] == 12


STEPS, EVERY = 24, 6


@pytest.mark.slow  # Three trainer processes: about a minute on 2 cores.
def test_lora_sigkill_then_restart_gives_identical_losses(tmp_path_factory, base):
  env = trainer_env(tmp_path_factory.getbasetemp())
  flags = (f"--config.init_from={base}", "--config.model.lora.rank=4",
           f"--config.model.vocab_size={MODEL.vocab_size}", "--config.train.neftune_alpha=5")
  ref_dir = tmp_path_factory.mktemp("uninterrupted")
  code, out = finish(start_trainer(ref_dir, env, *flags, steps=STEPS, every=EVERY))
  assert code == 0, out[-3000:]
  assert "LoRA rank 4 on q_proj," in out
  reference = exact(metrics(ref_dir))
  assert len(reference) == STEPS and reference[-1]["loss"] < reference[0]["loss"] - 0.5

  workdir = tmp_path_factory.mktemp("killed")
  proc = start_trainer(workdir, env, *flags, steps=STEPS, every=EVERY)
  def saved():  # Orbax renames a step dir into place when it is complete.
    d = workdir / "checkpoints"
    return d.exists() and any(n.isdigit() for n in os.listdir(d))
  while proc.poll() is None and not (saved() and metrics(workdir)[-1]["step"] >= EVERY + 2):
    time.sleep(0.005)
  proc.kill()
  proc.wait()
  assert metrics(workdir)[-1]["step"] < STEPS
  code, out = finish(start_trainer(workdir, env, *flags, steps=STEPS, every=EVERY))
  assert code == 0, out[-3000:]
  assert f"resumed from {workdir}/checkpoints step" in out, out[-3000:]
  assert exact(metrics(workdir)) == reference
