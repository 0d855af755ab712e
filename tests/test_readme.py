"""The README never lies: its Python snippets run, and CI runs its test command."""

import re
import subprocess
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def fenced_after(marker: str, lang: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```{lang}\n(.*?)```", text, re.S)
    assert match, f"no ```{lang} block after <!-- {marker} --> in README.md"
    return match.group(1)


def test_loss_snippet_runs():
    exec(compile(fenced_after("snippet: loss", "python"), "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    ci = README.parent / ".ci" / "run"
    script = ci.read_text().split("cmd=$(", 1)[1].split(" README.md)", 1)[0]
    printed = subprocess.run(["bash", "-c", f"{script} {README}"], capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == fenced_after("test-command", "bash").strip()


def test_speed_table_is_the_committed_benchmark_summary():
    """The README's speed table is copied from benchmarks/results/cpu.md, not typed by hand."""
    readme = re.search(r"<!-- bench:cpu -->\n(.*?)<!-- /bench:cpu -->", README.read_text(), re.S)
    assert readme, "no <!-- bench:cpu --> ... <!-- /bench:cpu --> block in README.md"
    results = (README.parent / "benchmarks" / "results" / "cpu.md").read_text()
    summary = results.split("## Summary\n", 1)[1].split("\n## ", 1)[0]
    assert readme.group(1).strip() == summary.strip()
