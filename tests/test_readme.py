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
