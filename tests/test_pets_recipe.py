"""recipes/pets.py as users run it, a command: flags read before fastai is imported, one line for bad input,
the offline first error, --dry-run, --check, run folders by --name, resume after Ctrl-C and SIGKILL.

The pieces it is made of are tested in-process elsewhere (test_callbacks, test_resume, test_data). A case
that gets past the flags imports fastai in a fresh process (seconds), so those cases are few.
"""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, epochs_table, final_metrics, one_line, recipe, recipe_env, run_recipe, tiny_argv, wait_for

from lsmooth.runs import CHECKPOINT_FILE, CONFIG_FILE, ENV_FILE, FINAL_FILE, METRICS_FILE, PREDS_FILE

FINISHED = {CONFIG_FILE, ENV_FILE, METRICS_FILE, FINAL_FILE, PREDS_FILE}


def test_the_first_screen_is_lesson_1():
    """From the imports to fit_one_cycle in about 40 lines, with fastai's own pieces, before anything else."""
    lines = (ROOT / "recipes" / "pets.py").read_text().splitlines()
    first_import = next(i for i, line in enumerate(lines) if line.startswith(("import ", "from ")))
    fit = next(i for i, line in enumerate(lines) if "learn.fit_one_cycle(" in line)
    assert fit - first_import <= 45 and fit < 55
    head = "\n".join(lines[: fit + 1])
    for piece in ("get_image_files(path).sorted()", "RegexLabeller(", "RandomSplitter(valid_pct, seed=split_seed)",
                  "Resize(item_size)", "aug_transforms(size=size, min_scale=min_scale", "vision_learner(dls",
                  "learn.fit_one_cycle(epochs, lr)", "resnet34", "size=224, item_size=460, min_scale=0.75"):
        assert piece in head, piece


@pytest.mark.parametrize("argv", [["--help"], ["--epochs", "many"], ["--bogus"]], ids=["help", "bad-type", "unknown"])
def test_flags_are_read_before_anything_heavy_is_imported(argv, tmp_path):
    """--help and a mistyped flag import neither torch nor fastai (-X importtime lists every import)."""
    res = subprocess.run([sys.executable, "-X", "importtime", *recipe("pets.py", *argv)[1:]], capture_output=True,
                         text=True, cwd=tmp_path, env=recipe_env())
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in ("torch", "fastai", "lsmooth")}
    if argv == ["--help"]:
        assert res.returncode == 0 and "--noise-kind" in res.stdout and "--smoothing" in res.stdout
    else:  # argparse: its usage, then the error naming the flag
        errors = [line for line in res.stderr.splitlines() if not line.startswith("import time:")]
        assert res.returncode == 2 and errors[-1].startswith("pets.py: error: ") and argv[0] in errors[-1]


@pytest.mark.parametrize("argv, needle", [
    (["--epochs", "0"], "pets.py: error: --epochs 0: must be an integer >= 1"),
    (["--eps", "1.5"], "pets.py: error: eps=1.5 is not allowed"),  # the loss's own check
    (["--smoothing", "online", "--alpha", "2"], "alpha"),
    (["--arch", "resnet43"], "pets.py: error: --arch 'resnet43' is not a torchvision or timm model; did you mean"),
    (["--dataset", "imagenet"], "pets.py: error: --dataset 'imagenet': use one of pets, digits, tiny"),
    (["--data", "/nonexistent/pets"], "pets.py: error: data folder '/nonexistent/pets' does not exist"),
], ids=["epochs", "eps", "alpha", "arch", "dataset", "data"])
def test_bad_values_are_one_line_and_leave_nothing(argv, needle, tmp_path, tiny_dir):
    data = [] if "--data" in argv or "--dataset" in argv else ["--data", tiny_dir]
    res = run_recipe("pets.py", "--dataset", "tiny", *data, "--out", tmp_path / "r", *argv, cwd=tmp_path)
    assert res.returncode == 1 and needle in one_line(res.stderr)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_offline_the_first_error_names_every_way_out_and_prints_nothing_else(tmp_path):
    dead = "http://127.0.0.1:9"  # discard port: every download fails at once
    res = run_recipe("pets.py", "--out", tmp_path / "runs", cwd=tmp_path, http_proxy=dead, https_proxy=dead,
                     HTTP_PROXY=dead, HTTPS_PROXY=dead, FASTAI_HOME=tmp_path / "fastai", TORCH_HOME=tmp_path / "torch",
                     HF_HOME=tmp_path / "hf")
    line = one_line(res.stderr)
    assert res.returncode == 1 and line.startswith("pets.py: error: could not download Oxford-IIIT Pets")
    for way_out in ("--data PATH", "--dataset digits", "--no-pretrained", str(tmp_path / "torch" / "hub")):
        assert way_out in line, line
    assert res.stdout == ""  # no stray progress bar before it in a log
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_dry_run_and_check_write_nothing_and_refuse_what_the_run_would(tmp_path, tiny_dir):
    base = ["--dataset", "tiny", "--data", tiny_dir, "--out", tmp_path / "runs"]
    res = run_recipe("pets.py", *base, "--noise", 0.2, "--item-size", 40, "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert '"item_size": 40' in res.stdout and "label noise: 36 of 178 training labels changed" in res.stdout
    assert "222 images, 37 classes: 178 train / 44 valid" in res.stdout
    res = run_recipe("pets.py", *base, "--bs", 4096, "--dry-run", cwd=tmp_path)
    assert res.returncode == 1 and "--bs 4096: larger than the training set (178 images)" in one_line(res.stderr)
    res = run_recipe("pets.py", *base, "--bs", 4096, "--check", cwd=tmp_path)  # the check builds the data too
    assert res.returncode == 1 and "--bs 4096: larger than the training set (178 images)" in one_line(res.stderr)
    res = run_recipe("pets.py", *base, "--size", 48, "--dry-run", cwd=tmp_path)  # tiny's Resize 32 follows --size
    assert res.returncode == 0 and '"item_size": 48' in res.stdout
    if not torch.cuda.is_available():  # fp16 is the jobs' business: a check may run on a login node without GPUs
        res = run_recipe("pets.py", *base, "--precision", "fp16", "--dry-run", cwd=tmp_path)
        assert res.returncode == 1 and "--precision 'fp16': fp16 needs a CUDA GPU" in one_line(res.stderr)
        res = run_recipe("pets.py", *base, "--precision", "fp16", "--check", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    res = run_recipe("pets.py", *base, "--check", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip().splitlines()[-1].startswith("pets.py: settings ok")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_file_name_without_a_label_is_one_line_and_lsmooth_traceback_shows_the_traceback(tmp_path, tiny_dir):
    data = tmp_path / "data"
    shutil.copytree(tiny_dir, data)
    (data / "beagle_1.jpg").rename(data / "IMG0001.jpg")
    base = ["--dataset", "tiny", "--data", data, "--out", tmp_path / "runs", "--dry-run"]
    res = run_recipe("pets.py", *base, cwd=tmp_path)
    assert res.returncode == 1
    assert one_line(res.stderr) == (f"pets.py: error: no label in the file name {str(data / 'IMG0001.jpg')!r}: the "
                                    f"Pets layout names images <label>_<n>.<ext>, e.g. great_pyrenees_17.jpg")
    res = run_recipe("pets.py", *base, cwd=tmp_path, LSMOOTH_TRACEBACK="1")
    assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr and "DataError" in res.stderr


def test_resume_refusals(tmp_path):
    res = run_recipe("pets.py", "--resume", tmp_path / "x", cwd=tmp_path)
    assert res.returncode == 1 and "no config.json there; not a run folder" in one_line(res.stderr)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / CONFIG_FILE).write_text(json.dumps({"dataset": "tiny"}))
    res = run_recipe("pets.py", "--resume", tmp_path / "x", "--threads", 1, "--eps", 0.2, "--dataset", "digits",
                     cwd=tmp_path)
    assert res.returncode == 1
    assert one_line(res.stderr).endswith(f"settings from {tmp_path / 'x'}/config.json; drop --dataset, --eps")


# ---------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run through the command, named: the run every other is compared with."""
    out = tmp_path_factory.mktemp("ref")
    res = run_recipe("pets.py", *tiny_argv(tiny_dir, out, "--name", "ref"), cwd=out)
    assert res.returncode == 0, res.stderr
    assert {p.name for p in (out / "ref").iterdir()} == FINISHED
    return out / "ref"


@pytest.mark.slow
def test_a_named_run_folder_is_reused_only_for_the_same_settings(reference, tiny_dir):
    out = reference.parent
    res = run_recipe("pets.py", *tiny_argv(tiny_dir, out, "--name", "ref"), cwd=out)
    assert res.returncode == 0 and f"{reference} already finished" in res.stdout
    res = run_recipe("pets.py", *tiny_argv(tiny_dir, out, "--name", "ref", "--eps", 0.2), cwd=out)
    assert res.returncode == 1 and "holds a run with other settings (--eps 0.1)" in one_line(res.stderr)


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_sigkill_then_resume_ends_like_the_reference(reference, tiny_dir, tmp_path):
    for sig, out in ((signal.SIGINT, tmp_path / "int"), (signal.SIGKILL, tmp_path / "kill")):
        proc = subprocess.Popen(recipe("pets.py", *tiny_argv(tiny_dir, out)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=recipe_env(), cwd=tmp_path,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        ckpt = wait_for(out, f"*/{CHECKPOINT_FILE}", proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig == signal.SIGINT:
            assert proc.returncode == 130
            assert err.strip().splitlines()[-1] == (f"pets.py: interrupted; continue with: python "
                                                    f"{ROOT / 'recipes' / 'pets.py'} --resume {ckpt.parent}")
    run = ckpt.parent
    assert not (run / FINAL_FILE).exists()
    res = run_recipe("pets.py", "--resume", run, "--threads", 1, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert final_metrics(run) == final_metrics(reference)
    assert epochs_table(run) == epochs_table(reference)
    assert {p.name for p in run.iterdir()} == FINISHED


@pytest.mark.slow
def test_broken_and_odd_images_train_and_the_broken_one_is_named(messy_dir, tmp_path):
    res = run_recipe("pets.py", "--dataset", "tiny", "--data", messy_dir, "--out", tmp_path, "--epochs", 1, "--bs", 8,
                     "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "skipped 1 unreadable image(s): beagle_116.jpg" in res.stdout
    (run,) = tmp_path.glob("*-tiny-*")
    assert json.loads((run / CONFIG_FILE).read_text())["n_train"] + json.loads(
        (run / CONFIG_FILE).read_text())["n_valid"] == 24  # 25 images, one unreadable
