#!/usr/bin/env bash
# Submits the recipe (or the trainer) to SLURM on N GPU nodes with launch/slurm.sbatch:
# one JAX process per node, jax.distributed started from SLURM's variables.
#
#   launch/slurm.sh --nodes=1 -- --config=configs/llama3_swallow_8b.py --workdir=/shared/runs/8b
#   launch/slurm.sh --nodes=4 --module=swallow_jax.train -- --config=configs/llama3_swallow_70b_cpt.py --workdir=/shared/runs/70b
#   launch/slurm.sh --dry-run --nodes=2 -- --config=... --workdir=...
#
# Options (everything after -- goes to the python module):
#   --nodes=N            required
#   --gpus-per-node=G    default 8
#   --partition=P --account=A --time=HH:MM:SS --job-name=NAME   passed to sbatch
#   --module=M           default swallow_jax.recipe
#   --python=PATH        interpreter on the nodes (default REPO/.venv/bin/python)
#   --port=PORT          coordinator port on the first node (default 12355)
#   --dry-run            check the config's mesh against NODES x G devices, print the sbatch
#                        command and what each task runs, and exit
# The repository and the workdir must be on a filesystem all nodes share. Relative --config and
# --workdir paths are taken from the directory you run this from. The mesh check (also before a
# real submission) runs with the local interpreter (.venv/bin/python if present, else python3).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

nodes="" gpus=8 partition="" account="" time_limit="" job_name="swallow" port=12355
module="swallow_jax.recipe" python="$repo/.venv/bin/python" dry_run=0
args=()
while (( $# )); do
  case "$1" in
    --nodes=*) nodes="${1#*=}" ;;
    --gpus-per-node=*) gpus="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --account=*) account="${1#*=}" ;;
    --time=*) time_limit="${1#*=}" ;;
    --job-name=*) job_name="${1#*=}" ;;
    --module=*) module="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) print_help; exit 0 ;;
    --) shift; args=("$@"); break ;;
    *) die "unknown option '$1' (module flags go after --)" ;;
  esac
  shift
done
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes=N (a positive integer) is required"
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer"
(( ${#args[@]} )) || die "module flags are required after -- (--config=... --workdir=...)"

resolve_paths "${args[@]}"
args=("${resolved[@]}")
check_mesh $(( nodes * gpus )) "${args[@]}"

sbatch_cmd=(sbatch --nodes="$nodes" --ntasks-per-node=1 --gpus-per-node="$gpus" --job-name="$job_name"
            --export="ALL,SWALLOW_REPO=$repo,SWALLOW_PYTHON=$python,SWALLOW_PORT=$port")
[[ -n "$partition" ]] && sbatch_cmd+=(--partition="$partition")
[[ -n "$account" ]] && sbatch_cmd+=(--account="$account")
[[ -n "$time_limit" ]] && sbatch_cmd+=(--time="$time_limit")
sbatch_cmd+=("$repo/launch/slurm.sbatch" "$module" "${args[@]}")

if (( dry_run )); then
  print_cmd "${sbatch_cmd[@]}"
  echo "# task i of $nodes on each node runs:"
  print_cmd "$python" -m "$module" --coordinator_address="<first node>:$port" \
    --num_processes="$nodes" --process_id="<i>" "${args[@]}"
  exit 0
fi
exec "${sbatch_cmd[@]}"
