"""The recipe runner: references, stage skipping and resume, reports; the demo end to end."""

import json
import logging
import os
import time

import ml_collections
import pytest

from swallow_jax import recipe
from swallow_jax.sweep import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every experiment config (configs/common.py holds shared builders, no get_config).
CONFIGS = sorted(f for f in os.listdir(os.path.join(REPO, "configs"))
                 if f.endswith(".py") and f not in ("__init__.py", "common.py"))


def _cfg(spec):
  return load_config(os.path.join(REPO, "configs", spec))


# --------------------------------------------------------------------------------------------
# The runner on a fake stage kind (pure Python, milliseconds).


@pytest.fixture
def fake_kind(monkeypatch):
  calls = []

  def fake(cfg, stage_dir):
    calls.append(os.path.basename(stage_dir))
    if cfg.get("fail"):
      raise RuntimeError(f"{stage_dir} failed")
    path = os.path.join(stage_dir, "out.txt")
    with open(path, "w") as f:
      f.write(str(cfg.get("text", "")))
    return {"path": path, "n": cfg.get("n", 0), "nested": {"k": "v"}}

  monkeypatch.setitem(recipe.STAGE_KINDS, "fake", fake)
  return calls


def _config(**overrides):
  c = ml_collections.ConfigDict()
  c.stages = ("a", "b", "c")
  c.a = dict(kind="fake", n=3)
  c.b = dict(kind="fake", text=recipe.stage("a", "out.txt"), fail=False)
  c.c = dict(kind="fake", n=4, text=recipe.stage("b"))
  for k, v in overrides.items():
    c[k] = v
  return c


def test_stages_run_in_order_with_outputs_resolved(tmp_path, fake_kind):
  recipe.run(_config(), str(tmp_path), report=False)
  assert fake_kind == ["a", "b", "c"]
  # A path under a stage resolves to WORKDIR/<stage>/<path>, absolute.
  assert open(tmp_path / "b" / "out.txt").read() == f"{os.path.abspath(tmp_path)}/a/out.txt"
  done_c = json.load(open(tmp_path / "c" / "DONE.json"))
  assert done_c["config"]["n"] == 4
  assert done_c["config"]["text"] == os.path.join(os.path.abspath(tmp_path), "b")  # main output
  assert done_c["outputs"]["nested"] == {"k": "v"}
  assert recipe.status(_config(), str(tmp_path)) == {"a": "done", "b": "done", "c": "done"}


def test_a_held_workdir_is_refused_before_any_stage(tmp_path, fake_kind):
  from swallow_jax.train import lock  # pylint: disable=g-import-not-at-top
  with lock.workdir_lock(str(tmp_path)):
    with pytest.raises(lock.WorkdirInUseError, match=f"in use by PID {os.getpid()}"):
      recipe.run(_config(), str(tmp_path), report=False)
  assert fake_kind == [] and not (tmp_path / "a").exists()
  recipe.run(_config(), str(tmp_path), report=False)  # released: runs
  assert fake_kind == ["a", "b", "c"]


def test_completed_stages_are_skipped(tmp_path, fake_kind):
  recipe.run(_config(), str(tmp_path), report=False)
  mtime = os.path.getmtime(tmp_path / "a" / "DONE.json")
  fake_kind.clear()
  recipe.run(_config(), str(tmp_path), report=False)
  assert fake_kind == []
  assert os.path.getmtime(tmp_path / "a" / "DONE.json") == mtime


def test_a_failed_stage_is_rerun_and_later_stages_wait(tmp_path, fake_kind):
  failing = _config(b=dict(kind="fake", text="x", fail=True))
  with pytest.raises(RuntimeError, match="failed"):
    recipe.run(failing, str(tmp_path), report=False)
  assert recipe.status(failing, str(tmp_path)) == {"a": "done", "b": "partial", "c": "pending"}
  fake_kind.clear()
  recipe.run(_config(), str(tmp_path), report=False)
  assert fake_kind == ["b", "c"]


def test_an_unfinished_stage_is_not_marked_done(tmp_path, fake_kind, monkeypatch):
  def stop(cfg, stage_dir):
    raise recipe.Unfinished("stopped by SIGTERM")
  monkeypatch.setitem(recipe.STAGE_KINDS, "stop", stop)
  with pytest.raises(recipe.Unfinished):
    recipe.run(_config(b=dict(kind="stop")), str(tmp_path), report=False)
  assert recipe.status(_config(), str(tmp_path))["b"] == "partial"


def test_cli_dry_run_and_bad_input(tmp_path):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  cmd = [sys.executable, "-m", "swallow_jax.recipe", f"--workdir={tmp_path}"]
  out = subprocess.run(cmd + ["--config=configs/demo.py:micro", "--dry-run"], capture_output=True,
                       text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert [l.split()[0] for l in lines] == list(_cfg("demo.py").stages)
  assert lines[3].split() == ["base", "train", "pending"]
  bad = subprocess.run(cmd + ["--config=configs/demo.py:micro", "--stages=bake"],
                       capture_output=True, text=True, cwd=REPO)
  assert bad.returncode == 1 and "error: --stages names ['bake'] are not stages" in bad.stderr
  assert subprocess.run(cmd + ["--config=configs/demo.py:nope=1"], capture_output=True,
                        text=True, cwd=REPO).returncode != 0


def test_only_runs_the_named_stages(tmp_path, fake_kind):
  recipe.run(_config(), str(tmp_path), only=["a"], report=False)
  assert fake_kind == ["a"]
  with pytest.raises(recipe.StageError, match="stage 'b' has not completed"):
    recipe.run(_config(), str(tmp_path), only=["c"], report=False)
  with pytest.raises(ValueError, match=r"\['nope'\] are not stages"):
    recipe.run(_config(), str(tmp_path), only=["nope"], report=False)


def test_changed_config_of_a_done_stage_warns(tmp_path, fake_kind, caplog):
  recipe.run(_config(), str(tmp_path), report=False)
  with caplog.at_level(logging.WARNING):
    recipe.run(_config(a=dict(kind="fake", n=4)), str(tmp_path), report=False)
  assert "stage a was completed with a different config" in caplog.text
  assert fake_kind == ["a", "b", "c"]


def test_config_errors_are_caught_before_running(tmp_path, fake_kind):
  with pytest.raises(ValueError, match=r"refers to stage 'c', which is a later stage"):
    recipe.run(_config(a=dict(kind="fake", text=recipe.stage("c", "out.txt"))), str(tmp_path))
  with pytest.raises(ValueError, match=r"refers to stage 'zz', which is no stage"):
    recipe.run(_config(a=dict(kind="fake", text=recipe.stage("zz"))), str(tmp_path))
  with pytest.raises(ValueError, match="kind='bake'"):
    recipe.run(_config(a=dict(kind="bake")), str(tmp_path))
  missing = _config()
  missing.stages = ("a", "d")
  with pytest.raises(ValueError, match="config.d is missing"):
    recipe.run(missing, str(tmp_path))
  assert fake_kind == [] and not os.listdir(tmp_path)
  recipe.run(_config(), str(tmp_path), only=["a"], report=False)
  with pytest.raises(recipe.StageError, match="has no output 'nope'"):
    recipe.resolve(recipe.stage("a", "nope"), _config(), str(tmp_path))


# --------------------------------------------------------------------------------------------
# The report, from hand-written evaluation results.


def _task(kind, value, n=40, lang="ja"):
  if kind == "perplexity":
    return {"type": kind, "lang": lang, "num_examples": n, "score": None,
            "metrics": {"token_perplexity": value, "bits_per_char": value / 10}}
  return {"type": kind, "lang": lang, "num_examples": n, "score": value, "metrics": {}}


def test_report_says_what_moved_and_what_did_not(tmp_path):
  config = ml_collections.ConfigDict()
  config.stages = ("eval",)
  config.eval = dict(kind="eval", models=dict(base="b", swallow="s"), ablations=dict(abl="a"))
  config.report = dict(
      title="T",
      comparisons=[dict(what="CPT", before="base", after="swallow",
                        expect=dict(ja_ppl="down", ja_qa="up", en_ppl="same"))],
      ablations=[dict(name="abl", reference="swallow", expect=dict(ja_qa="down"))])
  results = {
      "base": {"ja_ppl": _task("perplexity", 100.0), "en_ppl": _task("perplexity", 50, lang="en"),
               "ja_qa": _task("qa", 0.10), "ja_mc": _task("multiple_choice", 0.30),
               "ja_math": _task("math", 0.0)},
      "swallow": {"ja_ppl": _task("perplexity", 60.0), "en_ppl": _task("perplexity", 50.5, lang="en"),
                  "ja_qa": _task("qa", 0.12), "ja_mc": _task("multiple_choice", 0.80),
                  "ja_math": _task("math", 0.0)},
      "abl": {"ja_ppl": _task("perplexity", 61.0), "en_ppl": _task("perplexity", 50, lang="en"),
              "ja_qa": _task("qa", 0.11), "ja_mc": _task("multiple_choice", 0.75),
              "ja_math": _task("math", 0.05)},
  }
  os.makedirs(tmp_path / "eval")
  json.dump({"models": {m: {"path": m, "tasks": t} for m, t in results.items()}},
            open(tmp_path / "eval" / "results.json", "w"))
  report = recipe.write_report(config, str(tmp_path))
  assert set(report["models"]) == {"base", "swallow"}
  assert report["models"]["swallow"]["ja_ppl"] == 60.0
  assert report["models"]["base"]["ja_bpc"] == 10.0
  assert report["ablations"]["abl"]["delta"]["ja_mc"] == pytest.approx(-0.05)
  findings = {f["metric"]: f for f in report["comparisons"][0]["findings"]}
  assert findings["ja_ppl"]["direction"] == "down" and findings["ja_ppl"]["as_expected"]
  assert findings["en_ppl"]["direction"] == "same" and findings["en_ppl"]["as_expected"]
  assert findings["ja_mc"]["direction"] == "up"  # 0.30 -> 0.80 over 40 questions is not noise
  assert findings["ja_qa"]["direction"] == "same" and not findings["ja_qa"]["as_expected"]
  md = open(tmp_path / "report.md").read()
  assert "`ja_ppl` fell 40% (100.0 -> 60.0) -- as expected." in md
  assert "`ja_qa` did not move (0.100 -> 0.120, within the +/-0.14 noise band) -- expected to " \
         "rise; that effect is absent in this run." in md
  assert "1 of 3 expected effect(s) did not show up in this run." in md
  assert json.load(open(tmp_path / "report.json"))["title"] == "T"
  for png in ("radar.png", "perplexity.png"):
    assert os.path.getsize(tmp_path / png) > 1000


# --------------------------------------------------------------------------------------------
# Every config file loads, resolves and is a valid recipe or training config.


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_resolves(name):
  from swallow_jax import config_utils  # pylint: disable=g-import-not-at-top
  config = _cfg(name)
  if "stages" not in config:
    config_utils.validate(config)
    return
  recipe.check_references(config)
  for stage in recipe.stage_names(config):
    if config[stage].kind == "train":
      train_cfg = {k: v for k, v in config[stage].to_dict().items()
                   if k not in recipe._TRAIN_STAGE_KEYS}  # pylint: disable=protected-access
      config_utils.validate(train_cfg)


def test_configs_are_a_package_importing_each_other_as_modules():
  import importlib  # pylint: disable=g-import-not-at-top
  for name in CONFIGS:
    module = importlib.import_module(f"configs.{name[:-3]}")
    assert callable(module.get_config), name
    source = open(os.path.join(REPO, "configs", name)).read()
    assert "load_module" not in source and "._" not in source.replace("__", ""), name
  from configs import llama3_swallow_70b  # pylint: disable=g-import-not-at-top
  assert llama3_swallow_70b.get_config("64xh100").cpt.mesh.dcn_fsdp == 8


def test_real_recipe_configs_carry_the_recipe_numbers():
  c8 = _cfg("llama3_swallow_8b.py:8xh100,root=/r")
  assert c8.stages == ("cpt", "chat_vector", "sft", "eval")
  assert c8.cpt.optimizer.peak_lr == 2.5e-5 and c8.cpt.train.num_steps == 12500
  assert c8.chat_vector.scale == 0.5 and c8.chat_vector.target == recipe.stage("cpt")
  assert c8.chat_vector.base == "/r/hf/Meta-Llama-3-8B"
  assert c8.sft.init_from == recipe.stage("chat_vector") and c8.sft.data.kind == "sft"
  assert (c8.sft.optimizer.peak_lr, c8.sft.data.global_batch_size) == (2e-6, 256)
  assert c8.sft.train.neftune_alpha == 5.0
  c70 = _cfg("llama3_swallow_70b.py")
  assert c70.sft.optimizer.peak_lr == 1e-6 and c70.cpt.optimizer.peak_lr == 1e-5
  c31 = _cfg("llama3_1_swallow_8b.py")
  assert c31.stages == ("cpt", "sft", "eval") and c31.cpt.model.preset == "llama3_1_8b"


# --------------------------------------------------------------------------------------------
# The demo in miniature: every stage for real, an interrupted training stage resumed.


@pytest.fixture(scope="module")
def micro_demo(tmp_path_factory):
  """Runs configs/demo.py:micro, first stopping `base` half-way to check it resumes."""
  from swallow_jax import train  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("demo"))
  config = _cfg("demo.py:micro")
  recipe.run(config, workdir, only=["data", "tokenizer", "corpus"], report=False)
  half = recipe.resolve(config.base.to_dict(), config, workdir)
  half = {k: v for k, v in half.items() if k not in recipe._TRAIN_STAGE_KEYS}  # pylint: disable=protected-access
  from swallow_jax import tokenizer  # pylint: disable=g-import-not-at-top
  half["model"]["vocab_size"] = tokenizer.load_tokenizer(half["tokenizer"]).vocab_size
  half["train"]["num_steps"] = 2  # the same run, interrupted after its step-2 checkpoint
  train.run(ml_collections.ConfigDict(half), os.path.join(workdir, "base"))
  t0 = time.perf_counter()
  report = recipe.run(config, workdir)
  return workdir, config, report, time.perf_counter() - t0


def test_micro_demo_report(micro_demo):
  workdir, _, report, _ = micro_demo
  assert set(report["models"]) == {"base", "swallow_base", "swallow_base_cv", "swallow_instruct"}
  for metrics in report["models"].values():
    assert metrics["ja_ppl"] > 1 and metrics["en_ppl"] > 1
    assert metrics["ja_chat_ppl"] > 1 and 0 <= metrics["ja_chat_qa"] <= 1
  assert set(report["ablations"]) == {"swallow_base_no_parallel"}
  assert all(s["status"] == "done" for s in report["stages"].values())
  assert report["stages"]["cpt"]["steps"] == 3
  for name in ("report.md", "report.json", "loss_curves.png", "radar.png", "perplexity.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 100, name
  assert "## What moved" in open(os.path.join(workdir, "report.md")).read()
  # The chat vector stage really is swallow_base + 0.5 (instruct - base), tensor by tensor.
  import glob  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  def get(stage):
    d = os.path.join(workdir, stage, "model" if stage == "chat_vector" else "hf")
    return {k: v for f in glob.glob(os.path.join(d, "*.safetensors")) for k, v in load_file(f).items()}

  cv, cpt, base, inst = get("chat_vector"), get("cpt"), get("base"), get("instruct")
  assert cv and set(cv) == set(cpt)
  for name in cv:
    assert abs(cv[name] - (cpt[name] + 0.5 * (inst[name] - base[name]))).max() < 1e-5, name


def test_micro_demo_resumed_the_interrupted_stage(micro_demo):
  workdir = micro_demo[0]
  with open(os.path.join(workdir, "base", "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == sorted(set(steps)) and steps[-1] == 4  # continued from step 2, not restarted


def test_micro_demo_second_run_skips_everything(micro_demo):
  workdir, config, _, _ = micro_demo
  marks = {n: os.path.getmtime(os.path.join(workdir, n, "DONE.json")) for n in config.stages}
  report = recipe.run(config, workdir)
  assert {n: os.path.getmtime(os.path.join(workdir, n, "DONE.json")) for n in config.stages} == marks
  assert report["models"] == micro_demo[2]["models"]


def test_micro_demo_lora_variant(micro_demo, tmp_path):
  """configs/demo.py:micro,lora on a copy of the micro demo (its eval left out, so it reruns):
  LoRA SFT beside full SFT on the same data, and what each cost in the report."""
  import shutil  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  src, workdir = micro_demo[0], str(tmp_path / "demo")
  shutil.copytree(src, workdir, ignore=lambda d, names: ["eval"] if d == src else [])
  config = _cfg("demo.py:micro,lora")
  report = recipe.run(config, workdir)
  assert {"swallow_instruct", "swallow_instruct_lora"} <= set(report["models"])
  assert config.sft_lora.data.to_dict() == config.sft.data.to_dict()
  full, lora = report["stages"]["sft"], report["stages"]["sft_lora"]
  assert lora["status"] == "done" and lora["steps"] == full["steps"]
  m = load_file(os.path.join(workdir, "chat_vector", "model", "model.safetensors"))
  d = m["model.embed_tokens.weight"].shape[1]
  q, kv, f = (m[f"model.layers.0.{k}.weight"].shape[0]
              for k in ("self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj"))
  layers = len({n.split(".")[2] for n in m if n.startswith("model.layers.")})
  per_rank = 2 * (d + q) + 2 * (d + kv) + 3 * (d + f)  # A and B of q, o; k, v; gate, up, down
  assert lora["trainable_params"] == layers * config.sft_lora.model.lora.rank * per_rank
  assert full["trainable_params"] == sum(x.size for x in m.values())
  assert lora["checkpoint_bytes"] < full["checkpoint_bytes"] / 3
  # The base stayed frozen: only the adapted projections differ from the chat-vector model.
  out = load_file(os.path.join(workdir, "sft_lora", "hf", "model.safetensors"))
  for name, x in m.items():
    assert ("_proj" in name) != (out[name] == x).all(), name
  md = open(os.path.join(workdir, "report.md")).read()
  assert "LoRA vs full SFT: `swallow_instruct` -> `swallow_instruct_lora`" in md
  assert "trained params | checkpoint MB" in md


@pytest.mark.slow
def test_full_demo(tmp_path):
  """`make demo`: the whole configs/demo.py. Budget: 10 minutes on 2 free cores."""
  t0 = time.perf_counter()
  report = recipe.run(_cfg("demo.py"), str(tmp_path))
  seconds = time.perf_counter() - t0
  print(f"full demo: {seconds:.0f} s")
  for metrics in report["models"].values():
    assert {"ja_ppl", "en_ppl"} <= set(metrics)
  assert report["models"]["swallow_base"]["ja_ppl"] < report["models"]["base"]["ja_ppl"]
