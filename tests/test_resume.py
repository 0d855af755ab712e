"""lsmooth.resume.ExactResume: a fit killed at any point and started again in its folder ends exactly like an
uninterrupted one (on one CPU every random stream is restored, so the comparison is ``==``); its files are
fastai's own format; what cannot be resumed is refused in one line."""

from pathlib import Path

import pytest
import torch
from conftest import epochs_table, final_metrics, tiny_learner
from fastai.callback.core import Callback

import lsmooth.resume as R
from lsmooth import LabelSmoothingCrossEntropy
from lsmooth.callbacks import OnlineLabelSmoothing, RecordRun
from lsmooth.cli import _message
from lsmooth.resume import ExactResume, ResumeError, model_name
from lsmooth.runs import CHECKPOINT_FILE, CONFIG_FILE, ENV_FILE, FINAL_FILE, METRICS_FILE, PREDS_FILE

FINISHED = {CONFIG_FILE, ENV_FILE, METRICS_FILE, FINAL_FILE, PREDS_FILE}


class StopAt(Callback):
    """Ctrl-C in the middle of ``epoch``, after the checkpoint of the epoch before."""

    def __init__(self, epoch: int):
        self.at = epoch

    def before_batch(self):
        if self.training and self.epoch == self.at and self.iter == 2:
            raise KeyboardInterrupt


def _fit(tiny_dir, run: Path, *cbs, online: bool = False):
    loss = None if online else LabelSmoothingCrossEntropy(0.1)
    extra = [OnlineLabelSmoothing(0.5)] if online else []
    learn = tiny_learner(tiny_dir, run, loss, [RecordRun({"seed": 0}), ExactResume(), *extra, *cbs], noise=0.2)
    learn.fit_one_cycle(3, 1e-2)
    return learn


@pytest.mark.slow
@pytest.mark.parametrize("online", [False, True], ids=["uniform", "online"])
def test_ctrl_c_then_the_same_fit_again_ends_like_an_uninterrupted_one(tiny_dir, tmp_path, capsys, online):
    """Online smoothing's statistics are in the checkpoint too (the loss's state_dict)."""
    _fit(tiny_dir, tmp_path / "ref", online=online)
    run = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_dir, run, StopAt(2), online=online)
    R.finish_writes()  # epoch 1's checkpoint, written in the background
    assert {p.name for p in run.iterdir()} == {CONFIG_FILE, ENV_FILE, METRICS_FILE, CHECKPOINT_FILE, "models",
                                               ".fit.lock"}
    assert [p.name for p in (run / "models").iterdir()] == ["resume-fit0-epoch1.pth"]
    ckpt = torch.load(run / CHECKPOINT_FILE, weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["model_file"] == "models/resume-fit0-epoch1.pth"
    assert (ckpt["loss"] is not None) == online
    (run / f".{CHECKPOINT_FILE}.x.tmp").write_bytes(b"half")  # a kill during a checkpoint write
    (run / "models" / ".resume-fit0-epoch2.pth.x.tmp").write_bytes(b"half")  # a kill during a model write
    capsys.readouterr()
    _fit(tiny_dir, run, online=online)
    assert f"resuming {run} after epoch 2 of 3" in capsys.readouterr().out
    assert final_metrics(run) == final_metrics(tmp_path / "ref")
    assert epochs_table(run) == epochs_table(tmp_path / "ref")  # every epoch once, the same values
    assert {p.name for p in run.iterdir()} == FINISHED  # checkpoint, stray temp files and lock gone


# ---------------------------------------------------------------- the files are fastai's
class KeepWeights(Callback):
    """After ExactResume: a copy of the weights after every epoch."""

    order = 95

    def before_fit(self):
        self.weights, self.momentum = [], []

    def after_epoch(self):
        self.weights.append({k: v.clone() for k, v in self.model.state_dict().items()})
        self.momentum.append([self.opt.state[p]["grad_avg"].clone() for p, *_ in self.opt.all_params()])


class KillAt(Callback):
    """A SIGKILL stand-in: raises when ExactResume is about to write file ``name`` of epoch ``epoch``."""

    def __init__(self, monkeypatch, name: str, epoch: int):
        real = R.atomic_save_torch

        def save(path, obj):
            if Path(path).name == name and obj.get("epoch", epoch) == epoch:  # model files: the name says the epoch
                raise SystemExit("killed")
            return real(path, obj)

        monkeypatch.setattr(R, "atomic_save_torch", save)


def _synth(path: Path, *cbs):
    from fastai.test_utils import synth_learner

    torch.manual_seed(0)
    return synth_learner(path=path, cbs=[ExactResume(), *cbs])


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _checkpoint(run: Path) -> tuple[dict, dict]:
    state = torch.load(run / CHECKPOINT_FILE, weights_only=True)
    return state, torch.load(run / state["model_file"], weights_only=True)


def test_learn_load_reads_the_model_file(tmp_path):
    _synth(tmp_path).fit(3)
    assert not (tmp_path / CHECKPOINT_FILE).exists() and not (tmp_path / "models").exists()  # removed at the end

    learn = _synth(tmp_path, keep := KeepWeights(), StopAt(2))
    with pytest.raises(KeyboardInterrupt):
        learn.fit(3)
    R.finish_writes()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["resume-fit0-epoch1.pth"]  # older: deleted
    state, model = _checkpoint(tmp_path)
    assert state["epoch"] == 1 and state["model_file"] == "models/resume-fit0-epoch1.pth"
    assert model.keys() == {"model", "opt"}
    fresh = _synth(tmp_path / "other")
    fresh.path = tmp_path
    fresh.load(model_name(0, 1))  # fastai's own reader: model and optimizer (learn.save(..., with_opt=True)'s format)
    assert _same(fresh.model.state_dict(), keep.weights[1])
    loaded = [fresh.opt.state[p]["grad_avg"] for p, *_ in fresh.opt.all_params()]
    assert all(torch.equal(a, b) for a, b in zip(loaded, keep.momentum[1], strict=True))


@pytest.mark.parametrize("name", [CHECKPOINT_FILE, "resume-fit0-epoch1.pth"], ids=["between-the-files",
                                                                                 "during-the-model"])
def test_a_kill_while_writing_leaves_the_previous_epochs_pair(tmp_path, monkeypatch, name):
    with pytest.raises(SystemExit):
        _synth(tmp_path, keep := KeepWeights(), KillAt(monkeypatch, name, epoch=1)).fit(3)
    monkeypatch.undo()
    models = tmp_path / "models"
    (models / ".resume-fit0-epoch2.pth.x.tmp").write_bytes(b"half")
    state, model = _checkpoint(tmp_path)
    assert state["epoch"] == 0 and _same(model["model"], keep.weights[0])
    resumed = _synth(tmp_path, keep2 := KeepWeights())
    resumed.fit(3)
    assert len(keep2.weights) == 3 and _same(keep2.weights[0], keep.weights[0])  # epoch 0 skipped, not retrained
    assert not models.exists()  # the newer model file and the temp file went with the rest


# ---------------------------------------------------------------- what cannot be resumed
@pytest.fixture
def cut(tmp_path) -> Path:
    """A folder as a kill after epoch 0 of a 3-epoch fit leaves it."""
    with pytest.raises(KeyboardInterrupt):
        _synth(tmp_path, StopAt(1)).fit(3)
    R.finish_writes()  # epoch 0's checkpoint, written in the background
    return tmp_path


def _refused(cut: Path, match: str, epochs: int = 3):
    with pytest.raises(ResumeError, match=match) as info:
        _synth(cut).fit(epochs)
    assert "\n" not in _message(info.value)  # as pets.py shows it: one line, without fastai's prefix


def test_get_preds_and_validate_leave_a_checkpoint_alone(tmp_path):
    """They fire before_fit and after_fit too: an interrupted fit must stay resumable after a look at it."""
    learn = _synth(tmp_path, StopAt(1))
    with pytest.raises(KeyboardInterrupt):
        learn.fit(3)
    R.finish_writes()
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    learn.validate()
    learn.get_preds()
    learn.lr_find(num_it=5, show_plot=False)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    assert (tmp_path / "models" / "resume-fit0-epoch0.pth").exists()


def test_another_number_of_epochs_is_refused(cut):
    _refused(cut, "from a fit of 3 epochs, not 4", epochs=4)


def test_another_number_of_processes_is_refused(cut):
    state = torch.load(cut / CHECKPOINT_FILE, weights_only=True)
    torch.save(state | {"processes": 2}, cut / CHECKPOINT_FILE)
    _refused(cut, "written by 2 process")


def test_other_data_is_refused(cut):
    state = torch.load(cut / CHECKPOINT_FILE, weights_only=True)
    torch.save(state | {"data": "other"}, cut / CHECKPOINT_FILE)
    _refused(cut, "the data changed")


def test_a_missing_model_file_is_refused(cut):
    (cut / "models" / "resume-fit0-epoch0.pth").unlink()
    _refused(cut, "resume-fit0-epoch0.pth', which is missing")


def test_a_folder_another_process_fits_in_is_refused(tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"f = open({str(tmp_path / '.fit.lock')!r}, 'w'); fcntl.lockf(f, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        _refused(tmp_path, "another process is fitting in", epochs=1)
    finally:
        holder.kill()
        holder.wait()
    _synth(tmp_path).fit(1)  # the lock died with its process
    assert not (tmp_path / ".fit.lock").exists()


# ---------------------------------------------------------------- several fits, fastai's own callbacks
@pytest.mark.slow
def test_fine_tune_killed_in_its_second_fit_then_run_again_ends_like_an_uninterrupted_one(tiny_dir, tmp_path):
    """fine_tune is two fits (frozen, then unfrozen): run again, the first is skipped whole, the second resumes."""
    def fine_tune(run, *cbs):
        learn = tiny_learner(tiny_dir, run, LabelSmoothingCrossEntropy(0.1), [RecordRun(), ExactResume(), *cbs])
        learn.fine_tune(2, 1e-2, freeze_epochs=1)
        return learn

    fine_tune(tmp_path / "ref")

    class StopInTheSecondFit(Callback):
        def before_batch(self):
            if self.training and self.n_epoch == 2 and self.epoch == 1 and self.iter == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fine_tune(tmp_path / "cut", StopInTheSecondFit())
    R.finish_writes()
    assert torch.load(tmp_path / "cut" / CHECKPOINT_FILE, weights_only=True)["fit"] == 1
    fine_tune(tmp_path / "cut")
    assert final_metrics(tmp_path / "cut") == final_metrics(tmp_path / "ref")
    assert [r["epoch"] for r in epochs_table(tmp_path / "cut")] == ["0", "1", "2"]  # numbered on across fits
    assert epochs_table(tmp_path / "cut") == epochs_table(tmp_path / "ref")


def test_fastais_own_save_model_files_are_left_alone(tmp_path):
    from fastai.callback.tracker import SaveModelCallback

    _synth(tmp_path, SaveModelCallback(every_epoch=True)).fit(3)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model_0.pth", "model_1.pth", "model_2.pth"]
