#!/usr/bin/env bash
# Runs the trainer as N JAX processes on this machine (CPU, 127.0.0.1), the way a multi-host
# slice runs one process per host: the multi-host code paths (jax.distributed, per-process data,
# coordinated checkpoints, failure handling) without a cluster.
#
#   launch/local_multiprocess.sh --processes=2 --config=configs/tiny_cpt.py --workdir=runs/tiny2
#   launch/local_multiprocess.sh --processes=2 --config=configs/tiny_cpt.py --workdir=runs/tiny2 \
#       -- --config.train.num_steps=50
#   launch/local_multiprocess.sh --dry-run --processes=2 --config=configs/tiny_cpt.py --workdir=runs/tiny2
#
# Options (everything after -- goes to the python module):
#   --processes=N   number of JAX processes (required)
#   --config=FILE[:arg] --workdir=DIR   required; relative paths are taken from the directory
#                   you run this from (the processes run in the repository)
#   --devices=D     global device count (default: what the config's mesh asks for, ICI x DCN
#                   sizes with --config.mesh.* overrides applied; 8 if an axis is -1); each
#                   process fakes D/N CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count)
#   --port=P        coordinator port (default: a free one)
#   --module=M      python module (default swallow_jax.train)
#   --python=PATH   interpreter (default .venv/bin/python if present, else python3)
#   --grace=S       after a process fails, seconds the others get to stop by themselves (the
#                   trainer's heartbeat timeout) before they are killed (default 90)
#   --dry-run       check the config's mesh against D devices, print the exact commands and exit
# Output: process I logs to WORKDIR/logs/process_I.log; process 0 also to this terminal. Exit
# status: 0 if every process exited 0, else the status of the first one that failed.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

module="swallow_jax.train" python="" devices="" port="" grace=90 dry_run=0
num="" config="" workdir="" extra=()
while (( $# )); do
  case "$1" in
    --processes=*) num="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --devices=*) devices="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --module=*) module="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --grace=*) grace="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) print_help; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option '$1' (module flags go after --; see --help)" ;;
    *) die "unexpected argument '$1' (see --help)" ;;
  esac
  shift
done
[[ "$num" =~ ^[1-9][0-9]*$ ]] || die "--processes=N (a positive integer) is required, got '$num'"
[[ -n "$config" ]] || die "--config=FILE is required"
[[ -n "$workdir" ]] || die "--workdir=DIR is required"
[[ -z "$devices" || "$devices" =~ ^[1-9][0-9]*$ ]] || die "--devices must be a positive integer, got '$devices'"
[[ -z "$port" || "$port" =~ ^[1-9][0-9]*$ ]] || die "--port must be a positive integer, got '$port'"
[[ "$grace" =~ ^[0-9]+$ ]] || die "--grace must be a number of seconds, got '$grace'"
python="${python:-$(default_python)}"
resolve_paths --config="$config" --workdir="$workdir"
config="${resolved[0]#--config=}" workdir="${resolved[1]#--workdir=}"
[[ -f "${config%%:*}" ]] || die "config file '${config%%:*}' not found"
cd "$repo"

if [[ -z "$devices" ]]; then  # The mesh's device count, from the config and its overrides.
  devices="$("$(default_python)" - "$config" "${extra[@]+"${extra[@]}"}" <<'PY'
import re, sys
from swallow_jax.parallel.mesh import required_devices
from swallow_jax.sweep import load_config
mesh = dict(load_config(sys.argv[1]).get("mesh", {}))
for arg in sys.argv[2:]:
  if m := re.fullmatch(r"--config\.mesh\.(\w+)=(-?\d+)", arg):
    mesh[m[1]] = int(m[2])
print(required_devices(mesh) or 8)
PY
)" || die "could not read the mesh of $config"
fi
check_mesh "$devices" --config="$config" "${extra[@]+"${extra[@]}"}"
(( devices % num == 0 )) || die "$devices devices cannot be split evenly over $num processes (--devices=D)"
per_process=$(( devices / num ))
if [[ -z "$port" ]]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
# Replace (not add to) a device count already in XLA_FLAGS.
xla_flags="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g; s/^ +| +$//g' <<< "${XLA_FLAGS:-}")"
xla_flags="${xla_flags:+$xla_flags }--xla_force_host_platform_device_count=$per_process"

cmds=()
for (( i = 0; i < num; i++ )); do
  cmds+=("$(print_cmd env JAX_PLATFORMS=cpu "XLA_FLAGS=$xla_flags" "$python" -m "$module" \
    --config="$config" --workdir="$workdir" --coordinator_address="127.0.0.1:$port" \
    --num_processes="$num" --process_id="$i" "${extra[@]+"${extra[@]}"}")")
done
if (( dry_run )); then
  print_cmd cd "$repo"
  printf '%s\n' "${cmds[@]}"
  exit 0
fi

mkdir -p "$workdir/logs"
echo "local_multiprocess.sh: $num processes x $per_process CPU devices, coordinator 127.0.0.1:$port, logs in $workdir/logs/" >&2
pids=()
stop_all() { local sig="$1" p; for p in "${pids[@]}"; do kill "-$sig" "$p" 2>/dev/null || true; done; }
trap 'stop_all TERM' INT TERM  # Ctrl-C / kill: every trainer saves a checkpoint and exits 0.
for (( i = 0; i < num; i++ )); do
  log="$workdir/logs/process_$i.log"
  if (( i == 0 )); then
    bash -c "exec ${cmds[i]}" > >(trap '' INT; exec tee "$log") 2>&1 &  # Outlives a Ctrl-C.
  else
    bash -c "exec ${cmds[i]}" > "$log" 2>&1 &
  fi
  pids+=($!)
done

status=0 failed_at=0 left="$num"
declare -A done_pids=()
while (( left )); do
  for (( i = 0; i < num; i++ )); do
    pid="${pids[i]}"
    [[ -n "${done_pids[$pid]:-}" ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    code=0; wait "$pid" || code=$?
    done_pids[$pid]=1; left=$(( left - 1 ))
    if (( code )); then
      why="status $code"; (( code > 128 )) && why+=" (signal $(kill -l $(( code - 128 )) 2>/dev/null || echo $(( code - 128 ))))"
      echo "local_multiprocess.sh: process $i (pid $pid) exited with $why; see $workdir/logs/process_$i.log" >&2
      if (( ! status )); then status=$code; failed_at=$SECONDS; fi
    fi
  done
  if (( status && left && SECONDS - failed_at >= grace )); then
    echo "local_multiprocess.sh: killing the $left process(es) still running ${grace}s after the failure" >&2
    stop_all KILL
  fi
  if (( left )); then sleep 0.5 || true; fi  # A Ctrl-C ends the sleep, not the wait.
done
exit "$status"
