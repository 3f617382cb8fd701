#!/usr/bin/env bash
# The GPU checks of one lent-device session, in one call (see README "Performance").
# Usage, from the repository root on the GPU machine: OUT=/some/dir bash benchmarks/device_runs.sh
# Writes perf tables and the adding-task T=750 comparison under $OUT; each part has its own
# time limit so that one slow part cannot take the others' results with it.
set -uo pipefail
export PYTHONPATH="${PYTHONPATH:-}:$(pwd)"
OUT="${OUT:?set OUT to an output folder}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
timeout "${PERF_LIMIT:-150}" python3 -m benchmarks.perf --suite fw 2>&1 | tee "$OUT/perf_fw.txt"
timeout "${ADDING_LIMIT:-300}" python3 -m benchmarks.adding --length 750 --steps "${ADDING_STEPS:-2000}" \
  --eval-every 200 --out "$OUT" --no-progress 2>&1 | tee "$OUT/adding_T750.log"
