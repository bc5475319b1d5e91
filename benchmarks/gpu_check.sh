#!/usr/bin/env bash
# One-GPU check (H100/H200, JAX preinstalled, no network): trains a Llama-3.2-1B-shaped and an
# 8-layer Llama-3-8B-shaped model at sequence 8,192 in bf16, reports MFU and peak memory, and
# batch-1 decode as a fraction of the HBM bound. Prints one JSON object; finishes in <= 8 minutes.
#
#   bash benchmarks/gpu_check.sh [OUT.json] [extra gpu_check.py flags, e.g. --cases=train_1b]
#
# Needs only jax, flax, optax, numpy and this checkout (put on PYTHONPATH here); no grain,
# ml-collections or torch. Override the interpreter with PYTHON=..., XLA flags with XLA_FLAGS=...
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
PY="${PYTHON:-python3}"
OUT="${1:-gpu_check.json}"
shift || true
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
fi
"$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" >&2
# gpu_check.py stops starting new work at --budget_s; the hard limit below is the 8-minute promise.
timeout --kill-after=10 470 "$PY" benchmarks/gpu_check.py --out="$OUT" --budget_s=430 "$@"
