#!/usr/bin/env bash
# The GPU measurements of the persistent recurrences, in one run of at most 9 minutes:
#   1. perf_models: precision, every cell's gradient with every implementation, microseconds
#      per time step (T = 100, 400, 784), the deep-IndRNN HAR-2 epoch, scan unrolls, the
#      gated cells' kernel launch settings, and MEASURED's entry (--table);
#   2. compare_torch --device cuda: FW K=5 outer steps against torch eager (cuDNN) and torch
#      in a CUDA graph, TF32 at T = 100, 400, 784 (B=50, H=128) and T=400 (B=256, H=512),
#      float32 at T=400;
#   3. perf_seeds on the adding cases (seeds in one program against separate runs);
#   4. perf_models again at full float32: microseconds per time step;
#   5. tests/models/test_pallas.py on the GPU, the kernels compiled (not interpreted).
# Each step has its own time limit; a step that fails or overruns is reported and the others
# still run. The exit status is 0 only if every step passed.
#
# Usage, from the repository root, on a machine with jax[cuda], torch (CUDA), flax, optax:
#   bash benchmarks/perf/gpu_check.sh [OUT_DIR]          # default results/gpu_h200
#   GPU_CHECK_STEPS="tests perf" bash benchmarks/perf/gpu_check.sh OUT   # some steps only
#   GPU_CHECK_TOY=1 bash benchmarks/perf/gpu_check.sh OUT   # toy sizes, runs on a CPU (the test)
#   GPU_CHECK_DRY=1 bash benchmarks/perf/gpu_check.sh OUT   # print each step's command, run none
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-results/gpu_h200}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false # torch shares the GPU
py=${PYTHON:-python3}
toy=${GPU_CHECK_TOY:-0}
dry=${GPU_CHECK_DRY:-0}
steps=${GPU_CHECK_STEPS:-tests perf compare seeds}
failed=()

# step NAME LIMIT_S OUTFILE COMMAND...: runs COMMAND under a time limit, appending to OUTFILE.
step() {
    local name=$1 limit=$2 file=$3
    shift 3
    if [ "$dry" = 1 ]; then
        echo "DRY $name $limit $(printf "%q " "$@")"
        return
    fi
    echo "== $name (limit ${limit} s): $*" | tee -a "$file"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$file"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$file"
    [ "$rc" -eq 0 ] || failed+=("$name")
}

wants() { [[ " $steps " == *" $1 "* ]]; }

[ "$dry" = 1 ] || {
    date -u +"%Y-%m-%d %H:%M UTC"
    git rev-parse --short HEAD 2>/dev/null || echo "commit unknown"
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    "$py" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__,
"optax", optax.__version__, jax.devices())'
    "$py" -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())'
} >"$out/env.txt" 2>&1
[ "$dry" = 1 ] || cat "$out/env.txt"

if [ "$toy" = 1 ]; then
    device=$("$py" -c 'import jax; print("cuda" if jax.default_backend() == "gpu" else "cpu")')
    pytest_args=(-k "bad_inputs or cover")
    # test_perf.py runs every section at toy size; here one section each is enough.
    perf=(--quick --table)
    perf32=(--quick --sections anatomy)
    compare=(--quick --device "$device" --impls auto pallas --variants alg1 --threads 1)
    # The larger and float32 comparisons differ only in their options (tested with
    # compare_torch itself): one comparison is the toy run's.
    compare_large=()
    compare32=()
    seeds=(--quick --seeds 2)
    limits=(300 300 300 300 300 300)
else
    # The order is the order of importance: a step cut by its limit loses least there.
    # Tests: the gated cells and the awkward sizes; every kernel runs compiled in them.
    pytest_args=(-k "lstm or gru or 4-50-96 or fused_recurrence or deep_stack or vmap")
    perf=(--repeats 5 --table --sections precision cells anatomy indrnn_epoch unroll launch
        --launch-cells lstm gru --launch-warps 2 4 8)
    perf32=(--repeats 5 --precision float32 --sections anatomy)
    compare=(--device cuda --precision tf32 --impls fused pallas --lengths 100 400 784
        --repeats 5)
    compare_large=(--device cuda --precision tf32 --impls auto --lengths 400
        --batch 256 --hidden 512 --repeats 5)
    compare32=(--device cuda --precision float32 --impls fused pallas --lengths 400
        --repeats 5)
    seeds=(--tasks adding --repeats 1)
    # tests, perf_models, perf_models float32, compare_torch, compare_torch (large and
    # float32, each), perf_seeds: 510 s at most
    limits=(70 170 35 120 35 45)
fi

if wants perf; then
    # perf_models writes its own file (MEASURED's entry names it); its log goes to stdout.
    step perf_models "${limits[1]}" /dev/null \
        "$py" -m benchmarks.perf.perf_models "${perf[@]}" --out "$out/perf_models.txt"
fi
if wants compare; then
    step compare_torch "${limits[3]}" "$out/compare_torch.txt" \
        "$py" -m benchmarks.perf.compare_torch "${compare[@]}"
    if [ ${#compare_large[@]} -gt 0 ]; then
        step compare_torch_large "${limits[4]}" "$out/compare_torch.txt" \
            "$py" -m benchmarks.perf.compare_torch "${compare_large[@]}"
    fi
    if [ ${#compare32[@]} -gt 0 ]; then
        step compare_torch_float32 "${limits[4]}" "$out/compare_torch.txt" \
            "$py" -m benchmarks.perf.compare_torch "${compare32[@]}"
    fi
fi
if wants seeds; then
    step perf_seeds "${limits[5]}" "$out/perf_seeds.txt" \
        "$py" -m benchmarks.perf.perf_seeds "${seeds[@]}"
fi
if wants perf; then
    step perf_models_float32 "${limits[2]}" /dev/null \
        "$py" -m benchmarks.perf.perf_models "${perf32[@]}" --out "$out/perf_models_float32.txt"
fi
if wants tests; then
    step tests "${limits[0]}" "$out/test_pallas.log" \
        "$py" -m pytest tests/models/test_pallas.py -q -o addopts="" -p no:cacheprovider \
        "${pytest_args[@]}"
fi

if [ "$dry" = 1 ]; then
    echo "gpu_check: dry run, nothing ran"
    exit 0
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: FAILED steps: ${failed[*]} (outputs in $out)"
    exit 1
fi
echo "gpu_check: every step passed (outputs in $out)"
