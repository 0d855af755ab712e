"""recipes/pets.py as a user runs it: a command line (subprocess), one line and exit code 2 for bad input.

The training behind it is tested in test_train.py, test_checkpoint.py and test_distributed.py;
here only what the script adds: flags, --dry-run, --resume's refusals, the offline first error.
Each case starts a Python process that imports fastai (seconds), so they are few.
"""

import subprocess
from pathlib import Path

import pytest
from conftest import one_line, recipe, recipe_env


def run(*argv, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(recipe(*argv), capture_output=True, text=True, timeout=300, cwd=cwd, env=recipe_env(**env))


def _offline_env(tmp_path: Path) -> dict:
    """No server reachable and empty caches: what a fresh user without network has."""
    dead = "http://127.0.0.1:9"  # discard port: every download fails at once
    return dict(http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead,
                FASTAI_HOME=str(tmp_path / "fastai"), TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"))


def test_offline_the_first_error_names_every_way_out(tmp_path):
    res = run("--out", tmp_path / "runs", cwd=tmp_path, **_offline_env(tmp_path))
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert line.startswith("pets.py: error: could not download Oxford-IIIT Pets")
    for way_out in ("--data PATH", "--dataset digits", "--no-pretrained", str(tmp_path / "torch" / "hub")):
        assert way_out in line, line


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--arch", "resnet43"], "pets.py: error: --arch 'resnet43' is not a torchvision or timm model; did you mean"),
        (["--bogus"], "pets.py: error: unrecognized arguments: --bogus (see --help)"),
    ],
    ids=["bad-value", "unknown-flag"],
)
def test_bad_input_is_one_line_exit_2(tmp_path, tiny_dir, argv, needle):
    res = run("--dataset", "tiny", "--data", tiny_dir, "--out", tmp_path / "r", *argv, cwd=tmp_path)
    assert res.returncode == 2 and needle in one_line(res.stderr)
    assert res.stdout == "" and not (tmp_path / "r").exists()


def test_dry_run_and_resume_refusals(tmp_path, tiny_dir):
    res = run("--dataset", "tiny", "--data", tiny_dir, "--noise", 0.2, "--item-size", 40, "--dry-run",
              "--out", tmp_path / "runs", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert '"item_size": 40' in res.stdout and "label noise: 36 of 178 training labels changed" in res.stdout
    assert not (tmp_path / "runs").exists()
    res = run("--resume", tmp_path / "x", "--threads", 1, "--eps", 0.2, "--dataset", "digits", cwd=tmp_path)
    assert res.returncode == 2
    assert one_line(res.stderr).endswith(f"settings from {tmp_path / 'x'}/config.json; drop --dataset, --eps")

