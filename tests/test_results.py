"""Every reported number has one source: the committed results/<sweep>/summary.json.

results/<sweep>/ holds copies of the summary.json and summary.md that a documented command wrote
into its sweep folder. Here summary.md must be the rendering of summary.json, each summary must
have been written by the command documented for it, and the figure in the recipes' headers
must be the rendering of its summary (lsmooth.report.snippet). A results folder not filled yet is
skipped, and the header must then say so instead of showing a figure.
"""

import re
import textwrap
from pathlib import Path

import pytest

from lsmooth.report import SUMMARY_JSON, SUMMARY_MD, load_summary, snippet, summary_markdown

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
COMMANDS = {  # results folder -> the documented command that writes it (README, notebooks)
    "compare-digits": "python recipes/compare.py",
    "noise-digits": "python recipes/compare.py --eps -0.1 0 0.1 0.3 --noise 0 0.2 0.4 --seeds 0 1 2 --epochs 3 "
                    "--out runs/noise-digits",
}
NOT_MEASURED = "(not measured yet: run the command below and copy runs/compare-digits/summary.* to results/)"


def committed(name: str) -> dict:
    if not (RESULTS / name / SUMMARY_JSON).exists():
        pytest.skip(f"results/{name}/{SUMMARY_JSON} not committed yet (see results/README.md)")
    return load_summary(RESULTS / name)


def header_figure(recipe: Path, name: str) -> str:
    """The indented block after 'Measured, as recorded in results/<name>/summary.json ...:' in a header."""
    text = recipe.read_text()
    match = re.search(rf"^Measured, as recorded in results/{re.escape(name)}/{SUMMARY_JSON}.*:\n((?:    .*\n|\n)+)",
                      text, re.M)
    assert match, f"{recipe.name}: no 'Measured, as recorded in results/{name}/{SUMMARY_JSON}' block"
    return textwrap.dedent(match.group(1)).strip()


@pytest.mark.parametrize("name", COMMANDS)
def test_summary_md_is_the_rendering_of_summary_json(name):
    data = committed(name)
    assert (RESULTS / name / SUMMARY_MD).read_text() == summary_markdown(data)


@pytest.mark.parametrize("name", COMMANDS)
def test_each_summary_was_written_by_its_documented_command(name):
    data = committed(name)
    assert data["provenance"]["command"] == COMMANDS[name]
    assert [c["command"] for sw in data["provenance"]["sweeps"] for c in sw["commands"]][0] == COMMANDS[name]


@pytest.mark.parametrize("recipe", ["compare.py", "pets.py"])
def test_recipe_headers_show_the_committed_figure(recipe):
    block = header_figure(ROOT / "recipes" / recipe, "compare-digits")
    if not (RESULTS / "compare-digits" / SUMMARY_JSON).exists():
        assert block == NOT_MEASURED
        return
    want = snippet(committed("compare-digits")).strip()
    assert block == want, f"recipes/{recipe} header differs from results/compare-digits; it should read:\n{want}"
