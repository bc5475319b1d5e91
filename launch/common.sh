# Sourced (not run) by the launch/*.sh scripts: the repository root, the interpreter default,
# and the helpers they all use.
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Prints a command so that pasting it into bash runs exactly it.
print_cmd() {
  local a out=()
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("${a@Q}"); fi
  done
  echo "${out[*]}"
}

# --help: prints the comment block at the top of the running script.
print_help() { awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0"; }

# Prints "SCRIPT: message" on stderr and exits with status 2 (bad usage).
die() { echo "${0##*/}: $*" >&2; exit 2; }

# The default interpreter: the repository's .venv if it has one, else python3 from PATH.
default_python() {
  if [[ -x "$repo/.venv/bin/python" ]]; then echo "$repo/.venv/bin/python"; else echo python3; fi
}

# The directory the launcher was started from: relative --config and --workdir paths are its.
caller="$PWD"

# Sets the array `resolved` to the arguments with a relative --config=FILE[:arg] or --workdir=DIR
# made absolute against the caller's directory (the launchers run the module from the repository).
resolve_paths() {
  local a value
  resolved=()
  for a in "$@"; do
    case "$a" in
      --config=*|--workdir=*)
        value="${a#*=}"
        [[ -n "$value" && "$value" != /* ]] && value="$caller/$value"
        resolved+=("${a%%=*}=$value") ;;
      *) resolved+=("$a") ;;
    esac
  done
}

# check_mesh N ARGS...: exits 2 naming the stage when the mesh of the --config in ARGS
# (with its --config.[STAGE.]mesh.AXIS=V overrides) cannot be laid over N devices. A recipe
# config is checked stage by stage; a config without a mesh passes. Runs with the local
# interpreter (default_python), whatever --python the launched module gets.
check_mesh() {
  local n="$1" out
  shift
  out="$("$(default_python)" - "$n" "$@" 2>&1 <<'PY'
import re, sys
from swallow_jax.parallel.mesh import AXES, DEFAULTS, resolve_shape
from swallow_jax.sweep import load_config
n, args = int(sys.argv[1]), sys.argv[2:]
spec = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
if spec is None:
  sys.exit(0)
try:
  config = load_config(spec)
except Exception as e:  # pylint: disable=broad-except
  sys.exit(f"cannot load --config={spec}: {' '.join(str(e).split())}")
if "mesh" in config:
  meshes = {"": config.mesh}
else:
  meshes = {k: v.mesh for k, v in config.items() if hasattr(v, "keys") and "mesh" in v}
problems = []
for stage, mesh in meshes.items():
  mesh = dict(mesh)
  for a in args:
    if m := re.fullmatch(rf"--config\.{re.escape(stage + '.' if stage else '')}mesh\.(\w+)=(-?\d+)", a):
      mesh[m[1]] = int(m[2])
  dcn = 1
  for axis in AXES:
    dcn *= int(mesh.get(f"dcn_{axis}", 1))
  try:
    if n % dcn:
      raise ValueError(f"dcn_* sizes multiply to {dcn}, which does not divide {n} devices")
    resolve_shape([mesh.get(axis, DEFAULTS[axis]) for axis in AXES], n // dcn, "mesh (ICI)")
  except ValueError as e:
    problems.append(f"{stage + ': ' if stage else ''}{e}")
if problems:
  sys.exit(f"the mesh of {spec} does not fit the {n} devices of this launch "
           f"(fix --config.*mesh.* or the device count): {'; '.join(problems)}")
PY
)" || die "${out##*$'\n'}"
}
