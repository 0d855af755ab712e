"""benchmarks/: the correctness gate can fail, runs write the tables benchmarks/README.md quotes (and
the README's tables are those files' summaries), the op counts are what the script prints now, and
the GPU script's CPU dry run works. Every script runs as users run it: ``python -m benchmarks.<name>``
from the repository root, in a subprocess."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
README = BENCH / "README.md"


def run(argv, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHON=sys.executable)  # PYTHON: the interpreter gpu.sh uses
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


def module(name, *argv):
    return [sys.executable, "-m", f"benchmarks.{name}", *argv]


def summary(text: str) -> str:
    return text.split("## Summary\n", 1)[1].split("\n## ", 1)[0].strip()


def quick(tmp_path, *argv):
    out = tmp_path / "result.md"
    run(module("bench_loss", "--quick", "--no-memory", "--out", str(out), *argv))
    text = out.read_text()
    return text, [line for line in summary(text).splitlines() if line.startswith("| (")]


def test_correctness_gate_rejects_wrong_losses():
    assert "lsmooth accepted, fastai accepted, wrong eps rejected, no smoothing rejected" in run(
        module("bench_loss", "--self-check")
    )


@pytest.mark.parametrize("cache", ["warm", "cold", "evict"])
def test_quick_run_writes_summary_and_verdicts(cache, tmp_path):
    text, rows = quick(tmp_path, "--shapes", "64x37", "512x1000", "--cache", cache)
    assert "Quick smoke run" in text and "allocator: glibc mallopt" in text
    assert f"caches: {cache}" in text and "command: `python -m benchmarks.bench_loss --quick" in text
    assert [r.split(" | ")[0] for r in rows] == ["| (64, 37) fp32", "| (512, 1000) fp32"]
    assert text.count("Targets for lsmooth:") == 2
    assert "WRONG" not in text and text.count("| ok (loss") == 2 * 5  # every loss agrees with torch


def test_quick_ablation_run(tmp_path):
    text, rows = quick(tmp_path, "--mode", "ablation", "--shapes", "64x37", "512x1000")
    assert "mode: ablation" in text and "gain of the fused path" in text
    assert "gain of the reduced form" in text and "gain of the host-decided shortcuts" in text
    assert len(rows) == 2 and all(r.count("%") == 3 for r in rows)
    assert "WRONG" not in text and text.count("| ok (loss") == 2 * 4


def test_ablation_uses_only_public_api_and_documented_switches():
    """The ablation turns branches off with the switches lsmooth documents, not its private functions."""
    source = (BENCH / "loss_impls.py").read_text()
    assert not re.search(r"losses\._|fused\._", source)
    assert '"MIN_LOGITS", math.inf' in source and '"HOST_READS", False' in source


def test_op_counts_are_the_committed_table(tmp_path):
    """Op counts depend on torch's version, not on the machine: the committed table is what the script
    prints now (tests/test_losses.py pins the plain case's budget)."""
    out = tmp_path / "op-counts.md"
    printed = run(module("op_counts", "--out", str(out)))
    fresh = summary(out.read_text())
    assert fresh in printed
    assert fresh == summary((BENCH / "results" / "op-counts.md").read_text())
    assert fresh.count("| index targets, mean (the plain case) |") == 2  # both shapes


def test_readme_tables_are_the_committed_summaries():
    """Each table in benchmarks/README.md is copied from benchmarks/results/<name>.md, not typed by hand."""
    blocks = re.findall(r"<!-- bench:([\w.-]+) -->\n(.*?)<!-- /bench:\1 -->", README.read_text(), re.S)
    names = [name for name, _ in blocks]
    for name in ("cpu", "cpu-cold", "cpu-ablation", "cpu-ablation-cold", "cpu-compiled", "op-counts"):
        assert name in names, f"no <!-- bench:{name} --> ... <!-- /bench:{name} --> block in benchmarks/README.md"
    for name, table in blocks:
        results = (BENCH / "results" / f"{name}.md").read_text()
        assert table.strip() == summary(results), f"benchmarks/README.md table differs from results/{name}.md"


def test_readme_commands_name_existing_modules():
    """Every `python -m benchmarks.X` the README shows is a module here."""
    names = set(re.findall(r"python -m benchmarks\.(\w+)", README.read_text()))
    assert names and all((BENCH / f"{name}.py").is_file() for name in names), names


@pytest.mark.slow
def test_quick_compiled_run(tmp_path):
    text, rows = quick(tmp_path, "--mode", "compiled", "--shapes", "64x37")
    assert "mode: compiled" in text and len(rows) == 1 and "(torch-compiled)" in rows[0]
    assert "WRONG" not in text and text.count("| ok (loss") == 2


@pytest.mark.slow
def test_gpu_script_dry_run_on_the_cpu():
    out = run(["bash", "benchmarks/gpu.sh", "--dry-run"], timeout=600)
    assert "sync check: every path ran without reading a value on the host" in out
    assert "| index targets, mean (the plain case) | (64, 37) |" in out
    assert "images/s lsmooth ÷ CrossEntropyLossFlat" in out
    assert "gpu.sh: done" in out
