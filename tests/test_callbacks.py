"""lsmooth.callbacks in a Learner of the test's own: RecordRun's files, SmoothingSchedule, online label
smoothing, bf16 autocast on the CPU. (ExactResume: test_resume.py.)"""

import json

import pytest
import torch
from conftest import epochs_table, tiny_learner
from fastai.callback.core import Callback
from fastai.callback.schedule import SchedLin
from torch.testing import assert_close

from lsmooth import LabelSmoothingCrossEntropy, brier, ece, nll, temperature_scaling
from lsmooth.callbacks import CPUAutocast, OnlineLabelSmoothing, RecordRun, SmoothingSchedule, two_stage
from lsmooth.online import OnlineLabelSmoothingCrossEntropy
from lsmooth.runs import CONFIG_FILE, ENV_FILE, FINAL_FILE, METRICS_FILE, PREDS_FILE


@pytest.fixture(scope="module")
def recorded(tiny_dir, tmp_path_factory):
    """A 2-epoch fit recorded by RecordRun(echo=True), and what the model predicts after it (fastai's get_preds)."""
    run = tmp_path_factory.mktemp("run") / "r"
    cbs = [RecordRun({"eps": 0.1, "note": "x"}, echo=True)]
    learn = tiny_learner(tiny_dir, run, LabelSmoothingCrossEntropy(0.1), cbs)
    learn.fit_one_cycle(2, 1e-2)
    last = [float(v) for v in learn.recorder.values[-1]]  # before get_preds adds a row of its own
    probs, targets = learn.get_preds()
    return run, learn, probs, targets, last


def test_record_run_writes_the_run_folder(recorded):
    run, learn, *_, last = recorded
    assert {p.name for p in run.iterdir()} == {CONFIG_FILE, ENV_FILE, METRICS_FILE, FINAL_FILE, PREDS_FILE}
    config = json.loads((run / CONFIG_FILE).read_text())
    assert config == {"eps": 0.1, "note": "x", "loss": repr(learn.loss_func), "n_epoch": 2, "n_train": 178,
                      "n_valid": 44, "n_classes": 37, "processes": 1}
    assert {"torch", "fastai", "device", "cpu", "torch_threads", "load_avg", "git_commit"} <= json.loads(
        (run / ENV_FILE).read_text()).keys()
    rows = epochs_table(run)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert list(rows[0]) == ["epoch", "train_loss", "valid_loss", "error_rate", "accuracy", "nll", "ece", "brier"]
    assert [float(v) for v in list(rows[-1].values())[1:]] == pytest.approx(last)  # the recorder's, every column


def test_final_metrics_are_those_of_the_trained_model(recorded):
    """Captured during the last validation, valid_preds.pt equals what get_preds computes after the fit."""
    run, _, probs, targets, _ = recorded
    saved = torch.load(run / PREDS_FILE, weights_only=True)
    assert_close(saved["probs"], probs, rtol=1e-5, atol=1e-6)
    assert torch.equal(saved["targets"], targets)
    final = json.loads((run / FINAL_FILE).read_text())
    p, t = saved["probs"], saved["targets"]
    expected = {"error_rate": float((p.argmax(1) != t).double().mean()), "nll": nll(p, t), "ece": ece(p, t),
                "brier": brier(p, t), **temperature_scaling(p, t)}
    halves = expected.pop("temperature_halves")
    assert {k: final[k] for k in expected} == pytest.approx(expected) and final["temperature_halves"] == halves
    assert final["accuracy"] == pytest.approx(1 - final["error_rate"])
    assert final["epochs"] == 2 and final["n_valid"] == 44 and final["fit_time_s"] > 0 and final["images_per_s"] > 0


def test_echo_prints_one_row_per_epoch_and_the_result(tiny_dir, tmp_path, capsys):
    learn = tiny_learner(tiny_dir, tmp_path / "r", cbs=[RecordRun(echo=True)])
    learn.fit(1, 1e-3)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["epoch", "train_loss", "valid_loss", "error_rate", "accuracy", "nll", "ece", "brier",
                              "time"]
    assert out[1].split()[0] == "0" and out[-1] == f"run folder: {tmp_path / 'r'}" and out[-2].startswith("error ")


def test_get_preds_and_validate_after_the_fit_leave_the_record_alone(recorded):
    run, learn, *_ = recorded
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    learn.validate()
    learn.get_preds()
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_new_fit_in_the_folder_replaces_the_old_results(tiny_dir, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / FINAL_FILE).write_text("{}")
    (run / PREDS_FILE).write_text("old")

    class Check(Callback):
        order = 80

        def before_train(self):
            assert not (run / FINAL_FILE).exists() and not (run / PREDS_FILE).exists()

    tiny_learner(tiny_dir, run, cbs=[RecordRun(), Check()]).fit(1, 1e-3)
    assert json.loads((run / FINAL_FILE).read_text())["epochs"] == 1


# ---------------------------------------------------------------- SmoothingSchedule
class EpsSeen(Callback):
    """The loss's eps at every training batch, after the schedule set it."""

    order = 25

    def before_fit(self):
        self.seen = []

    def before_batch(self):
        if self.training:
            self.seen.append((self.pct_train, self.learn.loss_func.eps))


@pytest.mark.parametrize("sched, expected", [
    (SchedLin(0.3, 0.0), lambda pct: 0.3 * (1 - pct)),
    (two_stage(0.2, until=0.5), lambda pct: 0.2 if pct < 0.5 else 0.0),
], ids=["linear", "two-stage"])
def test_the_schedule_sets_eps_every_batch_and_records_it(tiny_dir, tmp_path, sched, expected):
    seen = EpsSeen()
    learn = tiny_learner(tiny_dir, tmp_path / "r", LabelSmoothingCrossEntropy(0.1),
                         [SmoothingSchedule(sched), seen, RecordRun()])
    learn.fit(2, 1e-3)
    assert len(seen.seen) == 2 * 5  # 178 images, bs 32, last partial batch dropped
    for pct, eps in seen.seen:
        assert eps == pytest.approx(expected(pct))
    rows = epochs_table(tmp_path / "r")
    assert [float(r["eps"]) for r in rows] == pytest.approx([seen.seen[4][1], seen.seen[9][1]])  # each epoch's last
    assert "eps" not in [getattr(m, "name", "") for m in learn.metrics]  # taken out again after the fit


def test_two_stage_refuses_a_switch_outside_the_fit():
    with pytest.raises(ValueError, match="until=1.0"):
        two_stage(0.1, until=1.0)


def test_the_schedule_needs_a_loss_with_eps(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="CrossEntropyLossFlat has none"):
        tiny_learner(tiny_dir, tmp_path, cbs=[SmoothingSchedule(SchedLin(0.1, 0))]).fit(1)


# ---------------------------------------------------------------- online label smoothing
class KeepBatches(Callback):
    """Every training batch's logits and targets, and the loss's targets at each epoch's start."""

    order = 40

    def before_fit(self):
        self.batches, self.targets = [], []

    def before_train(self):
        self.targets.append(self.learn.loss_func.targets.clone())
        self.batches.append([])

    def after_loss(self):
        if self.training:
            self.batches[-1].append((self.pred.detach().clone(), self.yb[0].clone()))


def test_online_smoothing_learns_each_epochs_targets_from_the_correct_predictions(tiny_dir, tmp_path):
    keep = KeepBatches()
    learn = tiny_learner(tiny_dir, tmp_path, cbs=[OnlineLabelSmoothing(alpha=0.5), keep])
    learn.fit(2, 1e-2)
    k = 37
    assert_close(keep.targets[0], torch.full((k, k), 1 / k))  # uniform in the first epoch
    sums, counts = torch.zeros(k, k), torch.zeros(k)  # epoch 0's statistics, by hand
    for logits, y in keep.batches[0]:
        p = torch.softmax(logits.float(), 1)
        right = p.argmax(1) == y
        for i in right.nonzero().flatten().tolist():
            sums[y[i]] += p[i]
            counts[y[i]] += 1
    assert counts.sum() > 0
    expected = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], keep.targets[0])
    assert_close(keep.targets[1], expected, rtol=1e-5, atol=1e-6)
    assert type(learn.loss_func).__name__ == "CrossEntropyLossFlat"  # the learner's own loss is back


def test_online_smoothing_refuses_bad_values_when_added():
    with pytest.raises(ValueError, match="alpha"):
        OnlineLabelSmoothing(alpha=1.5)


def test_online_loss_is_the_one_of_lsmooth_online(tiny_dir, tmp_path):
    class Spy(Callback):
        order = 40

        def before_train(self):
            self.seen = self.learn.loss_func

    spy = Spy()
    tiny_learner(tiny_dir, tmp_path, cbs=[OnlineLabelSmoothing(alpha=0.3), spy]).fit(1, 1e-3)
    assert isinstance(spy.seen, OnlineLabelSmoothingCrossEntropy) and spy.seen.alpha == 0.3


# ---------------------------------------------------------------- bf16 on the CPU
def test_bf16_autocast_on_the_cpu_trains_and_records(tiny_dir, tmp_path):
    """A small CNN: bf16 on a CPU without bf16 units is slow (a ResNet18 epoch: a minute here)."""
    from conftest import tiny_dls
    from fastai.vision.all import ConvLayer, Flatten, Learner, error_rate, nn

    class Dtype(Callback):
        order = 5  # after_pred before CPUAutocast's, which casts the prediction back to float32

        def after_pred(self):
            self.seen = self.pred.dtype

    seen = Dtype()
    model = nn.Sequential(ConvLayer(3, 8, stride=2), nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(8, 37))
    learn = Learner(tiny_dls(tiny_dir), model, metrics=error_rate, path=tmp_path,
                    cbs=[CPUAutocast(), seen, RecordRun()])
    learn.fit(1, 1e-3)
    assert seen.seen == torch.bfloat16
    assert 0 <= json.loads((tmp_path / FINAL_FILE).read_text())["error_rate"] <= 1


# ---------------------------------------------------------------- with fastai's own callbacks, and Ctrl-C
def test_a_fit_stopped_early_is_recorded_with_its_last_validated_model(tiny_dir, tmp_path):
    from fastai.callback.tracker import EarlyStoppingCallback

    stop = EarlyStoppingCallback(monitor="valid_loss", patience=0, min_delta=1e9)  # stops after the second epoch
    learn = tiny_learner(tiny_dir, tmp_path, cbs=[RecordRun(), stop])
    learn.fit(5, 1e-3)
    assert [r["epoch"] for r in epochs_table(tmp_path)] == ["0", "1"]  # the last epoch's row too
    final = json.loads((tmp_path / FINAL_FILE).read_text())
    assert final["epochs"] == 2 and final["n_valid"] == 44


def test_lr_find_leaves_the_run_folder_alone(recorded):
    run, learn, *_ = recorded
    def files():  # fastai's lr_find may leave an empty models/ behind (its _tmp.pth is deleted): files only
        return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}

    before = files()
    learn.lr_find(num_it=5, show_plot=False)
    assert files() == before


def test_a_fit_run_again_after_ctrl_c_keeps_one_eps_column_and_the_users_own_loss(tiny_dir, tmp_path):
    class StopOnce(Callback):
        def before_batch(self):
            if self.training and self.iter == 1 and not getattr(self, "done", False):
                self.done = True
                raise KeyboardInterrupt

    own = LabelSmoothingCrossEntropy(0.2)
    schedule, online, stop = SmoothingSchedule(SchedLin(0.3, 0.0)), OnlineLabelSmoothing(), StopOnce()
    learn = tiny_learner(tiny_dir, tmp_path / "s", own, [schedule, RecordRun(), stop])
    with pytest.raises(KeyboardInterrupt):
        learn.fit(1, 1e-3)
    learn.fit(1, 1e-3)  # the same learner again, as a notebook cell run twice
    assert list(epochs_table(tmp_path / "s")[0]).count("eps") == 1
    assert learn.loss_func is own and own.eps == 0.2  # its own eps back after the fit
    learn = tiny_learner(tiny_dir, tmp_path / "o", own, [online, StopOnce()])
    with pytest.raises(KeyboardInterrupt):
        learn.fit(1, 1e-3)
    learn.fit(1, 1e-3)
    assert learn.loss_func is own
