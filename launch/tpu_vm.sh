#!/usr/bin/env bash
# Runs the recipe (or the trainer) on a Cloud TPU VM slice: create it, copy this repository to
# every worker, install, and start the same command on all workers at once (JAX finds the other
# hosts of the slice by itself). Needs gcloud, authenticated, with a default project or --project.
#
#   launch/tpu_vm.sh --name=swallow --zone=us-east5-a --accelerator=v5p-128 -- \
#       --config=configs/llama3_swallow_8b.py --workdir=/mnt/runs/8b --stages=cpt
#   launch/tpu_vm.sh --dry-run --name=swallow --zone=us-east5-a --accelerator=v5p-128 -- ...
#
# Options (everything after -- goes to the python module):
#   --name=N --zone=Z --accelerator=TYPE   required (TYPE e.g. v5p-128, v4-32, v5litepod-16)
#   --project=P                            gcloud project (default: gcloud's)
#   --version=V                            TPU VM image (default v2-alpha-tpuv5 for v5p, else
#                                          tpu-ubuntu2204-base)
#   --spot                                 create a Spot (preemptible) slice; the trainer saves on
#                                          SIGTERM and resumes when started again
#   --steps=LIST                           comma list of create,copy,setup,run,delete
#                                          (default create,copy,setup,run)
#   --module=M                             default swallow_jax.recipe
#   --detach                               run under nohup, logging to ~/swallow_run.log
#   --dry-run                              check the config's mesh against the slice's chips,
#                                          print the exact commands and exit
# The workdir must be an absolute path visible to all workers (a Filestore/NFS or GCS-FUSE
# mount). --config must be a file inside this repository (the copy the workers get); a relative
# path is taken from the directory you run this from.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

name="" zone="" accelerator="" project="" version="" spot=0 detach=0 dry_run=0
steps="create,copy,setup,run"
module="swallow_jax.recipe"
args=() resolved_args=()
while (( $# )); do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --spot) spot=1 ;;
    --steps=*) steps="${1#*=}" ;;
    --module=*) module="${1#*=}" ;;
    --detach) detach=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) print_help; exit 0 ;;
    --) shift; args=("$@"); break ;;
    *) die "unknown option '$1' (module flags go after --)" ;;
  esac
  shift
done
for required in name zone accelerator; do
  [[ -n "${!required}" ]] || die "--$required is required"
done
IFS=',' read -r -a step_list <<< "$steps"
for s in "${step_list[@]}"; do
  case "$s" in create|copy|setup|run|delete) ;; *)
    die "unknown step '$s' (create,copy,setup,run,delete)" ;;
  esac
done
if [[ " ${step_list[*]} " == *" run "* ]] && (( ${#args[@]} == 0 )); then
  die "the run step needs module flags after -- (e.g. --config=... --workdir=...)"
fi
if [[ -z "$version" ]]; then
  if [[ "$accelerator" == v5p-* ]]; then version="v2-alpha-tpuv5"; else version="tpu-ubuntu2204-base"; fi
fi

# --config: a caller-relative path becomes the same file's path inside the workers' copy.
resolved=()
for a in "${args[@]+"${args[@]}"}"; do
  case "$a" in
    --config=*)
      resolve_paths "$a"
      file="${resolved[0]#--config=}"
      file="$(realpath -m "${file%%:*}")" spec="${a#--config=}"
      [[ "$spec" == *:* ]] && arg=":${spec#*:}" || arg=""
      [[ "$file" == "$repo"/* ]] || die "--config file $file is not inside $repo (the workers get a copy of it)"
      a="--config=${file#"$repo"/}$arg" ;;
    --workdir=/*) ;;
    --workdir=*) die "--workdir must be an absolute path all workers share, got '${a#*=}'" ;;
  esac
  resolved_args+=("$a")
done
args=("${resolved_args[@]+"${resolved_args[@]}"}")
# JAX devices of a slice: v2/v3 count TensorCores (one device each); v4/v5p count TensorCores
# with two per chip (one device per chip); v5e/v6e count chips.
chips="${accelerator##*-}"
[[ "$chips" =~ ^[1-9][0-9]*$ ]] || die "--accelerator must be TYPE-SIZE (e.g. v5p-128), got '$accelerator'"
[[ "$accelerator" == v4-* || "$accelerator" == v5p-* ]] && chips=$(( chips / 2 ))
cd "$repo"
if (( ${#args[@]} )); then check_mesh "$chips" "${args[@]}"; fi

where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")
tarball="/tmp/swallow_jax-$name.tgz"
python_cmd="$(print_cmd .venv/bin/python -m "$module" "${args[@]+"${args[@]}"}")"
remote_cmd="cd ~/swallow_jax && $python_cmd"
(( detach )) && remote_cmd="cd ~/swallow_jax && nohup $python_cmd > ~/swallow_run.log 2>&1 &"
# TPU VM images ship Python 3.10; swallow_jax needs 3.11+ (Ubuntu 22.04 has it in its archive).
setup_cmd='command -v python3.11 >/dev/null || (sudo apt-get -qq update && sudo apt-get -qq install -y python3.11 python3.11-venv); mkdir -p ~/swallow_jax && tar -xzf ~/swallow_jax.tgz -C ~/swallow_jax && cd ~/swallow_jax && python3.11 -m venv .venv && .venv/bin/pip install -q -r requirements.txt "jax[tpu]"'

run() {
  if (( dry_run )); then print_cmd "$@"; else "$@"; fi
}
for s in "${step_list[@]}"; do
  case "$s" in
    create)
      create=(gcloud compute tpus tpu-vm create "$name" "${where[@]}"
              --accelerator-type="$accelerator" --version="$version")
      (( spot )) && create+=(--spot)
      run "${create[@]}" ;;
    copy)
      run tar -czf "$tarball" --exclude=.venv --exclude=.git --exclude=runs --exclude=__pycache__ -C "$repo" .
      run gcloud compute tpus tpu-vm scp "$tarball" "$name:~/swallow_jax.tgz" "${where[@]}" --worker=all ;;
    setup)
      run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$setup_cmd" ;;
    run)
      run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$remote_cmd" ;;
    delete)
      run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet ;;
  esac
done
