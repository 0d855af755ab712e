#!/usr/bin/env bash
# The GPU check: what the loss costs on one CUDA GPU, in about 5 minutes.
#   1. the sync check: forward + backward of every path under torch.cuda.set_sync_debug_mode("error")
#   2. the loss table, fp32 / bf16 / fp16 at the benchmark shapes (bench_loss.py on cuda), written to
#      benchmarks/results/cuda-<gpu name>.md
#   3. the digits recipe's images/s with lsmooth against CrossEntropyLossFlat, alternating batch by
#      batch in one run (bench_recipe.py)
#
#   bash benchmarks/gpu.sh             # needs a CUDA GPU
#   bash benchmarks/gpu.sh --dry-run   # the same steps, tiny and quick, on the CPU (the sync check on
#                                      # meta tensors); writes nothing into the repository
# PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}

if [ "${1:-}" = "--dry-run" ]; then
    out=$(mktemp -d)
    sync_args=(--device meta)
    loss_args=(--device cpu --quick --shapes 64x37 512x1000 --dtypes fp32 bf16 --no-memory --out "$out/loss.md")
    recipe_args=(--epochs 1)
elif [ $# -gt 0 ]; then
    echo "gpu.sh: unknown argument $1 (the only option is --dry-run)" >&2
    exit 2
else
    if ! "$py" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        echo "gpu.sh: no CUDA GPU here; 'bash benchmarks/gpu.sh --dry-run' runs the steps on the CPU" >&2
        exit 1
    fi
    sync_args=(--device cuda)
    loss_args=(--device cuda --budget 3)  # ~3 s of timing per shape and dtype
    recipe_args=()
fi

echo "== 1/3 sync check"
"$py" benchmarks/check_sync.py "${sync_args[@]}"
echo "== 2/3 loss table"
"$py" benchmarks/bench_loss.py "${loss_args[@]}"
echo "== 3/3 the digits recipe, lsmooth vs CrossEntropyLossFlat"
"$py" benchmarks/bench_recipe.py "${recipe_args[@]}"
echo "gpu.sh: done"
