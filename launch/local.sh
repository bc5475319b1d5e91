#!/usr/bin/env bash
# Runs the Swallow recipe (or the trainer) on this machine, on whatever devices JAX finds.
#
#   launch/local.sh --config=configs/demo.py --workdir=runs/demo
#   launch/local.sh --module=swallow_jax.train --config=configs/tiny_cpt.py --workdir=runs/tiny
#   launch/local.sh --dry-run --config=configs/llama3_swallow_8b.py --workdir=runs/8b
#
# Options (before the pass-through flags):
#   --module=M      python module to run (default swallow_jax.recipe)
#   --python=PATH   interpreter (default .venv/bin/python if present, else python3)
#   --cpu-devices=N fake N CPU devices (XLA_FLAGS) to exercise sharding without accelerators
#   --dry-run       check the config's mesh against --cpu-devices (when given), print the exact
#                   command and exit
# Every other argument is passed to the module; --config and --workdir are required, and relative
# paths in them are taken from the directory you run this from (the module runs in the repository).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

module="swallow_jax.recipe"
python=""
cpu_devices=""
dry_run=0
args=()
for arg in "$@"; do
  case "$arg" in
    --module=*) module="${arg#*=}" ;;
    --python=*) python="${arg#*=}" ;;
    --cpu-devices=*) cpu_devices="${arg#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) print_help; exit 0 ;;
    *) args+=("$arg") ;;
  esac
done
python="${python:-$(default_python)}"
have() { local a; for a in "${args[@]+"${args[@]}"}"; do [[ "$a" == "$1"* ]] && return 0; done; return 1; }
have --config= || die "--config=FILE is required"
have --workdir= || die "--workdir=DIR is required"
[[ -z "$cpu_devices" || "$cpu_devices" =~ ^[1-9][0-9]*$ ]] \
  || die "--cpu-devices must be a positive integer, got '$cpu_devices'"

env_prefix=()
if [[ -n "$cpu_devices" ]]; then
  env_prefix=(env "JAX_PLATFORMS=cpu" "XLA_FLAGS=--xla_force_host_platform_device_count=$cpu_devices")
fi
resolve_paths "${args[@]}"
[[ -z "$cpu_devices" ]] || check_mesh "$cpu_devices" "${resolved[@]}"
cmd=("${env_prefix[@]+"${env_prefix[@]}"}" "$python" -m "$module" "${resolved[@]}")

if (( dry_run )); then
  print_cmd cd "$repo"
  print_cmd "${cmd[@]}"
  exit 0
fi
cd "$repo"
exec "${cmd[@]}"
