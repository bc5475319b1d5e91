"""The command-line convention of every `python -m swallow_jax.*` program.

`run` wraps `absl.app.run`:
  * `--help`, `-h`, `--helpshort`, `-?` print the module docstring and its flags, `--helpfull`
    every flag; all exit 0.
  * Flag names take hyphens or underscores (`--dry-run` = `--dry_run`); `--config...` arguments
    are left as typed (their paths and keys are the user's own spelling).
  * Bad input is one line `PROG: error: ...` on stderr: exit 2 for usage errors (unknown flag, bad
    value, missing required flag, bad `--config` file or `--config.a.b=v` override, `UsageError`),
    exit 1 for failures (`Failure`, `ValueError`, `OSError`; anything else too, named by its type).
    `--verbose` shows the traceback, and log lines keep absl's full prefix.
  * A reader that stops early (`--help | head -1`) ends the command quietly, with status 141 (a
    shell's status for a SIGPIPE death, what `cat` or `git` give there), not a traceback.
  * Log lines are `HH:MM:SS message` (no `I1201 20:04:52.377593 1398... loop.py:202]` prefix).
  * `--verbose` is defined by `run` (unless the module has its own); Ctrl-C is one line, exit 130.
  * Long jobs show `progress(...)`: tqdm's bar on a terminal, plain timestamped lines elsewhere.

In a `__main__` (flags as usual; `define_flags` when they live in a function):

    from swallow_jax import cli

    _OUT = flags.DEFINE_string("output", None, "...", required=True)
    _OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
    cli.alias("out", "output")             # an old flag name: still accepted, with one notice

    def main(argv: list[str]) -> None:     # absl's main; argv[1:] only with positional=True
      cli.check_output(_OUT.value, _OVERWRITE.value)  # before any work
      ...  # raise cli.Failure / ValueError / OSError (exit 1), cli.UsageError (exit 2)
      cli.print_json(summary)            # what a --json flag prints: one line of JSON

    if __name__ == "__main__":
      cli.run(main, prog="convert")
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
import functools
import json
import logging
import os
import re
import runpy
import sys
import time
import traceback
from typing import Any, NoReturn

from absl import app, flags
from absl import logging as absl_logging

FLAGS = flags.FLAGS
HELP_ARGS = ("--help", "-h", "--helpshort", "-?", "--helpfull")
DTYPES = ("float32", "bfloat16", "float16")  # the one `--dtype` enum of every command
_ALIASES: dict[str, str] = {}
_SIGPIPE_STATUS = 128 + 13  # a shell's exit status of a process that SIGPIPE ended
PROGRESS_EVERY_S = 30.0  # off a terminal, progress lines come at least this often (and each 10%)


class Failure(Exception):
  """The work failed for a reason the user can act on: one line on stderr, exit status 1."""


class UsageError(Exception):
  """The command line is wrong: one line on stderr, exit status 2."""


def normalize_argv(argv: Sequence[str]) -> list[str]:
  """Accepts --dry-run, --text-field, ... as well as absl's --dry_run, --text_field; leaves alone
  `--config...` arguments (the user's own spelling) and everything after a bare `--`."""
  out = list(argv)
  for i, arg in enumerate(out[:out.index("--") if "--" in out else None]):
    if arg.startswith("--") and len(arg) > 2 and not arg.startswith("--config"):
      name, eq, value = arg[2:].partition("=")
      out[i] = "--" + name.replace("-", "_") + eq + value
  return out


def alias(old: str, new: str) -> None:
  """Accepts `--old` (and `--noold` for a boolean) as a deprecated spelling of `--new`.

  `run` rewrites it before parsing and prints one notice on stderr.
  """
  _ALIASES[old.replace("-", "_")] = new


def _apply_aliases(argv: list[str], prog: str) -> list[str]:
  """`--old=v` -> `--new=v` (and `--noold` -> `--nonew`), one notice per alias used."""
  out, noticed = [], set()
  for i, arg in enumerate(argv):
    if arg == "--":
      return out + argv[i:]
    name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
    negated = name.startswith("no") and name[2:] in _ALIASES and name not in _ALIASES
    old = name[2:] if negated else name
    if old in _ALIASES:
      new = _ALIASES[old]
      if old not in noticed:
        print(f"{prog}: warning: --{old} is deprecated; use --{new}", file=sys.stderr)
        noticed.add(old)
      arg = f"--{'no' if negated else ''}{new}{eq}{value}"
    out.append(arg)
  return out


def check_output(path: str, overwrite: bool) -> None:
  """Refuses an existing non-empty output file or directory unless `overwrite` (call it first).

  Raises FileExistsError (an OSError: exit 1) naming the path and --overwrite.
  """
  if not os.path.exists(path) or overwrite:
    return
  empty = not os.listdir(path) if os.path.isdir(path) else os.path.getsize(path) == 0
  if not empty:
    raise FileExistsError(f"{path} already exists and is not empty (pass --overwrite to "
                          "replace it)")


MODEL_HELP = ("HF dir, Hub id in the local HF cache, `convert --to_orbax` dir, training workdir "
              "or checkpoint step (see model.io.resolve).")


def define_decoding_flags(*, temperature: float, top_p: float, max_new_tokens: int) -> None:
  """--model, --tokenizer, --dtype and the sampling flags of the commands that generate text
  (defaults differ: generate is greedy, synth samples). Call it from the command's module: the
  flags are defined as that module's own, so its --help lists them."""
  module = _caller_module()
  for define, name, value, help_text in (
      (flags.DEFINE_string, "model", None, MODEL_HELP),
      (flags.DEFINE_string, "tokenizer", None, "Tokenizer file or dir; defaults to --model's own."),
      (flags.DEFINE_integer, "max_new_tokens", max_new_tokens, "Tokens to generate per reply."),
      (flags.DEFINE_float, "temperature", temperature, "Sampling temperature (0 = greedy)."),
      (flags.DEFINE_integer, "top_k", 0, "Top-k sampling (0 = off)."),
      (flags.DEFINE_float, "top_p", top_p, "Nucleus sampling mass (1 = off)."),
      (flags.DEFINE_integer, "seed", 0, "Sampling seed.")):
    define(name, value, help_text, module_name=module)
  flags.DEFINE_enum("dtype", "float32", DTYPES, "Parameter and compute dtype.", module_name=module)


def define_multihost_flags(workdir_help: str) -> None:
  """--workdir (required) and the flags of `parallel.initialize`, for the commands that run on
  every process of a multi-host job (train, recipe); as `define_decoding_flags`, call it from the
  command's module."""
  module = _caller_module()
  flags.DEFINE_string("workdir", None, workdir_help, required=True, module_name=module)
  flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"], "Multi-host: call "
                    "jax.distributed.initialize() (auto: when a coordinator or a multi-process "
                    "launcher is detected).", module_name=module)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host without "
                      "auto-detection).", module_name=module)
  for name, help_text in (("num_processes", "Number of processes (multi-host)."),
                          ("process_id", "This process's index (multi-host).")):
    flags.DEFINE_integer(name, None, help_text, module_name=module)


def _caller_module() -> str:
  """absl's name for the module that called our caller (`__main__` is named by its path)."""
  caller = sys._getframe(2).f_globals["__name__"]  # pylint: disable=protected-access
  return sys.argv[0] if caller == "__main__" else caller


def print_json(obj: Any) -> None:
  """Prints `obj` as one line of JSON on stdout (what `--json` flags print), non-ASCII as is."""
  print(json.dumps(obj, ensure_ascii=False), flush=True)


def progress(iterable: Iterable[Any] | None = None, *, desc: str = "", total: float | None = None,
             unit: str = "it", enabled: bool = True, every_s: float = PROGRESS_EVERY_S,
             **tqdm_kwargs: Any) -> Any:
  """The progress bar of every long job: a tqdm object (iterate it, or `update` it) on stderr.

  On a terminal it is tqdm's bar, redrawn in place. Anywhere else (a log file, CI, a pipe, a
  notebook's captured stderr) it prints plain lines instead of one line redrawn with carriage
  returns: `HH:MM:SS desc:  40% 4/10 [00:12<00:18, 3.02s/task, postfix]` (without a known
  total: `HH:MM:SS desc: 1200 docs [00:12, 98.50 docs/s, postfix]`) at each 10% of a known
  total, at least every `every_s` seconds while it moves, and once more when it is closed after
  the last line (not when an exception closes it: then the error is the last line).
  `enabled=False`: a silent pass-through. `tqdm_kwargs` go to tqdm (`unit_scale`, `leave`, ...).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top  (cli needs only absl otherwise)
  if not enabled:
    return tqdm(iterable, total=total, disable=True)
  if sys.stderr.isatty():
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, **tqdm_kwargs)
  tqdm_kwargs.pop("mininterval", None)
  return _line_bar()(iterable, desc=desc, total=total, unit=unit, file=sys.stderr,
                     every_s=every_s, **tqdm_kwargs)


@functools.cache
def _line_bar() -> type:
  """tqdm's subclass that prints a timestamped line instead of redrawing (made on first use)."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  class LineBar(tqdm):
    """`progress` off a terminal: `display` prints a new line when one is due."""

    def __init__(self, *args: Any, every_s: float, **kwargs: Any):
      # (time, n, tenth of the total) of the last line; the start itself is no news.
      self._every_s, self._shown = every_s, (time.monotonic(), 0, 0)
      # ncols=0: tqdm's text without the bar; mininterval: how often tqdm calls `display`.
      super().__init__(*args, ncols=0, mininterval=min(0.1, every_s), **kwargs)

    def _tenth(self) -> int | None:
      return int(10 * self.n / self.total) if self.total else None

    def _print_line(self) -> None:
      self.fp.write(f"{time.strftime('%H:%M:%S')} {self}\n")
      self.fp.flush()
      self._shown = (time.monotonic(), self.n, self._tenth())

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
      del pos  # Lines are not drawn at positions.
      if msg == "":  # tqdm clearing the line it drew: a log has none to clear.
        return False
      moved = self.n != self._shown[1]
      if moved and (time.monotonic() - self._shown[0] >= self._every_s
                    or (self.total and self._tenth() != self._shown[2])):
        self._print_line()
      return True

    def close(self) -> None:
      if not self.disable and self.n != self._shown[1]:
        self._print_line()
      self.leave = False  # tqdm's close would clear or end a redrawn line: there is none.
      super().close()

    def __exit__(self, *exc_info: Any) -> None:
      if exc_info[0] is not None:
        self._shown = (0.0, self.n, None)  # No final count under the error's line.
      super().__exit__(*exc_info)

  return LineBar


def _quiet_libraries(record: logging.LogRecord) -> bool:
  """A log filter that drops the INFO chatter of Orbax and JAX's backend setup, so a command's own
  lines stay readable (`--verbose` keeps it)."""
  noisy = "/orbax/" in record.pathname or record.pathname.endswith("xla_bridge.py")
  return record.levelno >= logging.WARNING or not noisy


def _one_line(error: BaseException) -> str:
  """The exception's message on one line (KeyError's repr quotes dropped)."""
  text = error.args[0] if isinstance(error, KeyError) and error.args else error
  return " ".join(str(text).split()) or type(error).__name__


def _exit(prog: str, message: str, status: int) -> NoReturn:
  print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _config_flags() -> Iterator[flags.Flag]:
  """The ml_collections config flags that were given a value."""
  if "ml_collections" not in sys.modules:  # No config flag can exist (the GPU image lacks it).
    return
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  for name in FLAGS:
    flag = FLAGS[name]
    if config_flags.is_config_flag(flag) and flag.present:
      yield flag


def _override_error(argv: Sequence[str], error: Exception) -> str:
  """'bad --config override --config.a.c=3: no field 'c'' from config_flags' bare KeyError."""
  reason = _one_line(error).strip("\"'")
  if isinstance(error, (AttributeError, KeyError)):
    overrides = [a for a in argv if a.startswith("--config") and "." in a.partition("=")[0]]
    named = [a for a in overrides if reason in a.partition("=")[0].split(".")]
    return f"bad --config override {' '.join(named or overrides)}: no field {reason!r}"
  return f"bad --config override: {reason}"


def _innermost(error: BaseException) -> BaseException:
  """The first exception of a `raise ... from` chain: the reason, not its wrappers."""
  while error.__cause__ is not None:
    error = error.__cause__
  return error


def _parser(prog: str, positional: bool) -> Callable[[list[str]], list[str]]:
  """absl's flags_parser: help on stdout (exit 0), one-line usage errors (exit 2)."""

  def parse(argv: list[str]) -> list[str]:
    flag_args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if any(a in HELP_ARGS for a in flag_args):
      short = "--helpfull" not in flag_args
      app.usage(shorthelp=short, writeto_stdout=True)
      if short:
        print("Also: --verbose (tracebacks, absl's log prefix); --helpfull (every flag).")
      sys.exit(0)
    try:
      rest = FLAGS(argv)
    except flags.Error as e:
      if missing := re.findall(r"Flag --(\w+) must have a value other than None", str(e)):
        names = " and ".join(f"--{name}" for name in missing)
        _exit(prog, f"{names} {'is' if len(missing) == 1 else 'are'} required (see --help)", 2)
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      # A config file that raised: absl's "flag --config=...: Error whilst parsing" + traceback;
      # its first and last lines are the file and the reason.
      message = (lines[0] if len(lines) < 2
                 else f"{lines[0].split(': Error whilst')[0]}: {lines[-1]}")
      _exit(prog, f"{message} (see --help)", 2)
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # config_flags overrides.
      _exit(prog, _override_error(argv, e), 2)
    for flag in _config_flags():
      try:
        flag.value.keys  # pylint: disable=pointless-statement
      except OSError as e:  # config_flags defers a missing or broken file's error to first use.
        path = flag.config_filename.split(":")[0]
        reason = "no such file" if not os.path.exists(path) else _one_line(_innermost(e))
        _exit(prog, f"--{flag.name}={flag.config_filename}: {reason}", 2)
    if len(rest) > 1 and not positional:
      _exit(prog, f"unexpected arguments: {' '.join(rest[1:])} (see --help)", 2)
    return rest

  return parse


def run(main: Callable[[list[str]], Any], *, prog: str,
        define_flags: Callable[[], None] | None = None, positional: bool = False) -> NoReturn:
  """Runs absl's `main(argv)` under the convention of this module's docstring; never returns.

  Args:
    main: absl-style main; its return value is the exit status (None = 0).
    prog: the program's name in messages, e.g. "convert".
    define_flags: called once before parsing, for modules that define flags in a function.
    positional: whether `main` takes positional arguments (else they are a usage error).
  """
  if define_flags is not None:
    define_flags()
  if "verbose" not in FLAGS:
    flags.DEFINE_bool("verbose", False, "Show tracebacks and absl's full log prefix.")
  argv = _apply_aliases(normalize_argv(sys.argv), prog)

  def guarded_main(args: list[str]) -> Any:
    verbose = FLAGS.verbose
    if not verbose:
      handler = absl_logging.get_absl_handler()
      handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
      handler.addFilter(_quiet_libraries)
    try:
      return main(args)
    except BrokenPipeError:
      raise  # The reader is gone: not an error of the work (handled below).
    except (SystemExit, KeyboardInterrupt) as e:
      if isinstance(e, SystemExit) or verbose:
        raise
      _exit(prog, "interrupted", 130)
    except Exception as e:  # pylint: disable=broad-except
      if verbose:
        traceback.print_exc()
      if isinstance(e, (UsageError, app.UsageError)):
        _exit(prog, f"{_one_line(e)} (see --help)", 2)
      if isinstance(e, (Failure, ValueError, OSError)):
        _exit(prog, _one_line(e), 1)
      hint = "" if verbose else " (--verbose shows the traceback)"
      _exit(prog, f"{type(e).__name__}: {_one_line(e)}{hint}", 1)

  try:
    try:
      app.run(guarded_main, argv=argv, flags_parser=_parser(prog, positional))
    finally:
      sys.stdout.flush()  # A closed pipe shows here when the last output was still buffered.
  except BrokenPipeError:
    # Python's documented recipe: what is left in stdout's buffer goes to devnull, so that the
    # interpreter's own flush at exit cannot fail again.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(_SIGPIPE_STATUS)
  sys.exit(0)  # Not reached: app.run exits.


def _entry(module: str) -> Callable[[], None]:
  """A console-script entry point that runs `python -m swallow_jax.<module>`."""

  def entry() -> None:
    runpy.run_module(f"swallow_jax.{module}", run_name="__main__", alter_sys=True)

  entry.__doc__ = f"Runs `python -m swallow_jax.{module}` (the `swallow-...` console script)."
  return entry


# The console scripts of pyproject.toml (`swallow-train` -> entry_train, ...).
entry_train = _entry("train")
entry_recipe = _entry("recipe")
entry_preprocess = _entry("preprocess")
entry_generate = _entry("generate")
entry_evaluate = _entry("evaluate")
entry_convert = _entry("convert")
entry_chat_vector = _entry("chat_vector")
entry_plan = _entry("plan")
entry_vocab = _entry("vocab")
entry_synth = _entry("synth")
entry_sweep = _entry("sweep")
