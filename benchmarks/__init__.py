"""lsmooth's benchmarks: scripts run from the repository root as modules (``python -m benchmarks.bench_loss``,
``python -m benchmarks.op_counts``, ...); see benchmarks/README.md for what each measures and how."""
