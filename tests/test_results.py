"""Every reported number has one source: a committed results/<sweep>/summary.json.

results/<sweep>/ holds copies of the summary.json and summary.md that a documented command wrote into its sweep
folder. summary.md must render summary.json, each summary must come from the command documented for it, and the
two lines in each recipe's header must render results/compare-digits/summary.json (lsmooth.report.headline).
"""

import textwrap
from pathlib import Path

import pytest

from lsmooth.report import SUMMARY_MD, headline, load_summary, summary_markdown

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
COMMANDS = {  # results folder -> the documented command that wrote it (README, notebooks, results/README.md)
    "compare-digits": "python recipes/compare.py",
    "noise-digits": "python recipes/compare.py --eps -0.1 0 0.1 0.3 --noise 0 0.2 0.4 --seeds 0 1 2 --epochs 3 "
                    "--executor local --out runs/noise-digits",
    "variants-digits": "python recipes/compare.py --smoothing uniform two-stage online penalty --eps 0 0.1 "
                       "--noise 0.4 --seeds 0 1 2 3 4 5 6 7 8 9 --executor local --out runs/variants-digits",
}


@pytest.mark.parametrize("name", COMMANDS)
def test_summary_md_renders_summary_json_written_by_its_documented_command(name):
    data = load_summary(RESULTS / name)
    assert (RESULTS / name / SUMMARY_MD).read_text() == summary_markdown(data)
    assert data["provenance"]["command"] == COMMANDS[name]
    assert data["provenance"]["commands"][0]["command"] == COMMANDS[name]  # the sweep folder was new
    assert sorted(RESULTS.iterdir()) == sorted([RESULTS / "README.md", *(RESULTS / n for n in COMMANDS)])


@pytest.mark.parametrize("recipe", ["compare.py", "pets.py"])
def test_recipe_headers_show_the_committed_headline(recipe):
    text = (ROOT / "recipes" / recipe).read_text()
    want = "\n".join(headline(load_summary(RESULTS / "compare-digits")))
    block = text.split("Measured here (results/compare-digits/summary.json):\n", 1)[1].split("\nRun: ", 1)[0]
    should = textwrap.indent(want, "    ")
    assert textwrap.dedent(block).strip() == want, f"recipes/{recipe}'s header should read:\n{should}"
