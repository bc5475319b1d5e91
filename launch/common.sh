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
