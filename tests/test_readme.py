"""The README never lies: its snippets run as written, its result block is the committed summary rendered,
CI runs its test command, and it stays short."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def fenced_after(marker: str, lang: str) -> str:
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```{lang}\n(.*?)```", README.read_text(), re.S)
    assert match, f"no ```{lang} block after <!-- {marker} --> in README.md"
    return match.group(1)


def test_the_copied_loss_file_runs_the_snippet_alone(tmp_path):
    """In a folder holding only the copied losses.py, with lsmooth not importable, as a user who copied it."""
    shutil.copy(ROOT / "lsmooth" / "losses.py", tmp_path / "losses.py")
    snippet = "import sys\nsys.modules['lsmooth'] = None  # not installed\n" + fenced_after("snippet: loss", "python")
    res = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
def test_the_learner_snippet_records_the_run_and_resumes(tiny_dir, tmp_path, monkeypatch):
    """The snippet as written, after `from fastai.vision.all import *` and a `dls`: resnet34's ImageNet weights
    come from a cache filled with random ones (no network), the run lands in runs/pets-ls."""
    import torch
    import torchvision
    from conftest import tiny_dls

    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    url = torchvision.models.ResNet34_Weights.DEFAULT.url
    torch.save(torchvision.models.resnet34().state_dict(), hub / "checkpoints" / Path(url).name)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.chdir(tmp_path)
    from fastai.callback.core import Callback
    from fastai.learner import defaults

    class CtrlCAfterSecondEpoch(Callback):
        order = 100  # after ExactResume's checkpoint

        def after_epoch(self):
            if self.epoch == 1:
                raise KeyboardInterrupt

    namespace = {}
    exec("from fastai.vision.all import *", namespace)
    namespace["dls"] = tiny_dls(tiny_dir)
    snippet = compile(fenced_after("snippet: learner", "python"), "README.md", "exec")
    own = defaults.callbacks
    monkeypatch.setattr(defaults, "callbacks", [*own, CtrlCAfterSecondEpoch])  # in every new Learner
    with pytest.raises(KeyboardInterrupt):
        exec(snippet, namespace)
    run = tmp_path / "runs" / "pets-ls"
    before = (run / "metrics.csv").read_text().splitlines()
    assert len(before) == 1 + 2 and not (run / "final.json").exists()
    monkeypatch.setattr(defaults, "callbacks", own)
    exec(snippet, namespace)  # the same lines again, as the snippet says
    assert {p.name for p in run.iterdir()} == {"config.json", "env.json", "metrics.csv", "final.json",
                                               "valid_preds.pt"}
    after = (run / "metrics.csv").read_text().splitlines()
    assert after[:3] == before and [row.split(",")[0] for row in after[1:]] == ["0", "1", "2", "3"]


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text().split("cmd=$(", 1)[1].split(" README.md)", 1)[0]
    printed = subprocess.run(["bash", "-c", f"{script} {README}"], capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == fenced_after("test-command", "bash").strip()


def test_the_result_block_is_the_committed_summary():
    """The README's measured results are results/compare-digits/summary.json rendered, not typed by hand."""
    from lsmooth.report import load_summary, snippet

    match = re.search(r"<!-- results:compare-digits -->\n(.*?)<!-- /results:compare-digits -->", README.read_text(),
                      re.S)
    assert match, "no <!-- results:compare-digits --> block in README.md"
    want = snippet(load_summary(ROOT / "results" / "compare-digits"), markdown=True)
    assert match.group(1).strip() == want.strip(), f"README results differ from results/compare-digits:\n{want}"


def test_the_readme_is_for_users_short_and_without_development_history():
    text = README.read_text()
    assert len(text.splitlines()) <= 160
    assert not re.search(r"\b(until|since|before) 20\d\d-\d\d-\d\d|\bwas \d+(\.\d+)?×", text)
    first_screen = "\n".join(text.splitlines()[:60])
    for piece in ("LabelSmoothingCrossEntropy(eps=0.1)", "<!-- main-command -->", "<!-- test-command -->",
                  "<!-- results:compare-digits -->", "results/compare-digits/summary.json"):
        assert piece in first_screen, piece
