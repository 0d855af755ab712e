"""The notebooks: structure, prose without typed measurements, the `notebooks` extra, a clear stop when the
sweep is missing, and (slow) a headless run against a sweep folder (the session's tiny sweep).

Against the tiny sweep the cells must run and the helpers fit together; the numbers are not the point. The
committed outputs come from the documented compare.py commands on digits (each notebook's first cell prints
which).
"""

import json
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAKES = {  # the command each notebook names when its sweep is missing (then: --out <results_dir>)
    "01_error_rate": "python recipes/compare.py",
    "02_calibration": "python recipes/compare.py",
    "03_noisy_labels": "python recipes/compare.py --eps -0.1 0 0.1 0.3 --noise 0 0.2 0.4 --seeds 0 1 2 --epochs 3 "
                       "--executor local",
    "04_beyond_uniform": "python recipes/compare.py --smoothing uniform two-stage online penalty --eps 0 0.1 "
                         "--noise 0.4 --seeds 0 1 2 3 4 5 6 7 8 9 --executor local",
}
# Numbers markdown may state: the design (eps, noise rates, seeds, epochs, 16 px, 15 bins, the 20% split, the
# two-stage switch at 75%), years of the cited papers, and published figures (Müller et al. 2019's ECE table,
# Wei et al. 2022, Zhang et al. 2021). A measured number belongs in an output computed from the sweep.
ALLOWED_NUMBERS = {
    "0", "1", "2", "3", "8", "10", "15", "16", "20%", "40%", "75%", "95%", "100", "36", "50", "01", "0.5", "4",
    "0.1", "0.3", "−0.1", "0.05",  # eps, alpha, beta values
    "2016", "2017", "2019", "2020", "2021", "2022",  # papers
    "0.150", "0.024", "0.021", "1.9", "0.071", "0.035", "0.022",  # Müller et al. 2019, table
    "60%", "73", "74%", "75.3%", "77.4%", "−6",  # Wei et al. 2022
    "2.00", "1.11",  # Zhang et al. 2021 (ResNet-50)
}


def cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text())["cells"]


def test_notebooks_exist_with_a_parameters_cell_and_outputs():
    assert [nb.stem for nb in NOTEBOOKS] == list(MAKES)
    for nb in NOTEBOOKS:
        every = cells(nb)
        tagged = [c for c in every if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1 and "".join(tagged[0]["source"]).startswith("results_dir = "), nb.name
        assert all(c.get("outputs") or c["cell_type"] != "code" or c is tagged[0] for c in every), \
            f"{nb.name}: committed without outputs"


def test_notebooks_read_sweeps_with_the_library_and_train_nothing():
    for nb in NOTEBOOKS:
        code = "\n".join("".join(c["source"]) for c in cells(nb) if c["cell_type"] == "code")
        assert "sys.path" not in code and "importlib" not in code and "recipes" not in code.replace(
            "python recipes/", ""), nb.name
        assert "from lsmooth import plots, report" in code and "fit" not in re.findall(r"\.(\w+)\(", code), nb.name


def test_markdown_states_no_measured_number():
    for nb in NOTEBOOKS:
        text = "\n".join("".join(c["source"]) for c in cells(nb) if c["cell_type"] == "markdown")
        text = re.sub(r"```.*?```", "", text, flags=re.S)  # commands
        numbers = set(re.findall(r"(?<![\w.])[−-]?\d+(?:\.\d+)?%?", text))
        assert numbers <= ALLOWED_NUMBERS, f"{nb.name}: typed numbers {sorted(numbers - ALLOWED_NUMBERS)}"


def test_the_notebooks_extra_installs_jupyterlab():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=\[ ]", req, maxsplit=1)[0] for req in extras["notebooks"]}
    assert {"jupyterlab", "ipykernel", "papermill"} <= names


def run(nb: Path, out: Path, cwd: Path | None = None, **parameters):
    papermill = pytest.importorskip("papermill")
    return papermill.execute_notebook(str(nb), str(out), parameters=parameters, cwd=str(cwd or nb.parent),
                                      kernel_name="python3", progress_bar=False)


def default_dir(nb: Path) -> str:
    tagged = next(c for c in cells(nb) if "parameters" in c.get("metadata", {}).get("tags", []))
    return re.match(r'results_dir = "([^"]+)"', "".join(tagged["source"])).group(1)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_without_its_sweep_a_notebook_stops_in_its_first_cell_naming_the_command(nb, tmp_path):
    """Its own folder missing: the command that makes it. Another folder: compare.py with --out that folder,
    never this notebook's command into it (digits results in a folder meant for Pets)."""
    from papermill.exceptions import PapermillExecutionError

    default = default_dir(nb)
    with pytest.raises(PapermillExecutionError) as info:  # a checkout without runs/: the default folder missing
        run(nb, tmp_path / nb.name, cwd=tmp_path)
    want = f"No sweep in {default}: run `{MAKES[nb.stem]} --out {default}` from the repository root first."
    assert info.value.ename == "FileNotFoundError" and info.value.evalue == want

    missing = tmp_path / "no-sweep"
    with pytest.raises(PapermillExecutionError) as info:
        run(nb, tmp_path / nb.name, results_dir=str(missing))
    want = (f"No sweep in {missing}: run `python recipes/compare.py <your flags> --out {missing}` from the "
            f"repository root first (this notebook's own sweep: `{MAKES[nb.stem]} --out {default}`).")
    assert info.value.ename == "FileNotFoundError" and info.value.evalue == want
    executed = [c for c in cells(tmp_path / nb.name) if c["cell_type"] == "code"]
    tags = [c["metadata"].get("tags", []) for c in executed]
    failed = next(i for i, c in enumerate(executed) if any(o["output_type"] == "error" for o in c["outputs"]))
    assert "injected-parameters" in tags[failed - 1]  # the first cell after the parameters


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_a_sweep_folder(nb, tmp_path, tiny_sweep):
    run(nb, tmp_path / nb.name, results_dir=str(tiny_sweep))
    outputs = [o for c in cells(tmp_path / nb.name) for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert [o for o in outputs if "image/png" in o.get("data", {})], "no plot was drawn"
    assert [o for o in outputs if "text/markdown" in o.get("data", {})], "no prose computed from the sweep"
