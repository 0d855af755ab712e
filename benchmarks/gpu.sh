#!/usr/bin/env bash
# The GPU check: what the loss costs on one CUDA GPU, in about 5 minutes.
#   1. the sync check: forward + backward of every path under torch.cuda.set_sync_debug_mode("error")
#   2. the op counts of one forward + backward on the GPU (they equal the meta counts in
#      benchmarks/results/op-counts.md), written to benchmarks/results/op-counts-cuda.md
#   3. the loss table, fp32 / bf16 / fp16 at the benchmark shapes (bench_loss on cuda), written to
#      benchmarks/results/cuda-<gpu name>.md
#   4. the digits lesson's images/s with lsmooth against CrossEntropyLossFlat, alternating batch by
#      batch in one run (bench_recipe)
#
#   bash benchmarks/gpu.sh             # needs a CUDA GPU
#   bash benchmarks/gpu.sh --dry-run   # the same steps, tiny and quick, on the CPU (the sync check and
#                                      # the op counts on meta tensors); writes nothing into the repository
# PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}

if [ "${1:-}" = "--dry-run" ]; then
    out=$(mktemp -d)
    sync_args=(--device meta)
    count_args=(--device meta --out "$out/op-counts.md")
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
    count_args=(--device cuda --out benchmarks/results/op-counts-cuda.md)
    loss_args=(--device cuda --budget 3)  # ~3 s of timing per shape and dtype
    recipe_args=()
fi

echo "== 1/4 sync check"
"$py" -m benchmarks.check_sync "${sync_args[@]}"
echo "== 2/4 op counts"
"$py" -m benchmarks.op_counts "${count_args[@]}"
echo "== 3/4 loss table"
"$py" -m benchmarks.bench_loss "${loss_args[@]}"
echo "== 4/4 the digits lesson, lsmooth vs CrossEntropyLossFlat"
"$py" -m benchmarks.bench_recipe "${recipe_args[@]}"
echo "gpu.sh: done"
