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


def test_speed_tables_are_the_committed_benchmark_summaries():
    """Each README speed table is copied from benchmarks/results/<name>.md, not typed by hand."""
    blocks = re.findall(r"<!-- bench:([\w.-]+) -->\n(.*?)<!-- /bench:\1 -->", README.read_text(), re.S)
    assert "cpu" in [name for name, _ in blocks], "no <!-- bench:cpu --> ... <!-- /bench:cpu --> block in README.md"
    for name, table in blocks:
        results = (README.parent / "benchmarks" / "results" / f"{name}.md").read_text()
        summary = results.split("## Summary\n", 1)[1].split("\n## ", 1)[0]
        assert table.strip() == summary.strip(), f"README table differs from benchmarks/results/{name}.md"


def test_results_block_is_the_committed_summary():
    """The README's measured results are results/compare-digits/summary.json rendered, not typed by hand."""
    from lsmooth.report import load_summary, snippet

    block = r"<!-- results:compare-digits -->\n(.*?)<!-- /results:compare-digits -->"
    match = re.search(block, README.read_text(), re.S)
    assert match, "no <!-- results:compare-digits --> block in README.md"
    want = snippet(load_summary(README.parent / "results" / "compare-digits"), markdown=True)
    assert match.group(1).strip() == want.strip(), f"README results differ from results/compare-digits:\n{want}"
