"""Chat vector: exact arithmetic against a NumPy reference, streaming CLI, errors, sharding."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from swallow_jax import chat_vector as cv
from swallow_jax import task_arithmetic as ta
from swallow_jax.model import io as model_io

BF16 = np.dtype(ml_dtypes.bfloat16)
V, D, F, L = 128010, 8, 16, 2  # vocabulary just large enough for the Llama 3 chat specials
LLAMA_CONFIG = {"model_type": "llama", "torch_dtype": "float32", "vocab_size": V,
                "hidden_size": D, "intermediate_size": F, "num_hidden_layers": L,
                "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": D // 2}
SIDE_FILES = {"config.json": json.dumps(LLAMA_CONFIG),
              "generation_config.json": "{}", "tokenizer.json": '{"model": {}}'}


def hf_tensors(seed: int, dtype=np.float32, vocab: int = V) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  shapes = {"model.embed_tokens.weight": (vocab, D), "model.norm.weight": (D,),
            "lm_head.weight": (vocab, D)}
  for l in range(L):
    p = f"model.layers.{l}."
    shapes.update({
        p + "self_attn.q_proj.weight": (D, D), p + "self_attn.k_proj.weight": (D // 2, D),
        p + "self_attn.v_proj.weight": (D // 2, D), p + "self_attn.o_proj.weight": (D, D),
        p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
        p + "mlp.down_proj.weight": (D, F), p + "input_layernorm.weight": (D,),
        p + "post_attention_layernorm.weight": (D,)})
  return {k: rng.standard_normal(s, np.float32).astype(dtype) for k, s in shapes.items()}


def write_hf(path, tensors, shards: int = 1, side_files: bool = True, vocab: int = V) -> str:
  """A HF checkpoint directory: model.safetensors, or `shards` files plus the index."""
  os.makedirs(path)
  names = sorted(tensors)
  if shards == 1:
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for k in range(shards):
      file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
      part = {n: tensors[n] for n in names[k::shards]}
      save_file(part, os.path.join(path, file), metadata={"format": "pt"})
      weight_map.update({n: file for n in part})
    with open(os.path.join(path, model_io.INDEX), "w") as f:
      json.dump({"metadata": {}, "weight_map": weight_map}, f)
  if side_files:
    vocab = tensors["model.embed_tokens.weight"].shape[0]
    for name, text in SIDE_FILES.items():
      if name == "config.json":
        text = json.dumps({**LLAMA_CONFIG, "vocab_size": vocab})
      with open(os.path.join(path, name), "w") as f:
        f.write(text)
  return str(path)


def read_hf(path) -> dict[str, np.ndarray]:
  if not os.path.exists(os.path.join(path, model_io.INDEX)):  # one shard: no index
    return load_file(os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, model_io.INDEX)) as f:
    index = json.load(f)
  out = {}
  for file in sorted(set(index["weight_map"].values())):
    out.update(load_file(os.path.join(path, file)))
  assert set(out) == set(index["weight_map"])
  assert index["metadata"]["total_size"] == sum(x.nbytes for x in out.values())
  return out


def reference(t, i, b, s, dtype=None):
  """The definition, elementwise in fp32."""
  f32 = np.float32
  out = t.astype(f32) + f32(s) * (i.astype(f32) - b.astype(f32))
  return out.astype(t.dtype if dtype is None else dtype)


@pytest.fixture
def ckpts(tmp_path):
  t, b, i = hf_tensors(0), hf_tensors(1), hf_tensors(2)
  dirs = (write_hf(tmp_path / "target", t, shards=3), write_hf(tmp_path / "base", b),
          write_hf(tmp_path / "instruct", i, shards=2))
  return (t, b, i), dirs


def merge(dirs, out, **kwargs):
  target, base, instruct = dirs
  kwargs.setdefault("chunk_elems", 100)  # several chunks per tensor: exercises the streaming
  kwargs.setdefault("progress", False)
  return cv.merge_checkpoints(base, instruct, target, str(out), **kwargs)


def test_cli_fp32_exact_sharded_output(ckpts, tmp_path):
  (t, b, i), dirs = ckpts
  merge(dirs, tmp_path / "out", scales=(0.5,), max_shard_bytes=2_000_000)
  files = os.listdir(tmp_path / "out")
  assert sum(f.endswith(".safetensors") for f in files) >= 2  # sharded, with an index
  out = read_hf(tmp_path / "out")
  assert set(out) == set(t)
  for name in t:
    np.testing.assert_array_equal(out[name], reference(t[name], i[name], b[name], 0.5), name)
    assert out[name].dtype == np.float32
  for name, text in SIDE_FILES.items():
    assert open(tmp_path / "out" / name).read() == text
  # The files are ordinary safetensors for torch too.
  from safetensors.torch import load_file as torch_load  # pylint: disable=g-import-not-at-top
  first = sorted(f for f in files if f.endswith(".safetensors"))[0]
  assert torch_load(str(tmp_path / "out" / first))


def test_cli_bf16_within_one_rounding(tmp_path):
  t, b, i = (hf_tensors(s, BF16) for s in range(3))
  dirs = [write_hf(tmp_path / n, x) for n, x in (("t", t), ("b", b), ("i", i))]
  merge(dirs, tmp_path / "out", scales=(0.3,))
  out = read_hf(tmp_path / "out")
  for name in t:
    assert out[name].dtype == BF16
    np.testing.assert_array_equal(out[name], reference(t[name], i[name], b[name], 0.3))
    exact = (t[name].astype(np.float64)
             + np.float64(np.float32(0.3)) * (i[name].astype(np.float64) - b[name]))
    # One bf16 rounding of the result, plus the fp32 rounding of the operands (which matters
    # only where the sum cancels to nearly zero).
    ulp = np.spacing(np.abs(out[name].astype(np.float32))).astype(np.float64) * 2**16
    operands = np.maximum(np.maximum(np.abs(t[name]), np.abs(i[name])),
                          np.abs(b[name])).astype(np.float32)
    tol = ulp + 4 * np.spacing(operands).astype(np.float64)
    assert np.all(np.abs(out[name].astype(np.float64) - exact) <= tol), name


def test_cli_output_dtype_and_multi_scale(ckpts, tmp_path):
  (t, b, i), dirs = ckpts
  outs = merge(dirs, tmp_path / "out", scales=(0.3, 0.5, 1.0), dtype="bfloat16")
  assert sorted(os.listdir(tmp_path / "out")) == ["scale_0.3", "scale_0.5", "scale_1"]
  assert [os.path.basename(o) for o in outs] == ["scale_0.3", "scale_0.5", "scale_1"]
  for s, o in zip((0.3, 0.5, 1.0), outs):
    out = read_hf(o)
    for name in t:
      np.testing.assert_array_equal(out[name], reference(t[name], i[name], b[name], s, BF16))
    assert json.load(open(os.path.join(o, "config.json")))["torch_dtype"] == "bfloat16"


def test_cli_exclude_and_protected_rows(ckpts, tmp_path):
  (t, b, i), dirs = ckpts
  merge(dirs, tmp_path / "out", exclude=(r"norm", r"q_proj"),
        protect_token_ids=cv.LLAMA3_CHAT_TOKEN_IDS)
  out = read_hf(tmp_path / "out")
  ids = list(cv.LLAMA3_CHAT_TOKEN_IDS)
  for name in t:
    if "norm" in name or "q_proj" in name:
      np.testing.assert_array_equal(out[name], t[name], name)
      continue
    want = reference(t[name], i[name], b[name], 0.5)
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
      want[ids] = t[name][ids]
      assert not np.array_equal(out[name][128005], t[name][128005])
    np.testing.assert_array_equal(out[name], want, name)


def test_cli_vocab_mismatch_option(tmp_path):
  t = hf_tensors(0, vocab=V + 5)  # target has 5 more rows (e.g. added tokens)
  b, i = hf_tensors(1), hf_tensors(2)
  dirs = [write_hf(tmp_path / n, x) for n, x in (("t", t), ("b", b), ("i", i))]
  with pytest.raises(cv.ChatVectorError,
                     match=r"lm_head.weight: vocabulary size mismatch: target "
                     r"\(128015, 8\) vs base \(128010, 8\)"):
    merge(dirs, tmp_path / "out")
  assert not os.path.exists(tmp_path / "out")
  merge(dirs, tmp_path / "out", allow_vocab_mismatch=True, protect_token_ids=(3,))
  out = read_hf(tmp_path / "out")
  for name in ("model.embed_tokens.weight", "lm_head.weight"):
    want = t[name].copy()
    want[:V] = reference(t[name][:V], i[name], b[name], 0.5)
    want[3] = t[name][3]
    np.testing.assert_array_equal(out[name], want)
  np.testing.assert_array_equal(out["model.norm.weight"], reference(
      t["model.norm.weight"], i["model.norm.weight"], b["model.norm.weight"], 0.5))


def _assert_clean(tmp_path):
  assert sorted(os.listdir(tmp_path)) == ["b", "i", "t"]  # no output, no temporary directory


@pytest.mark.parametrize("case, message", [
    ("missing", r"model.layers.1.mlp.up_proj.weight: missing from --instruct"),
    ("extra", r"model.extra.weight: in --base but not in --target \(1 such tensors\)"),
    ("shape", r"model.layers.0.mlp.down_proj.weight: shape mismatch: target \(8, 16\) vs "
     r"instruct \(8, 17\)"),
    ("truncated", r"base .*model.safetensors: not a valid safetensors file"),
    ("garbage", r"base .*model.safetensors: not a valid safetensors file"),
    ("not_a_checkpoint", r"--instruct=.*: config.json but no \*.safetensors"),
    ("bad_protect", r"lm_head.weight: protected token id 999999 is outside its 128010 rows"),
    ("bad_dtype", r"--dtype=int8: expected float32, bfloat16 or float16"),
    ("same_scale", r"--scale=0.5,0.5: give distinct scales"),
])
def test_cli_errors(tmp_path, case, message):
  t, b, i = hf_tensors(0), hf_tensors(1), hf_tensors(2)
  kwargs = {}
  if case == "missing":
    del i["model.layers.1.mlp.up_proj.weight"]
  if case == "extra":
    b["model.extra.weight"] = np.zeros(3, np.float32)
  if case == "shape":
    i["model.layers.0.mlp.down_proj.weight"] = np.zeros((D, F + 1), np.float32)
  if case == "bad_protect":
    kwargs["protect_token_ids"] = (999999,)
  if case == "bad_dtype":
    kwargs["dtype"] = "int8"
  if case == "same_scale":
    kwargs["scales"] = (0.5, 0.5)
  dirs = [write_hf(tmp_path / n, x) for n, x in (("t", t), ("b", b), ("i", i))]
  if case in ("truncated", "garbage"):
    path = tmp_path / "b" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if case == "truncated" else b"\x07" * 100)
  if case == "not_a_checkpoint":
    os.remove(tmp_path / "i" / "model.safetensors")
  with pytest.raises(cv.ChatVectorError, match=message):
    merge(dirs, tmp_path / "out", **kwargs)
  _assert_clean(tmp_path)


def test_cli_failure_midway_leaves_nothing(tmp_path, monkeypatch):
  dirs = [write_hf(tmp_path / n, hf_tensors(s)) for s, n in enumerate("tbi")]
  real_read = model_io.SafetensorsReader.read

  def failing_read(self, name, lo=0, hi=None):
    if name == "model.norm.weight":
      raise model_io.ModelPathError(f"{name}: short read")
    return real_read(self, name, lo, hi)

  monkeypatch.setattr(model_io.SafetensorsReader, "read", failing_read)
  with pytest.raises(cv.ChatVectorError, match="short read"):
    merge(dirs, tmp_path / "out", scales=(0.5, 1.0))
  _assert_clean(tmp_path)


def test_cli_output_exists(ckpts, tmp_path):
  _, dirs = ckpts
  os.makedirs(tmp_path / "out")
  with pytest.raises(cv.ChatVectorError, match=r"--output=.*out already exists"):
    merge(dirs, tmp_path / "out")


def test_command_line(ckpts, tmp_path):
  (t, b, i), (target, base, instruct) = ckpts
  run = lambda *args: subprocess.run([sys.executable, "-m", "swallow_jax.chat_vector", *args],
                                     capture_output=True, text=True, timeout=120)
  r = run("--help")
  assert "--scale" in r.stdout and "--protect_tokens" in r.stdout and "chat vector" in r.stdout
  out = str(tmp_path / "out")
  from helpers import LLAMA3_DIR  # pylint: disable=g-import-not-at-top
  shutil.copy(os.path.join(LLAMA3_DIR, "tokenizer.json"), target)  # llama3_chat: looked up there
  r = run(f"--base={base}", f"--instruct={instruct}", f"--target={target}", f"--output={out}",
          "--scale=1.0", "--exclude=lm_head", "--protect_tokens=llama3_chat", "--quiet")
  assert r.returncode == 0, r.stderr
  merged = read_hf(out)
  np.testing.assert_array_equal(merged["lm_head.weight"], t["lm_head.weight"])
  name = "model.layers.0.mlp.up_proj.weight"
  np.testing.assert_array_equal(merged[name], reference(t[name], i[name], b[name], 1.0))
  r = run(f"--base={base}", f"--instruct={instruct}", f"--target={target}", f"--output={out}")
  assert r.returncode != 0
  assert r.stderr.strip().splitlines() == [f"chat_vector: error: --output={out} already exists;"
                                           " remove it or pick another path"]
  r = run(f"--base={base}", f"--instruct={instruct}", f"--target={target}",
          f"--output={out}2", "--scale=half")
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      "chat_vector: error: --scale=half: expected numbers like 0.5 or 0.3,0.5,1.0 (see --help)"]


# ---------------------------------------------------------------------------------------------
# Tree functions: our param layout (lm_head kernel is [D, V]: token columns).


def flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


def difference(a, b):
  """The task vector a - b, in fp32."""
  return jax.tree.map(lambda x, y: x.astype(np.float32) - y.astype(np.float32), a, b)


def param_tree(seed, dtype=np.float32, vocab=V):
  rng = np.random.default_rng(seed)
  r = lambda *s: rng.standard_normal(s, np.float32).astype(dtype)
  return {"embed": {"embedding": r(vocab, D)},
          "layers": {"attn_norm": {"scale": r(L, D)},
                     "attn": {"q_proj": {"kernel": r(L, D, D)}},
                     "mlp": {"down_proj": {"kernel": r(L, F, D)}}},
          "final_norm": {"scale": r(D)},
          "lm_head": {"kernel": r(D, vocab)}}


def tree_reference(t, b, i, s, exclude=(), protect=()):
  ft, fb, fi = flat(t), flat(b), flat(i)
  out = {}
  for name, x in ft.items():
    if any(re.search(p, name) for p in exclude):
      out[name] = x
      continue
    out[name] = reference(x, fi[name], fb[name], s)
    if name == "embed/embedding":
      out[name][list(protect)] = x[list(protect)]
    if name == "lm_head/kernel":
      out[name][:, list(protect)] = x[:, list(protect)]
  return out


def test_tree_functions_numpy():
  t, b, i = param_tree(0), param_tree(1), param_tree(2)
  got = flat(ta.apply_chat_vector(t, b, i, 0.5, exclude=(r".*norm.*",),
                                         protect_token_ids=cv.LLAMA3_CHAT_TOKEN_IDS))
  want = tree_reference(t, b, i, 0.5, (r".*norm.*",), cv.LLAMA3_CHAT_TOKEN_IDS)
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], name)
    assert isinstance(got[name], np.ndarray)
  # difference + add_scaled is the same computation.
  vec = difference(i, b)
  assert vec["lm_head"]["kernel"].dtype == np.float32
  again = flat(ta.task_arithmetic(t, [vec], [0.5], exclude=(r".*norm.*",),
                                    protect_token_ids=cv.LLAMA3_CHAT_TOKEN_IDS))
  for name in want:
    np.testing.assert_array_equal(again[name], want[name], name)
  # Two vectors with weights, bf16 target: fp32 arithmetic, result in bf16.
  tb = jax.tree.map(lambda x: x.astype(BF16), t)
  v2 = difference(param_tree(3), param_tree(4))
  mixed = flat(ta.task_arithmetic(tb, [vec, v2], [0.5, 0.25]))
  for name, x in flat(tb).items():
    f32 = np.float32
    want = (x.astype(f32) + (f32(0.5) * flat(vec)[name]
                             + f32(0.25) * flat(v2)[name])).astype(BF16)
    np.testing.assert_array_equal(mixed[name], want, name)


def test_tree_hf_names_and_vocab_mismatch():
  t, b, i = hf_tensors(0, vocab=V - 3), hf_tensors(1), hf_tensors(2)
  with pytest.raises(cv.ChatVectorError,
                     match=r"model.embed_tokens.weight: vocabulary size mismatch: "
                     r"target \(128007, 8\) vs instruct \(128010, 8\)"):
    ta.apply_chat_vector(t, b, i)
  got = ta.apply_chat_vector(t, b, i, 1.0, allow_vocab_mismatch=True, protect_token_ids=(5,),
                             exclude=("model.norm",))
  for name in ("model.embed_tokens.weight", "lm_head.weight"):
    want = reference(t[name], i[name][:V - 3], b[name][:V - 3], 1.0)
    want[5] = t[name][5]
    np.testing.assert_array_equal(got[name], want)
  np.testing.assert_array_equal(got["model.norm.weight"], t["model.norm.weight"])


def test_tree_errors():
  t, b, i = param_tree(0), param_tree(1), param_tree(2)
  bad = param_tree(2)
  bad["layers"]["attn"]["q_proj"]["kernel"] = np.zeros((L, D, D + 1), np.float32)
  with pytest.raises(cv.ChatVectorError, match=r"layers/attn/q_proj/kernel: shape mismatch: "
                     r"target \(2, 8, 8\) vs instruct \(2, 8, 9\)"):
    ta.apply_chat_vector(t, b, bad)
  del i["final_norm"]
  with pytest.raises(cv.ChatVectorError, match="final_norm/scale: missing from the instruct"):
    ta.apply_chat_vector(t, b, i)
  ta.apply_chat_vector(t, b, i, exclude=("final_norm",))  # excluded: may be absent
  b["extra"] = np.zeros(2)
  with pytest.raises(cv.ChatVectorError, match="extra: in the base tree but not in the target"):
    ta.apply_chat_vector(t, b, param_tree(2))
  with pytest.raises(cv.ChatVectorError, match="2 vectors but 1 weights"):
    ta.task_arithmetic(t, [t, t], [1.0])


def test_sharded_jit_matches_numpy_and_keeps_shardings():
  assert jax.device_count() == 8
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
  P = jax.sharding.PartitionSpec
  specs = {"embed": {"embedding": P("model", "data")},
           "layers": {"attn_norm": {"scale": P()},
                      "attn": {"q_proj": {"kernel": P(None, "data", "model")}},
                      "mlp": {"down_proj": {"kernel": P(None, "model", None)}}},
           "final_norm": {"scale": P()},
           "lm_head": {"kernel": P("data", "model")}}
  shardings = jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), specs)
  t, b, i = (param_tree(s, BF16, vocab=128016) for s in range(3))  # divisible by 8
  put = lambda x: jax.device_put(x, shardings)
  kw = dict(exclude=("final_norm",), protect_token_ids=cv.LLAMA3_CHAT_TOKEN_IDS)
  fn = jax.jit(lambda t, b, i, s: ta.apply_chat_vector(t, b, i, s, **kw))
  got = fn(put(t), put(b), put(i), jnp.float32(0.5))  # a traced scale works too
  want = flat(ta.apply_chat_vector(t, b, i, 0.5, **kw))
  for name, x in flat(got).items():
    assert x.dtype == jnp.bfloat16
    assert x.sharding.is_equivalent_to(flat(shardings)[name], x.ndim), name
    np.testing.assert_array_equal(np.asarray(x), want[name], name)


# ---------------------------------------------------------------------------------------------
# Orbax parameter checkpoints.


def test_mixed_kinds_orbax_and_training_checkpoints(tmp_path):
  """HF base + `--instruct=WORKDIR/checkpoints/N` + a training-run target; and an orbax base."""
  from test_model_io import write_train_run  # pylint: disable=g-import-not-at-top
  from swallow_jax.model import init_params, presets  # pylint: disable=g-import-not-at-top
  config = presets.get("tiny_gqa", num_layers=2, vocab_size=300)
  trees = [jax.tree.map(np.asarray, init_params(config, jax.random.key(s))) for s in range(3)]
  target = write_train_run(tmp_path / "t", config, trees[0], step=7, tokenizer=None)
  model_io.save_hf(str(tmp_path / "b"), config, trees[1], dtype=np.float32, progress=False)
  write_train_run(tmp_path / "i", config, trees[2], step=4)
  instruct = str(tmp_path / "i" / "checkpoints" / "4")
  merge((target, str(tmp_path / "b"), instruct), tmp_path / "out", scales=(0.5,),
        protect_token_ids=(1, 299), exclude=("attn_norm",))
  loaded_config, restored = model_io.load(str(tmp_path / "out"), progress=False)
  assert loaded_config.vocab_size == 300 and loaded_config.param_dtype == "float32"
  want = tree_reference(trees[0], trees[1], trees[2], 0.5, ("attn_norm",), (1, 299))
  got = flat(restored)
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), name)
  assert json.load(open(tmp_path / "out" / "config.json"))["vocab_size"] == 300
  # A `convert --to_orbax` base gives the same result.
  model_io.save_orbax(str(tmp_path / "bo"), config, trees[1])
  merge((target, str(tmp_path / "bo"), instruct), tmp_path / "out2", scales=(0.5,),
        protect_token_ids=(1, 299), exclude=("attn_norm",))
  _, again = model_io.load(str(tmp_path / "out2"), progress=False)
  jax.tree.map(np.testing.assert_array_equal, again, restored)


def test_protect_tokens_resolve_in_the_targets_vocabulary(ckpts, tmp_path):
  from helpers import LLAMA3_DIR  # pylint: disable=g-import-not-at-top
  _, (target, _, _) = ckpts
  assert cv.protected_ids("", target) == ()
  assert cv.protected_ids("5,7", target) == (5, 7)
  with pytest.raises(cv.ChatVectorError, match="comma-separated token ids, 'chat_template'"):
    cv.protected_ids("5,x", target)
  shutil.copy(os.path.join(LLAMA3_DIR, "tokenizer.json"), target)  # the target's own tokenizer
  assert cv.protected_ids("llama3_chat", target) == cv.LLAMA3_CHAT_TOKEN_IDS
  # Llama 3's built-in template writes BOS, the two header tokens and <|eot_id|>.
  assert cv.protected_ids("chat_template", target) == (128000, 128006, 128007, 128009)
  chatml = tmp_path / "chatml"
  os.makedirs(chatml)
  ids = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
  vocab = {**ids, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz\n ")}}
  tok_json = {"version": "1.0", "added_tokens": [
      {"id": i, "content": t, "special": True, "single_word": False, "lstrip": False,
       "rstrip": False, "normalized": False} for t, i in ids.items()],
      "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|endoftext|>"},
      "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated",
                        "invert": False}}
  (chatml / "tokenizer.json").write_text(json.dumps(tok_json))
  template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
              "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
              "{{ '<|im_start|>assistant\n' }}{% endif %}")
  (chatml / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": None, "eos_token": "<|im_end|>", "chat_template": template}))
  shutil.copy(os.path.join(target, "config.json"), chatml)
  shutil.copy(os.path.join(target, "model-00001-of-00003.safetensors"), chatml)
  assert cv.protected_ids("chat_template", str(chatml)) == (1, 2)
  with pytest.raises(cv.ChatVectorError, match="llama3_chat"):
    cv.protected_ids("llama3_chat", str(chatml))


# ---------------------------------------------------------------------------------------------
# LoRA adapters (PEFT directories) merged in the same streaming pass.


def write_adapter(path, config, seed, lora_cfg):
  """A random (B nonzero) adapter saved in the PEFT layout; returns it (our stacked tree)."""
  from swallow_jax.model import lora  # pylint: disable=g-import-not-at-top
  keys = iter(jax.random.split(jax.random.key(seed), 64))
  adapter = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape),
                         lora.init_lora(config, lora_cfg, next(keys)))
  lora.save_peft(str(path), config, adapter, lora_cfg)
  return adapter


def test_adapters_compose_with_the_chat_vector_bit_exact(ckpts, tmp_path):
  """target + s (instruct - base), then two adapters (scales 1 and 0.5), in one pass = the same
  built in memory with apply_chat_vector and merge_lora, bit for bit in fp32."""
  from swallow_jax.model import lora  # pylint: disable=g-import-not-at-top
  _, (target, base, instruct) = ckpts
  config = model_io.resolve(target).config
  cfg1 = lora.LoraConfig(rank=4, alpha=8.0)
  cfg2 = lora.LoraConfig(rank=3, alpha=6.0, targets=("v_proj", "o_proj", "down_proj"))
  a1 = write_adapter(tmp_path / "a1", config, 1, cfg1)
  a2 = write_adapter(tmp_path / "a2", config, 2, cfg2)
  outs = merge((target, base, instruct), tmp_path / "out", scales=(0.5, 1.0),
               adapters=(str(tmp_path / "a1"), str(tmp_path / "a2")), adapter_scales=(1.0, 0.5))
  t, b, i = (jax.tree.map(np.asarray, model_io.load(p, progress=False)[1])
             for p in (target, base, instruct))
  half2 = lora.LoraConfig(rank=3, alpha=3.0, targets=cfg2.targets)  # adapter_scale 0.5
  for s, out in zip((0.5, 1.0), outs):
    want = lora.merge_lora(config, lora.merge_lora(config, ta.apply_chat_vector(t, b, i, s), a1,
                                                   cfg1), a2, half2)
    got = flat(model_io.load(out, progress=False)[1])
    for name, x in flat(want).items():
      np.testing.assert_array_equal(got[name], np.asarray(x), name)
  # The adapters did change what they adapt (and only that).
  cv_only = ta.apply_chat_vector(t, b, i, 0.5)
  got = flat(model_io.load(outs[0], progress=False)[1])
  for name, x in flat(cv_only).items():
    adapted = re.search(r"_proj/kernel$", name) is not None
    assert adapted != np.array_equal(got[name], x), name


def test_peft_made_adapter_alone_matches_merge_and_unload(tmp_path):
  """A PEFT-initialised adapter over a transformers checkpoint, no chat vector: the output equals
  PEFT's own merge_and_unload (independent reference) and merge_lora bit for bit."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  peft = pytest.importorskip("peft")
  from swallow_jax.model import lora  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf_cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=8)
  model = transformers.LlamaForCausalLM(hf_cfg).eval()
  model.save_pretrained(str(tmp_path / "base"))
  pcfg = peft.LoraConfig(r=3, lora_alpha=5, init_lora_weights=False, task_type="CAUSAL_LM",
                         target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
  peft_model = peft.get_peft_model(model, pcfg).eval()
  peft_model.save_pretrained(str(tmp_path / "adapter"))
  cv.merge_checkpoints(None, None, str(tmp_path / "base"), str(tmp_path / "out"),
                       adapters=(str(tmp_path / "adapter"),), chunk_elems=100, progress=False)
  out = read_hf(tmp_path / "out")
  state = {k: v.numpy() for k, v in peft_model.merge_and_unload().state_dict().items()}
  assert set(out) == set(state)
  for name, x in out.items():
    np.testing.assert_allclose(x, state[name], atol=1e-6, rtol=0, err_msg=name)
  assert not np.array_equal(out["model.layers.1.mlp.down_proj.weight"],
                            read_hf(tmp_path / "base")["model.layers.1.mlp.down_proj.weight"])
  config, params = model_io.load(str(tmp_path / "base"), progress=False)
  adapter, lora_cfg = lora.load_peft(str(tmp_path / "adapter"), config)
  want = flat(lora.merge_lora(config, params, adapter, lora_cfg))
  for name, x in flat(model_io.load(str(tmp_path / "out"), progress=False)[1]).items():
    np.testing.assert_array_equal(np.asarray(x), np.asarray(want[name]), name)


@pytest.mark.parametrize("case, message", [
    ("other_model", r"--adapter=.*a: .*adapter_model.safetensors: tensor "
     r"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight has shape \(2, 16\), "
     r"expected \(2, 8\)"),
    ("no_config", r"--adapter=.*a: no adapter_config.json \(not a PEFT adapter dir\)"),
    ("no_key", r"--adapter=.*a: adapter_config.json has no key 'r'"),
    ("garbage", r"--adapter=.*a: "),
    ("dora", r"--adapter=.*a: .*unsupported LoRA options \{'use_dora': True\}"),
    ("half_cv", r"give --base and --instruct \(a chat vector\), --adapter, or both"),
    ("scales", r"1 adapters but 2 adapter scales"),
])
def test_adapter_errors(tmp_path, case, message):
  from swallow_jax.model import lora  # pylint: disable=g-import-not-at-top
  dirs = [write_hf(tmp_path / n, hf_tensors(s)) for s, n in enumerate("tbi")]
  config = model_io.resolve(dirs[0]).config
  if case == "other_model":
    import dataclasses  # pylint: disable=g-import-not-at-top
    config = dataclasses.replace(config, hidden_size=2 * D)
  write_adapter(tmp_path / "a", config, 0, lora.LoraConfig(rank=2, alpha=4.0, targets=("q_proj",)))
  meta = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
  if case == "no_config":
    os.remove(tmp_path / "a" / "adapter_config.json")
  if case in ("no_key", "dora"):
    meta = {k: v for k, v in meta.items() if k != "r"} if case == "no_key" else {
        **meta, "use_dora": True}
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(meta))
  if case == "garbage":
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"\x07" * 100)
  target, base, instruct = dirs
  kwargs = dict(adapters=(str(tmp_path / "a"),), chunk_elems=100, progress=False)
  if case == "half_cv":
    instruct = None
  if case == "scales":
    kwargs["adapter_scales"] = (1.0, 0.5)
  with pytest.raises(cv.ChatVectorError, match=message) as e:
    cv.merge_checkpoints(base, instruct, target, str(tmp_path / "out"), **kwargs)
  assert "\n" not in str(e.value)
  assert sorted(os.listdir(tmp_path)) == ["a", "b", "i", "t"]  # nothing written


def test_command_line_adapter(ckpts, tmp_path):
  from swallow_jax.model import lora  # pylint: disable=g-import-not-at-top
  (t, _, _), (target, base, instruct) = ckpts
  config = model_io.resolve(target).config
  cfg = lora.LoraConfig(rank=2, alpha=4.0, targets=("up_proj",))
  adapter = write_adapter(tmp_path / "a", config, 3, cfg)
  run = lambda *args: subprocess.run([sys.executable, "-m", "swallow_jax.chat_vector", *args],
                                     capture_output=True, text=True, timeout=120)
  out = str(tmp_path / "out")
  r = run(f"--target={target}", f"--adapter={tmp_path / 'a'}", "--adapter_scale=0.5",
          f"--output={out}", "--quiet", "--json")
  assert r.returncode == 0, r.stderr
  assert json.loads(r.stdout)["adapter_scales"] == [0.5]
  merged = read_hf(out)
  name = "model.layers.1.mlp.up_proj.weight"
  delta = np.asarray(lora.lora_delta(adapter["layers"]["mlp"]["up_proj"]["lora_a"][1],
                                     adapter["layers"]["mlp"]["up_proj"]["lora_b"][1], 1.0)).T
  np.testing.assert_array_equal(merged[name], t[name] + delta)  # 0.5 * alpha / r = 1
  np.testing.assert_array_equal(merged["model.layers.1.mlp.down_proj.weight"],
                                t["model.layers.1.mlp.down_proj.weight"])
  r = run(f"--target={target}", f"--adapter={tmp_path}", f"--output={out}2")
  assert r.returncode == 1 and r.stderr.strip().splitlines() == [
      f"chat_vector: error: --adapter={tmp_path}: no adapter_config.json (not a PEFT adapter dir)"]
  r = run(f"--target={target}", f"--adapter={tmp_path / 'a'}", f"--output={out}2", "--scale=1")
  assert r.returncode == 2 and "--scale weighs the chat vector" in r.stderr
