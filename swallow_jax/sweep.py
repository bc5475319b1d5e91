"""Lists or launches the runs of a config file's `sweep()`.

    python -m swallow_jax.sweep --config=configs/ablation.py --dry-run
    python -m swallow_jax.sweep --config=configs/ablation.py --workdir_root=runs/ablation

A config file (big_vision style) defines `get_config(arg=None)` and, for a sweep, `sweep()` that
yields one dict per run:

    {"name": "no_cosmopedia",            # required; the run's workdir is WORKDIR_ROOT/name
     "arg": "drop=cosmopedia",           # optional; appended to the --config argument:
                                         #   --config=FILE:8xh100 -> FILE:8xh100,drop=cosmopedia
     "train.num_steps": 100}             # optional dotted overrides, passed as --config.KEY=VALUE

A config with `stages` is a recipe (`python -m swallow_jax.recipe`), any other a training run
(`python -m swallow_jax.train`). Runs go one after another on this machine; to fan them out over a
cluster, hand each printed command to a launcher in launch/. Configs: docs/recipe.md.
"""

from collections.abc import Iterator, Mapping
import importlib.util
import os
import shlex
import subprocess
import sys
from typing import Any

from absl import flags
import ml_collections

from swallow_jax import cli


def load_module(path: str) -> Any:
  """Imports the config file a --config=FILE names, by path (as ml_collections does)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  name = "_swallow_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def split_spec(spec: str) -> tuple[str, str | None]:
  """'configs/x.py:arg' -> ('configs/x.py', 'arg'); 'configs/x.py' -> ('configs/x.py', None)."""
  path, sep, arg = spec.partition(":")
  return path, (arg if sep else None)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file given as FILE or FILE:arg."""
  path, arg = split_spec(spec)
  module = load_module(path)
  return module.get_config(arg) if arg is not None else module.get_config()


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """big_vision-style 'k1=v1,k2=v2' config argument, typed like the defaults ('k' alone sets a
  boolean k to true)."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    default = defaults.get(key)
    if key not in defaults or not (sep or isinstance(default, bool)):  # 'micro': micro=true
      raise ValueError(f"config argument {item!r}: expected one of {sorted(defaults)} as key=value")
    if isinstance(default, bool):
      value = not sep or value.lower() in ("1", "true", "yes")
    elif default is not None:
      value = type(default)(value)
    out[key] = value
  return out


def runs(spec: str) -> list[dict[str, Any]]:
  """The validated runs of a config file's sweep()."""
  path, _ = split_spec(spec)
  module = load_module(path)
  if not hasattr(module, "sweep"):
    raise ValueError(f"{path} has no sweep() function")
  items = [dict(r) for r in module.sweep()]
  names = [r.get("name") for r in items]
  if not items or not all(isinstance(n, str) and n and "/" not in n for n in names):
    raise ValueError(f"{path}: sweep() must yield dicts with a non-empty 'name' (got {names})")
  if len(set(names)) != len(names):
    raise ValueError(f"{path}: duplicate run names {names}")
  return items


def run_arg(spec: str, run: Mapping[str, Any]) -> str | None:
  """The config argument of one run: the --config's own argument, then the run's."""
  _, base = split_spec(spec)
  parts = [a for a in (base, run.get("arg")) if a]
  return ",".join(parts) if parts else None


def command(spec: str, run: Mapping[str, Any], workdir_root: str) -> list[str]:
  """The exact command line of one run."""
  path, _ = split_spec(spec)
  arg = run_arg(spec, run)
  config_spec = path if arg is None else f"{path}:{arg}"
  entry = "swallow_jax.recipe" if "stages" in load_config(config_spec) else "swallow_jax.train"
  cmd = [sys.executable, "-m", entry, f"--config={config_spec}",
         f"--workdir={os.path.join(workdir_root, run['name'])}"]
  cmd += [f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}"
          for k, v in run.items() if k not in ("name", "arg")]
  return cmd


def expand(spec: str, workdir_root: str, only: list[str] = ()) -> Iterator[tuple[str, list[str]]]:
  """(run name, command) for every run, or for the named ones."""
  items = runs(spec)
  if unknown := set(only) - {r["name"] for r in items}:
    raise ValueError(f"--only names {sorted(unknown)} are not runs of {spec}")
  for run in items:
    if not only or run["name"] in only:
      yield run["name"], command(spec, run, workdir_root)


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  for name, cmd in list(expand(f.config, f.workdir_root, f.only)):  # every error before any run
    print(f"# {name}\n{shlex.join(cmd)}", flush=True)
    if not f.dry_run and (rc := subprocess.call(cmd)):
      raise cli.Failure(f"run {name} failed with exit code {rc}")


if __name__ == "__main__":
  # Flags only when run as a program: config files import this module for parse_arg.
  flags.DEFINE_string("config", None, "Config file with a sweep() function (FILE or FILE:arg).",
                      required=True)
  flags.DEFINE_bool("dry_run", False, "Print the commands and launch nothing.")
  flags.DEFINE_string("workdir_root", "runs/sweep", "Each run writes to WORKDIR_ROOT/<run name>.")
  flags.DEFINE_list("only", [], "Run only these run names.")
  cli.run(main, prog="sweep")
