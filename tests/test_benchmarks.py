"""benchmarks/bench_loss.py: its correctness gate can fail, and a run writes the tables the README quotes."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_loss.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_loss", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_excludes_a_wrong_implementation():
    bench = load_bench()
    x, t = bench.make_inputs("512x1000", torch.float32, "cpu")
    impls = {
        "lsmooth": bench.make_impl("lsmooth"),
        "fastai": bench.make_impl("fastai"),
        "wrong eps": lambda x, t: F.cross_entropy(x, t, label_smoothing=0.11),
        "no smoothing": lambda x, t: F.cross_entropy(x, t),
    }
    checks = bench.check(impls, x, t)
    assert checks["lsmooth"][0] and checks["fastai"][0]
    assert not checks["wrong eps"][0] and not checks["no smoothing"][0]


@pytest.mark.parametrize("cache", ["warm", "cold"])
def test_quick_run_writes_summary_and_verdicts(cache, tmp_path):
    out = tmp_path / "cpu.md"
    argv = ["--quick", "--shapes", "64x37", "512x1000", "--no-memory", "--cache", cache, "--out", str(out)]
    res = subprocess.run([sys.executable, str(BENCH), *argv], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text = out.read_text()
    assert "Quick smoke run" in text and "allocator: glibc mallopt" in text
    assert f"caches: {cache}" in text
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in summary.splitlines() if line.startswith("| (")]
    assert [r.split(" | ")[0] for r in rows] == ["| (64, 37) fp32", "| (512, 1000) fp32"]
    assert text.count("Targets for lsmooth:") == 2
    assert "WRONG" not in text and text.count("| ok (loss") == 2 * 5  # every loss agrees with torch
