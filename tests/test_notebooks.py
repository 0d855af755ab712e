"""Every notebook executes headlessly in quick mode (its own tiny sweep) with papermill.

Quick mode trains on the generated ``tiny`` dataset for one epoch, so this checks that the cells
run and the shared helpers fit together, not the numbers. The committed outputs come from the
documented compare.py commands on ``digits`` (stated at the top of each notebook).
"""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist_with_a_parameters_cell():
    assert [nb.name for nb in NOTEBOOKS] == ["01_error_rate.ipynb", "02_calibration.ipynb", "03_noisy_labels.ipynb"]
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1 and "quick = False" in "".join(tagged[0]["source"]), nb.name
        assert all(c.get("outputs") or c["cell_type"] != "code" or c is tagged[0] for c in cells), \
            f"{nb.name}: committed without outputs"


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(nb, tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / nb.name
    papermill.execute_notebook(
        str(nb), str(out), parameters={"quick": True, "results_dir": str(tmp_path / "sweep")},
        cwd=str(nb.parent), kernel_name="python3", progress_bar=False,
    )
    cells = json.loads(out.read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "no plot was drawn"
    assert list((tmp_path / "sweep-quick").glob("results*.jsonl"))
