"""lsmooth.checkpoint and lsmooth.train.resume: a killed run, resumed, ends exactly like an uninterrupted one.

The reference is one uninterrupted 3-epoch run on `tiny` (module fixture). On one CPU every random
stream is restored, so the comparison is ``==``, not a tolerance.
"""

import dataclasses
import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import epochs_table, final_metrics, one_line, recipe, recipe_env, tiny_argv, tiny_config, wait_for
from fastai.callback.core import Callback

import lsmooth.train as T
from lsmooth import checkpoint
from lsmooth.runs import CHECKPOINT_FILE, CONFIG_FILE, ENV_FILE, FINAL_FILE, METRICS_FILE, PREDS_FILE
from lsmooth.train import resume, train

RUN = dict(epochs=3, noise=0.2)  # noise: the resumed run must rebuild the same noisy labels
FINISHED = {CONFIG_FILE, ENV_FILE, METRICS_FILE, FINAL_FILE, PREDS_FILE}


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory) -> Path:
    """An uninterrupted run: the folder every other run here is compared with."""
    return Path(train(tiny_config(tiny_dir, tmp_path_factory.mktemp("ref"), **RUN))["run_dir"])


class StopMidEpoch(Callback):
    """Ctrl-C in the middle of epoch 1, after epoch 0's checkpoint was written."""

    def before_batch(self):
        if self.training and self.epoch == 1 and self.iter == 2:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_ctrl_c_then_resume_ends_like_an_uninterrupted_run(tiny_dir, tmp_path, capsys, monkeypatch, reference):
    real = T.vision_learner
    monkeypatch.setattr(T, "vision_learner", lambda *a, **k: real(*a, **k).add_cb(StopMidEpoch()))
    with pytest.raises(T.Interrupted) as info:
        train(tiny_config(tiny_dir, tmp_path, **RUN))
    monkeypatch.undo()
    run = info.value.run_dir
    assert {p.name for p in run.iterdir()} == {CONFIG_FILE, ENV_FILE, METRICS_FILE, CHECKPOINT_FILE}
    assert len(epochs_table(run)) == 1
    ckpt = torch.load(run / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["epoch"] == 0 and {"model", "opt", "rng", "smooth_loss", "scaler", "rows"} <= ckpt.keys()

    (run / f".{CHECKPOINT_FILE}.x.tmp").write_bytes(b"half")  # a kill during a checkpoint write
    capsys.readouterr()
    final = resume(run)
    assert f"resuming {run} after epoch 1 of 3" in capsys.readouterr().out
    assert final_metrics(run) == final_metrics(reference) and final == json.loads((run / FINAL_FILE).read_text())
    assert epochs_table(run) == epochs_table(reference)  # every epoch exactly once
    assert {p.name for p in run.iterdir()} == FINISHED  # checkpoint and stray temp gone
    assert resume(run) == final
    assert "already finished" in capsys.readouterr().out


@pytest.mark.slow
def test_sigint_of_the_command_says_how_to_resume_and_sigkill_then_resume_is_exact(tiny_dir, tmp_path, reference):
    """The real command line: Ctrl-C prints the resume command; after SIGKILL, --resume ends like the reference."""
    for sig, out in ((signal.SIGINT, tmp_path / "int"), (signal.SIGKILL, tmp_path / "kill")):
        proc = subprocess.Popen(recipe(*tiny_argv(tiny_dir, out)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=recipe_env(), cwd=tmp_path)
        ckpt = wait_for(out, f"*/{CHECKPOINT_FILE}", proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig == signal.SIGINT:
            assert proc.returncode == 130
            hint = f"pets.py: interrupted; continue with: python recipes/pets.py --resume {ckpt.parent}"
            assert one_line(err) == hint
    run = ckpt.parent
    assert not (run / FINAL_FILE).exists()
    res = subprocess.run(recipe("--resume", run, "--threads", 1), capture_output=True, text=True, timeout=300,
                         env=recipe_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert final_metrics(run) == final_metrics(reference)
    assert epochs_table(run) == epochs_table(reference)


# ---------------------------------------------------------------- what cannot be resumed
@pytest.fixture
def cut_run(tiny_dir, tmp_path) -> Path:
    """A run folder as a kill after epoch 0 leaves it (a config, a checkpoint of other data)."""
    run = tmp_path / "cut"
    run.mkdir()
    config = dataclasses.asdict(T.resolve(tiny_config(tiny_dir, tmp_path, **RUN)))
    (run / CONFIG_FILE).write_text(json.dumps(config))
    torch.save({"epoch": 0, "data_id": "other data", "rng": [{}]}, run / CHECKPOINT_FILE)
    return run


def test_resume_without_a_run_folder_or_checkpoint(tmp_path, cut_run):
    with pytest.raises(T.ConfigError, match="no config.json"):
        resume(tmp_path / "nope")
    (cut_run / CHECKPOINT_FILE).unlink()
    with pytest.raises(checkpoint.ResumeError, match=f"no {CHECKPOINT_FILE}; the run stopped before"):
        resume(cut_run)


def test_resume_refuses_changed_data(cut_run):
    with pytest.raises(checkpoint.ResumeError, match="changed since the run started"):
        resume(cut_run, threads=1)


def test_resume_refuses_another_number_of_processes(cut_run):
    torch.save({"epoch": 0, "rng": [{}, {}]}, cut_run / CHECKPOINT_FILE)
    with pytest.raises(checkpoint.ResumeError, match="used 2 process"):
        resume(cut_run)
