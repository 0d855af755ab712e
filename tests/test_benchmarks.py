"""benchmarks/: the correctness gate can fail, runs write the tables the README quotes, and the GPU
script's CPU dry run works. Every script runs as a subprocess, through its command line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_loss.py"


def run(argv, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHON=sys.executable)  # PYTHON: the interpreter gpu.sh uses
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


def quick(tmp_path, *argv):
    out = tmp_path / "result.md"
    run([sys.executable, str(BENCH), "--quick", "--no-memory", "--out", str(out), *argv])
    text = out.read_text()
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    return text, [line for line in summary.splitlines() if line.startswith("| (")]


def test_correctness_gate_rejects_wrong_losses():
    assert "lsmooth accepted, fastai accepted, wrong eps rejected, no smoothing rejected" in run(
        [sys.executable, str(BENCH), "--self-check"]
    )


@pytest.mark.parametrize("cache", ["warm", "cold", "evict"])
def test_quick_run_writes_summary_and_verdicts(cache, tmp_path):
    text, rows = quick(tmp_path, "--shapes", "64x37", "512x1000", "--cache", cache)
    assert "Quick smoke run" in text and "allocator: glibc mallopt" in text
    assert f"caches: {cache}" in text
    assert [r.split(" | ")[0] for r in rows] == ["| (64, 37) fp32", "| (512, 1000) fp32"]
    assert text.count("Targets for lsmooth:") == 2
    assert "WRONG" not in text and text.count("| ok (loss") == 2 * 5  # every loss agrees with torch


def test_quick_ablation_run(tmp_path):
    text, rows = quick(tmp_path, "--mode", "ablation", "--shapes", "64x37", "512x1000")
    assert "mode: ablation" in text and "gain of the fused path" in text
    assert "gain of the reduced form" in text and "gain of the host-decided shortcuts" in text
    assert len(rows) == 2 and all(r.count("%") == 3 for r in rows)
    assert "WRONG" not in text and text.count("| ok (loss") == 2 * 4


@pytest.mark.slow
def test_quick_compiled_run(tmp_path):
    text, rows = quick(tmp_path, "--mode", "compiled", "--shapes", "64x37")
    assert "mode: compiled" in text and len(rows) == 1 and "(torch-compiled)" in rows[0]
    assert "WRONG" not in text and text.count("| ok (loss") == 2


@pytest.mark.slow
def test_gpu_script_dry_run_on_the_cpu():
    out = run(["bash", "benchmarks/gpu.sh", "--dry-run"], timeout=600)
    assert "sync check: every path ran without reading a value on the host" in out
    assert "images/s lsmooth ÷ CrossEntropyLossFlat" in out
    assert "gpu.sh: done" in out
