"""Shared command-line plumbing: swallow_jax.cli, run on throwaway absl programs."""

import importlib.metadata
import os
import subprocess
import sys
import time

import pytest

from swallow_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROG = '''\
"""A throwaway program.

    prog --model_name=NAME
"""
import logging
from absl import flags
from ml_collections import config_flags
from swallow_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file.")
_NAME = flags.DEFINE_string("model_name", None, "A name.", required=True)
_STEPS = flags.DEFINE_integer("num_steps", 1, "Steps.")
_DRY = flags.DEFINE_bool("dry_run", False, "Dry run.")
_MODE = flags.DEFINE_string("mode", "ok", "What main does.")
cli.alias("from_hf", "model_name")
cli.alias("dry", "dry_run")


def main(argv):
  logging.info("hello %s", _NAME.value)
  if _CONFIG.value is not None:
    print("config", _CONFIG.value.a.b)
  print("name", _NAME.value, "steps", _STEPS.value, "dry", _DRY.value, "args", argv[1:])
  errors = {"failure": cli.Failure("it broke\\non two lines"), "value": ValueError("x.json:3: bad"),
            "os": FileNotFoundError(2, "No such file or directory", "/no/such"),
            "usage": cli.UsageError("--a needs --b"), "bug": TypeError("oops"),
            "exit": SystemExit(3)}
  if _MODE.value in errors:
    raise errors[_MODE.value]


if __name__ == "__main__":
  cli.run(main, prog="prog", positional=bool(__import__("os").environ.get("POSITIONAL")))
'''

CONFIG = '''\
import ml_collections
def get_config(arg=None):
  if arg == "raise":
    raise ValueError("arg must be one of a, b")
  c = ml_collections.ConfigDict()
  c.a = dict(b=int(arg or 1))
  return c
'''


@pytest.fixture(name="prog")
def _prog(tmp_path):
  """Runs the throwaway program in tmp_path: (returncode, stdout, stderr)."""
  (tmp_path / "prog.py").write_text(PROG)
  (tmp_path / "cfg.py").write_text(CONFIG)

  def run(*args, env=None):
    out = subprocess.run([sys.executable, "prog.py", *args], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, **(env or {})), timeout=120)
    return out.returncode, out.stdout, out.stderr

  return run


def test_normalize_argv_accepts_hyphens_but_leaves_config_arguments_alone():
  argv = ["prog", "--dry-run", "--text-field=body", "--json", "--",
          "--config=configs/my-exp.py:a-b", "--config.train.num-steps=3", "plain-arg"]
  assert cli.normalize_argv(argv) == [
      "prog", "--dry_run", "--text_field=body", "--json", "--",
      "--config=configs/my-exp.py:a-b", "--config.train.num-steps=3", "plain-arg"]
  assert cli.normalize_argv(["p", "--config-x=a-b", "--", "--not-a-flag"]) == [
      "p", "--config-x=a-b", "--", "--not-a-flag"]


@pytest.mark.parametrize("arg", ["--help", "-h", "--helpshort", "--helpfull"])
def test_help_exits_0_on_stdout(prog, arg):
  rc, out, err = prog(arg)
  assert rc == 0, err
  assert out.startswith("A throwaway program.") and "--model_name" in out and "--num_steps" in out
  assert ("--helpfull" in out or "--verbosity" in out) and not err
  assert ("--verbosity" in out) == (arg == "--helpfull")  # absl's own flags only in the full help


def test_hyphens_underscores_and_aliases(prog):
  rc, out, err = prog("--model-name=x", "--num-steps=3", "--dry-run")
  assert rc == 0, err
  assert "name x steps 3 dry True args []" in out
  rc, out, err = prog("--from_hf=y", "--nodry", "--from-hf=z")
  assert rc == 0, err
  assert "name z steps 1 dry False" in out
  assert err.count("prog: warning: --from_hf is deprecated; use --model_name") == 1
  assert err.count("prog: warning: --dry is deprecated; use --dry_run") == 1


def test_log_lines_have_no_glog_prefix_unless_verbose(prog):
  rc, _, err = prog("--model_name=x")
  assert rc == 0
  line = [x for x in err.splitlines() if x.endswith("hello x")][0]
  assert len(line.split()[0]) == 8 and line.split()[0].count(":") == 2  # HH:MM:SS
  assert "prog.py:" not in err
  _, _, err = prog("--model_name=x", "--verbose")
  assert "prog.py:" in err and "] hello x" in err


@pytest.mark.parametrize("args, message", [
    (["--bogus=1"], "prog: error: Unknown command line flag 'bogus'"),
    (["--model_name=x", "--num_steps=abc"], "prog: error: flag --num_steps=abc: invalid literal"),
    ([], "prog: error: --model_name is required (see --help)"),
    (["--model_name=x", "extra"], "prog: error: unexpected arguments: extra (see --help)"),
    (["--model_name=x", "--mode=usage"], "prog: error: --a needs --b (see --help)"),
    (["--model_name=x", "--config=nope.py:3"], "prog: error: --config=nope.py:3: no such file"),
    (["--model_name=x", "--config=cfg.py:raise"],
     "prog: error: flag --config=cfg.py:raise: ValueError: arg must be one of a, b"),
    (["--model_name=x", "--config=cfg.py", "--config.a.c=3"],
     "prog: error: bad --config override --config.a.c=3: no field 'c'"),
    (["--model_name=x", "--config=cfg.py", "--config.a.b=zz"],
     "prog: error: flag --config.a.b=zz: invalid literal"),
])
def test_usage_errors_are_one_line_exit_2(prog, args, message):
  rc, out, err = prog(*args)
  assert rc == 2, (out, err)
  lines = [line for line in err.splitlines() if not line.endswith("hello x")]  # main's log line
  assert len(lines) == 1 and lines[0].startswith(message), err
  assert "Traceback" not in err and "flags:" not in out + err  # no help dump


@pytest.mark.parametrize("mode, message", [
    ("failure", "prog: error: it broke on two lines"),
    ("value", "prog: error: x.json:3: bad"),
    ("os", "prog: error: [Errno 2] No such file or directory: '/no/such'"),
    ("bug", "prog: error: TypeError: oops (--verbose shows the traceback)"),
])
def test_failures_are_one_line_exit_1(prog, mode, message):
  rc, _, err = prog("--model_name=x", f"--mode={mode}")
  assert rc == 1
  errors = [line for line in err.splitlines() if "error" in line.lower()]
  assert errors == [message], err  # printed once
  assert "Traceback" not in err


def test_verbose_shows_the_traceback(prog):
  rc, _, err = prog("--model_name=x", "--mode=bug", "--verbose")
  assert rc == 1
  assert "Traceback (most recent call last)" in err and err.rstrip().endswith("prog: error: TypeError: oops")


def test_config_flag_values_and_overrides_and_system_exit(prog):
  rc, out, err = prog("--model_name=x", "--config=cfg.py:5", "--config.a.b=7")
  assert rc == 0, err
  assert "config 7" in out
  assert prog("--model_name=x", "--mode=exit")[0] == 3
  rc, out, err = prog("--model_name=x", "a", "b", env={"POSITIONAL": "1"})
  assert rc == 0, err
  assert "args ['a', 'b']" in out


def run_into_closed_pipe(cmd, cwd):
  """Runs cmd with stdout a pipe whose reader is already gone: (returncode, stderr)."""
  reader, writer = os.pipe()
  os.close(reader)
  try:
    out = subprocess.run(cmd, stdout=writer, stderr=subprocess.PIPE, text=True, cwd=cwd,
                         timeout=120, check=False)
  finally:
    os.close(writer)
  return out.returncode, out.stderr


@pytest.mark.parametrize("args", [["--help"], ["--helpfull"], ["--model_name=x"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(prog, tmp_path, args):
  """`prog --help | head -1`: help text or main's output into a closed pipe is no traceback."""
  prog("--help")  # writes prog.py
  rc, err = run_into_closed_pipe([sys.executable, "prog.py", *args], tmp_path)
  # absl's own help writer already ignores a closed pipe (then there is nothing left to fail).
  assert rc == 141 or (rc == 0 and args == ["--helpfull"]), err
  assert "Traceback" not in err and "Broken pipe" not in err and "error" not in err


def test_a_real_command_help_into_a_closed_pipe():
  """The issue's case: `python -m swallow_jax.evaluate.prepare --help | head -1`."""
  rc, err = run_into_closed_pipe([sys.executable, "-m", "swallow_jax.evaluate.prepare", "--help"],
                                 REPO)
  assert (rc, err) == (141, "")


@pytest.mark.parametrize("module", ["swallow_jax.generate", "swallow_jax.synth"])
def test_shared_decoding_flags_are_listed_in_the_command_help(module):
  """cli.define_decoding_flags defines them as the command's own, so --help shows them."""
  out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=120, check=True).stdout
  for flag in ("--model", "--tokenizer", "--dtype: <float32|bfloat16|float16>", "--temperature",
               "--top_p", "--top_k", "--seed", "--max_new_tokens"):
    assert flag in out, (module, flag)


@pytest.mark.parametrize("module", ["swallow_jax.train", "swallow_jax.recipe"])
def test_shared_multihost_flags_are_listed_and_workdir_is_required(module):
  """cli.define_multihost_flags: the command's own flags; --config is still named first."""
  def run(*args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
  out = run("--help").stdout
  for flag in ("--workdir", "--distributed: <auto|on|off>", "--coordinator_address",
               "--num_processes", "--process_id"):
    assert flag in out, (module, flag)
  err = run().stderr.strip()
  prog = module.removeprefix("swallow_jax.")
  assert err == f"{prog}: error: --config and --workdir are required (see --help)"

def _progress_lines(err):
  """'HH:MM:SS rest' lines -> [rest up to its ' [' stats], checking the timestamps."""
  assert "\r" not in err
  out = []
  for line in err.splitlines():
    stamp, rest = line.split(" ", 1)
    assert len(stamp) == 8 and stamp.count(":") == 2, line
    out.append(rest.split(" [")[0])
  return out


def test_progress_off_a_terminal_prints_a_line_each_tenth_and_at_the_end(capsys):
  for _ in cli.progress(range(10), desc="eval", unit="task", every_s=3600):
    time.sleep(0.12)  # past tqdm's 0.1 s between looks at the bar
  assert _progress_lines(capsys.readouterr().err) == [
      f"eval: {10 * n:3d}% {n}/10" for n in range(1, 11)]


def test_progress_without_a_total_prints_every_every_s_seconds(capsys):
  with cli.progress(desc="preprocess", unit=" docs", every_s=0.3) as bar:
    for _ in range(8):
      time.sleep(0.12)
      bar.update(5)
  lines = _progress_lines(capsys.readouterr().err)
  assert 2 <= len(lines) <= 4, lines  # ~1 s of work: a line each 0.3 s, then the final count
  assert not lines[0].startswith("preprocess: 5 docs")  # not at once: only after 0.3 s
  assert lines[-1] == "preprocess: 40 docs"
  assert [int(x.split()[1]) for x in lines] == sorted({int(x.split()[1]) for x in lines})


def test_progress_is_silent_when_disabled_at_the_start_and_under_an_error(capsys):
  assert list(cli.progress(range(3), desc="x", enabled=False)) == [0, 1, 2]
  with pytest.raises(ValueError):
    with cli.progress(desc="job", total=4, every_s=3600) as bar:
      bar.update(2)
      raise ValueError("bad input")  # the error's line is the last one, not a count
  with cli.progress(desc="job", total=4, every_s=3600):
    pass  # nothing moved: nothing to say
  assert capsys.readouterr().err == ""


def test_check_output(tmp_path):
  cli.check_output(str(tmp_path / "new"), overwrite=False)
  (tmp_path / "empty").mkdir()
  cli.check_output(str(tmp_path / "empty"), overwrite=False)
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  with pytest.raises(FileExistsError, match=r"full already exists and is not empty \(pass --overwrite"):
    cli.check_output(str(tmp_path / "full"), overwrite=False)
  cli.check_output(str(tmp_path / "full"), overwrite=True)
  (tmp_path / "file.json").write_text("{}")
  with pytest.raises(FileExistsError):
    cli.check_output(str(tmp_path / "file.json"), overwrite=False)


def test_print_json(capsys):
  cli.print_json({"名前": 1, "b": [1, 2]})
  assert capsys.readouterr().out == '{"名前": 1, "b": [1, 2]}\n'


def test_console_scripts_resolve_to_cli_entries():
  scripts = {e.name: e for e in importlib.metadata.entry_points(group="console_scripts")
             if e.name.startswith("swallow-")}
  modules = ("train", "recipe", "preprocess", "generate", "evaluate", "convert", "chat_vector",
             "plan", "vocab", "synth", "sweep")
  assert sorted(scripts) == sorted("swallow-" + m.replace("_", "-") for m in modules)
  for m in modules:
    entry = scripts["swallow-" + m.replace("_", "-")]
    assert entry.value == f"swallow_jax.cli:entry_{m}"
    assert callable(entry.load())


def test_console_script_runs_the_module(tmp_path):
  """`swallow-sweep` is `python -m swallow_jax.sweep`: same help, same exit status."""
  script = os.path.join(os.path.dirname(sys.executable), "swallow-sweep")
  if not os.path.exists(script):
    pytest.skip("console scripts not installed (pip install --no-deps -e .)")
  out = subprocess.run([script, "--help"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
  ref = subprocess.run([sys.executable, "-m", "swallow_jax.sweep", "--help"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
  assert (out.returncode, out.stdout.splitlines()[:3]) == (ref.returncode,
                                                           ref.stdout.splitlines()[:3])
  assert "sweep" in out.stdout
