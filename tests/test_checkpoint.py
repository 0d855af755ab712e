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
    assert {p.name for p in run.iterdir()} == {CONFIG_FILE, ENV_FILE, METRICS_FILE, CHECKPOINT_FILE, "models"}
    assert [p.name for p in (run / "models").iterdir()] == ["model_0.pth"]
    assert len(epochs_table(run)) == 1
    ckpt = torch.load(run / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["epoch"] == 0 and {"model_file", "rng", "smooth_loss", "scaler", "rows"} <= ckpt.keys()
    assert ckpt["model_file"] == "models/model_0.pth"
    assert torch.load(run / "models" / "model_0.pth", weights_only=True).keys() == {"model", "opt"}

    (run / f".{CHECKPOINT_FILE}.x.tmp").write_bytes(b"half")  # a kill during a checkpoint write
    (run / "models" / ".model_1.pth.x.tmp").write_bytes(b"half")  # a kill during a model write
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
    torch.save({"epoch": 0, "data_id": "other data", "rng": [{}], "model_file": "models/model_0.pth"},
               run / CHECKPOINT_FILE)
    (run / "models").mkdir()
    torch.save({"model": {}, "opt": {}}, run / "models" / "model_0.pth")
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


def test_resume_refuses_a_checkpoint_whose_model_file_is_gone(cut_run):
    (cut_run / "models" / "model_0.pth").unlink()
    with pytest.raises(checkpoint.ResumeError, match="model_0.pth', which is missing"):
        resume(cut_run, threads=1)


def test_resume_refuses_another_number_of_processes(cut_run):
    torch.save({"epoch": 0, "rng": [{}, {}]}, cut_run / CHECKPOINT_FILE)
    with pytest.raises(checkpoint.ResumeError, match="used 2 process"):
        resume(cut_run)


# ---------------------------------------------------------------- the model file is fastai's
class KeepWeights(Callback):
    """After the Checkpoint callback: a copy of the weights of every epoch."""

    order = 80

    def before_fit(self):
        self.weights = []

    def after_epoch(self):
        self.weights.append({k: v.clone() for k, v in self.model.state_dict().items()})


class KillAt(Callback):
    """SIGKILL stand-in: raises when ``atomic_save_torch`` is about to write ``name`` at ``epoch``."""

    def __init__(self, monkeypatch, name: str, epoch: int):
        real = checkpoint.atomic_save_torch

        def save(path, obj):
            if Path(path).name == name and self.epoch == epoch:
                raise SystemExit("killed")
            return real(path, obj)

        monkeypatch.setattr(checkpoint, "atomic_save_torch", save)


def _learner(path: Path, *cbs):
    from fastai.test_utils import synth_learner

    torch.manual_seed(0)
    return synth_learner(path=path, cbs=[T.EpochLog(echo=False), checkpoint.Checkpoint("data"), *cbs])


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_learn_load_reads_the_model_file_of_the_last_epoch(tmp_path):
    learn = _learner(tmp_path, keep := KeepWeights())
    learn.fit(3)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model_2.pth"]  # older ones deleted
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 2 and state["model_file"] == "models/model_2.pth"
    assert not {"model", "opt"} & state.keys()
    saved = torch.load(tmp_path / "models" / "model_2.pth", weights_only=True)
    assert saved.keys() == {"model", "opt"}  # what learn.save(..., with_opt=True) writes

    fresh = _learner(tmp_path / "other")
    fresh.path = tmp_path
    assert not _same(fresh.model.state_dict(), keep.weights[2])
    fresh.load(checkpoint.model_name(2))  # fastai's own reader: model and optimizer
    assert _same(fresh.model.state_dict(), keep.weights[2])
    momentum = [[o.state[p]["grad_avg"] for p, *_ in o.all_params()] for o in (fresh.opt, learn.opt)]
    assert all(torch.equal(a, b) for a, b in zip(*momentum, strict=True))
    assert _same(checkpoint.read(tmp_path, 1)["model"], keep.weights[2])

    checkpoint.remove(tmp_path)
    assert not (tmp_path / CHECKPOINT_FILE).exists() and not (tmp_path / "models").exists()


def test_a_kill_between_the_model_file_and_the_state_leaves_the_previous_pair(tmp_path, monkeypatch):
    learn = _learner(tmp_path, keep := KeepWeights(), KillAt(monkeypatch, CHECKPOINT_FILE, epoch=1))
    with pytest.raises(SystemExit):
        learn.fit(3)
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == ["model_0.pth", "model_1.pth"]  # epoch 1's, unnamed yet
    (models / ".model_2.pth.x.tmp").write_bytes(b"half")
    ckpt = checkpoint.read(tmp_path, 1)
    assert ckpt["epoch"] == 0 and ckpt["model_file"] == "models/model_0.pth"
    assert _same(ckpt["model"], keep.weights[0])
    assert [p.name for p in models.iterdir()] == ["model_0.pth"]  # the stray newer file and temp file gone


def test_a_kill_during_the_model_write_leaves_the_previous_pair(tmp_path, monkeypatch):
    learn = _learner(tmp_path, keep := KeepWeights(), KillAt(monkeypatch, "model_1.pth", epoch=1))
    with pytest.raises(SystemExit):
        learn.fit(3)
    ckpt = checkpoint.read(tmp_path, 1)
    assert ckpt["epoch"] == 0 and _same(ckpt["model"], keep.weights[0])
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["model_0.pth"]
