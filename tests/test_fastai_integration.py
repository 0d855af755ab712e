"""The lsmooth losses inside real fastai Learners, on tiny problems built in memory.

- single-label: 16x16 RGB images whose class is the dominant colour channel
  (``DataBlock(ImageBlock, CategoryBlock)``), loss ``LabelSmoothingCrossEntropy(0.1)``;
- segmentation: each quadrant of the image has its own dominant channel, which is the pixel's
  class (``MaskBlock``, a fully-convolutional model giving (N, K, H, W)), loss
  ``LabelSmoothingCrossEntropyFlat(0.1, axis=1)``;
- multi-label: each channel is independently bright or dark, the label set is the bright ones
  (``MultiCategoryBlock``), loss ``LabelSmoothingBCEWithLogits(0.1)``;
- the single-label problem again with ``ConfidencePenaltyCrossEntropy(0.1)``;
- tabular: a pandas DataFrame with a categorical and two continuous columns and a categorical
  target (``tabular_learner``, targets of shape (N, 1)), loss ``LabelSmoothingCrossEntropyFlat(0.1)``.

Labels and masks are computed from the pixels by module-level functions, so the DataBlocks need
no lookup table and an exported Learner pickles. Each problem is trained once per session.
"""

import copy
import functools
import math
import warnings
from dataclasses import dataclass

import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import numpy as np
import pandas as pd
import pytest
import torch
from fastai.callback.mixup import CutMix, MixUp
from fastai.data.block import CategoryBlock, DataBlock, MultiCategoryBlock
from fastai.learner import Learner, load_learner
from fastai.losses import LabelSmoothingCrossEntropyFlat as FastaiLabelSmoothingCrossEntropyFlat
from fastai.tabular.core import Categorify, Normalize
from fastai.tabular.data import TabularDataLoaders
from fastai.tabular.learner import tabular_learner
from fastai.torch_core import set_seed
from fastai.vision.data import ImageBlock, MaskBlock
from fastcore.basics import noop
from torch import nn
from torch.testing import assert_close

from lsmooth import (
    LabelSmoothingBCEWithLogits,
    LabelSmoothingCrossEntropy,
    LabelSmoothingCrossEntropyFlat,
)
from lsmooth.losses import ConfidencePenaltyCrossEntropy

COLOURS = ("red", "green", "blue")  # channel order of an RGB image
SIZE = 16  # image side in pixels
N_TRAIN, N_VALID = 96, 32
BS = 12  # not 16 (= SIZE), so a loss map (N, H, W) cannot silently broadcast against a (bs,) lambda
PROB_TOL = 1e-5  # float32 softmax rows sum to 1 within this
BRIGHT = 120  # a channel whose mean is above this is "on"


# ---------------------------------------------------------------------------------------------
# Data: uint8 HxWx3 arrays; labels are read off the pixels by the functions below.


def _pixels(rng: np.random.Generator, on: np.ndarray) -> np.ndarray:
    """Dark noise in [0, 80) everywhere, plus 140 on the channels where ``on`` is True."""
    return (rng.integers(0, 80, on.shape) + 140 * on).astype(np.uint8)


def make_single(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    on = np.zeros((n, SIZE, SIZE, 3), dtype=bool)
    on[np.arange(n), :, :, rng.integers(0, 3, n)] = True
    return list(_pixels(rng, on))


def make_seg(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    half = SIZE // 2
    on = np.zeros((n, SIZE, SIZE, 3), dtype=bool)
    for i in range(n):
        for r in (0, half):
            for c in (0, half):
                on[i, r : r + half, c : c + half, rng.integers(0, 3)] = True
    return list(_pixels(rng, on))


def make_multi(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    on = np.broadcast_to(rng.random((n, 1, 1, 3)) < 0.5, (n, SIZE, SIZE, 3))
    return list(_pixels(rng, on))


def colour_label(img: np.ndarray) -> str:
    return COLOURS[int(np.asarray(img).reshape(-1, 3).mean(0).argmax())]


def colour_mask(img: np.ndarray) -> np.ndarray:
    return np.asarray(img).argmax(-1).astype(np.uint8)


def bright_labels(img: np.ndarray):  # no `-> list[str]`: fastcore casts to the return type
    means = np.asarray(img).reshape(-1, 3).mean(0)
    return [c for c, m in zip(COLOURS, means, strict=True) if m > BRIGHT]


def split_train_valid(items):
    return list(range(N_TRAIN)), list(range(N_TRAIN, len(items)))


# ---------------------------------------------------------------------------------------------
# Models and learners.


def _cnn(n_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_out),
    )  # fmt: skip


def _fcn(n_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, n_out, 1))


@dataclass(frozen=True)
class Problem:
    name: str
    make: object
    y_block: object
    get_y: object
    model: object
    loss: object
    metric: object


def _accuracy(preds, targs):
    return (preds.argmax(1) == targs).float().mean()


def _multi_accuracy(preds, targs):
    return ((preds > 0) == targs.bool()).float().mean()


PROBLEMS = {
    "single": Problem(
        "single", make_single, CategoryBlock, colour_label, _cnn,
        lambda: LabelSmoothingCrossEntropy(0.1), _accuracy,
    ),
    "seg": Problem(
        "seg", make_seg, MaskBlock(codes=COLOURS), colour_mask, _fcn,
        lambda: LabelSmoothingCrossEntropyFlat(0.1, axis=1), _accuracy,
    ),
    "multi": Problem(
        "multi", make_multi, MultiCategoryBlock, bright_labels, _cnn,
        lambda: LabelSmoothingBCEWithLogits(0.1), _multi_accuracy,
    ),
    "penalty": Problem(
        "penalty", make_single, CategoryBlock, colour_label, _cnn,
        lambda: ConfidencePenaltyCrossEntropy(0.1), _accuracy,
    ),
}  # fmt: skip


def build_learner(problem: Problem, seed: int = 0, loss_func=None) -> Learner:
    set_seed(seed, reproducible=True)
    items = problem.make(np.random.default_rng(seed), N_TRAIN + N_VALID)
    block = DataBlock(blocks=(ImageBlock, problem.y_block), get_y=problem.get_y, splitter=split_train_valid)
    dls = block.dataloaders(items, bs=BS, num_workers=0)
    return Learner(dls, problem.model(len(COLOURS)), loss_func=loss_func or problem.loss(), metrics=problem.metric)


@dataclass
class Trained:
    learn: Learner
    before: list  # [valid loss, metric] of the untrained model
    after: list
    train_losses: list  # per batch


@functools.cache
def train(name: str) -> Trained:
    """Train the problem's learner once per session; tests only read from it."""
    learn = build_learner(PROBLEMS[name])
    with learn.no_bar(), learn.no_logging():
        before = list(learn.validate())
        learn.fit_one_cycle(3, 3e-2)
        train_losses = [float(x) for x in learn.recorder.losses]
        after = list(learn.validate())
    return Trained(learn, before, after, train_losses)


@pytest.fixture(params=list(PROBLEMS))
def trained(request) -> Trained:
    return train(request.param)


def _valid_items(learn: Learner, n: int = 4) -> list[np.ndarray]:
    return list(learn.dls.valid_ds.items[:n])


# ---------------------------------------------------------------------------------------------
# Training, get_preds, predict, export.


def test_fit_one_cycle_trains(trained):
    (loss0, acc0), (loss1, acc1) = trained.before, trained.after
    assert math.isfinite(loss1)
    assert loss1 < 0.7 * loss0, (loss0, loss1)
    assert acc1 >= 0.85 and acc1 > acc0 + 0.1, (acc0, acc1)
    losses = trained.train_losses
    k = len(losses) // 4
    assert all(map(math.isfinite, losses))
    assert np.mean(losses[-k:]) < 0.9 * np.mean(losses[:k]), losses


def test_get_preds_are_probabilities_of_the_raw_outputs(trained):
    learn = trained.learn
    probs, targs, decoded = learn.get_preds(with_decoded=True)
    raw, _ = learn.get_preds(act=noop)
    assert probs.shape == raw.shape and probs.shape[0] == N_VALID
    if isinstance(learn.loss_func, LabelSmoothingBCEWithLogits):
        assert probs.shape == (N_VALID, 3) and targs.shape == (N_VALID, 3)
        assert ((probs >= 0) & (probs <= 1)).all()
        assert_close(probs, torch.sigmoid(raw))
        assert torch.equal(decoded, probs > 0.5)
    else:
        assert ((probs >= 0) & (probs <= 1)).all()
        assert_close(probs.sum(1), torch.ones_like(probs.sum(1)), atol=PROB_TOL, rtol=0)
        assert_close(probs, torch.softmax(raw, 1))
        # class axis 1: (N, K) -> (N,), (N, K, H, W) -> (N, H, W), the targets' shape
        assert decoded.shape == targs.shape
        assert torch.equal(decoded, probs.argmax(1))
        assert (decoded == targs).float().mean() >= 0.85


def test_get_preds_with_loss_is_the_unreduced_loss(trained):
    learn = trained.learn
    raw, targs, losses = learn.get_preds(act=noop, with_loss=True)
    assert learn.loss_func.reduction == "mean"  # NoneReduce restored it
    lf = copy.deepcopy(learn.loss_func)
    lf.reduction = "none"
    expected = lf(raw, targs)
    # fastai averages a per-element loss map to one value per item
    expected = expected.reshape(len(raw), -1).mean(1)
    assert losses.shape == (N_VALID,)
    assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    assert_close(losses.mean(), learn.loss_func(raw, targs), rtol=1e-5, atol=1e-6)


def test_predict_returns_a_decoded_class(trained):
    learn = trained.learn
    lf = learn.loss_func
    for img in _valid_items(learn):
        decoded, dec_preds, probs = learn.predict(img)
        if isinstance(lf, LabelSmoothingBCEWithLogits):
            assert probs.shape == (3,) and ((probs >= 0) & (probs <= 1)).all()
            assert torch.equal(dec_preds, probs > 0.5)
            assert list(decoded) == [learn.dls.vocab[i] for i in dec_preds.nonzero().flatten()]
            assert all(isinstance(label, str) for label in decoded)
        elif isinstance(lf, LabelSmoothingCrossEntropyFlat):
            assert probs.shape == (3, SIZE, SIZE)
            assert_close(probs.sum(0), torch.ones(SIZE, SIZE), atol=PROB_TOL, rtol=0)
            assert torch.equal(dec_preds, probs.argmax(0))
            assert decoded.shape == (SIZE, SIZE)
            assert torch.equal(torch.as_tensor(decoded), dec_preds)
            truth = torch.as_tensor(colour_mask(img)).long()
            assert (dec_preds == truth).float().mean() >= 0.85
        else:
            assert probs.shape == (3,)
            assert_close(probs.sum(), torch.tensor(1.0), atol=PROB_TOL, rtol=0)
            assert int(dec_preds) == int(probs.argmax())
            assert decoded == learn.dls.vocab[int(dec_preds)] == colour_label(img)


@pytest.mark.filterwarnings("ignore:load_learner:UserWarning")
def test_export_load_learner_round_trip(trained, tmp_path):
    learn = trained.learn
    path = tmp_path / "export.pkl"
    learn.export(path)
    loaded = load_learner(path)
    assert type(loaded.loss_func) is type(learn.loss_func)
    assert vars(loaded.loss_func).keys() == vars(learn.loss_func).keys()
    for key in ("eps", "beta", "reduction", "ignore_index", "spread", "axis", "thresh"):
        assert getattr(loaded.loss_func, key, None) == getattr(learn.loss_func, key, None)
    items = _valid_items(learn, 8)
    want, _ = learn.get_preds(dl=learn.dls.test_dl(items, num_workers=0))
    got, _ = loaded.get_preds(dl=loaded.dls.test_dl(items, num_workers=0))
    assert_close(got, want)
    for img in items[:2]:
        a, b = learn.predict(img), loaded.predict(img)
        assert_close(b[2], a[2])
        assert torch.equal(b[1], a[1])
        if hasattr(a[0], "shape"):  # a mask
            assert torch.equal(torch.as_tensor(b[0]), torch.as_tensor(a[0]))
        else:  # a label or a list of labels
            assert b[0] == a[0]


@pytest.mark.filterwarnings("ignore:load_learner:UserWarning")
def test_export_keeps_nondefault_loss_settings(tmp_path):
    weight = torch.tensor([1.0, 2.0, 0.5])
    lf = LabelSmoothingCrossEntropy(0.2, weight, "sum", ignore_index=1, spread="others")
    learn = build_learner(PROBLEMS["single"], loss_func=lf)
    learn.export(tmp_path / "export.pkl")
    loaded = load_learner(tmp_path / "export.pkl").loss_func
    assert type(loaded) is LabelSmoothingCrossEntropy
    assert (loaded.eps, loaded.reduction, loaded.ignore_index, loaded.spread) == (0.2, "sum", 1, "others")
    assert torch.equal(loaded.weight, weight)


# ---------------------------------------------------------------------------------------------
# Tabular: fastai's tabular targets have shape (N, 1), which the Flat loss flattens as fastai does.

TAB_N, TAB_VALID = 240, 48


def tabular_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    shop, x1, x2 = rng.choice(["a", "b", "c"], TAB_N), rng.normal(size=TAB_N), rng.normal(size=TAB_N)
    label = np.where(x1 + (shop == "a") > 0.5, "high", np.where(x2 > 0, "mid", "low"))
    return pd.DataFrame({"shop": shop, "x1": x1, "x2": x2, "label": label})


@functools.cache
def tabular() -> Learner:
    set_seed(0, reproducible=True)
    dls = TabularDataLoaders.from_df(
        tabular_frame(), procs=[Categorify, Normalize], cat_names=["shop"], cont_names=["x1", "x2"],
        y_names="label", y_block=CategoryBlock(), valid_idx=list(range(TAB_N - TAB_VALID, TAB_N)), bs=32,
        num_workers=0,
    )  # fmt: skip
    learn = tabular_learner(dls, layers=[16], loss_func=LabelSmoothingCrossEntropyFlat(0.1))
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-2)
    return learn


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable:UserWarning")  # fastai tabular
def test_tabular_learner_trains_and_predicts():
    learn = tabular()
    assert all(math.isfinite(float(x)) for x in learn.recorder.losses)
    with learn.no_bar():
        probs, targs, losses = learn.get_preds(with_loss=True)
        raw, _ = learn.get_preds(act=noop)
        _, label_idx, row_probs = learn.predict(tabular_frame().iloc[0])
    assert targs.shape == (TAB_VALID, 1) and probs.shape == (TAB_VALID, 3)  # fastai's tabular targets: (N, 1)
    assert_close(probs.sum(1), torch.ones(TAB_VALID), atol=PROB_TOL, rtol=0)
    expected = torch.nn.functional.cross_entropy(raw, targs.view(-1).long(), reduction="none", label_smoothing=0.1)
    assert_close(losses, expected, rtol=1e-5, atol=1e-6)
    assert row_probs.shape == (3,) and int(label_idx) == int(row_probs.argmax())  # decodes: argmax
    assert_close(row_probs.sum(), torch.tensor(1.0), atol=PROB_TOL, rtol=0)


@pytest.mark.filterwarnings("ignore:load_learner:UserWarning")
def test_tabular_export_load_learner_round_trip(tmp_path):
    learn = tabular()
    learn.export(tmp_path / "export.pkl")
    loaded = load_learner(tmp_path / "export.pkl")
    assert type(loaded.loss_func) is LabelSmoothingCrossEntropyFlat and loaded.loss_func.eps == 0.1
    rows = tabular_frame(seed=1).iloc[:20]
    with learn.no_bar(), loaded.no_bar():
        want, _ = learn.get_preds(dl=learn.dls.test_dl(rows))
        got, _ = loaded.get_preds(dl=loaded.dls.test_dl(rows))
    assert_close(got, want)


# ---------------------------------------------------------------------------------------------
# fastai#3603 in a Learner.


def test_fastai_flat_loss_decodes_segmentation_on_the_wrong_axis_in_a_learner():
    """fastai#3603 in a Learner: with fastai's own loss the same model's get_preds are not
    per-pixel distributions; with ours they are (test_get_preds_are_probabilities...[seg])."""
    learn = train("seg").learn
    theirs = Learner(learn.dls, learn.model, loss_func=FastaiLabelSmoothingCrossEntropyFlat(axis=1))
    probs, targs, decoded = theirs.get_preds(with_decoded=True)
    assert not torch.allclose(probs.sum(1), torch.ones_like(targs, dtype=probs.dtype), atol=1e-2)
    assert decoded.shape == (N_VALID, 3, SIZE) != targs.shape


# ---------------------------------------------------------------------------------------------
# MixUp and CutMix.


def _short_fit_with(cb, problem: str) -> list:
    """One epoch with ``cb``; returns (reduction, soft target?) for each call of the loss."""
    learn = build_learner(PROBLEMS[problem], seed=1)
    lf = learn.loss_func
    calls = []

    def record(module, args):
        target = args[1]
        soft = target.is_floating_point() and bool(((target > 0) & (target < 1)).any())
        calls.append((module.reduction, soft))

    lf.register_forward_pre_hook(record)
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        learn.fit(1, 1e-2, cbs=cb)
    assert learn.loss_func is lf and lf.reduction == "mean"  # callback and NoneReduce restored it
    losses = torch.stack([torch.as_tensor(x) for x in learn.recorder.losses])
    assert len(losses) == math.ceil(N_TRAIN / BS) and torch.isfinite(losses).all()
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])
    if lf.y_int:  # fastai mixes the losses of both targets, computed under NoneReduce
        assert ("none", False) in calls
    else:  # fastai mixes the targets themselves: soft multi-label targets
        assert ("mean", True) in calls
    return calls


@pytest.mark.parametrize("problem", ["single", "multi", "penalty"])
@pytest.mark.parametrize("cb", [MixUp, CutMix], ids=["MixUp", "CutMix"])
def test_mixup_and_cutmix_run(cb, problem):
    _short_fit_with(cb(), problem)


def test_cutmix_runs_on_segmentation():
    """fastai's CutMix pastes the image patch but not the mask patch: it lerps the two images'
    whole-mask losses by the patch area. It runs with our loss; the mixing itself is fastai's."""
    _short_fit_with(CutMix(), "seg")


def test_mixup_on_segmentation_is_not_supported_by_fastai():
    """fastai's MixUp keeps one lambda per item, shape (bs,), and lerps it against the (bs, H, W)
    per-pixel losses, which broadcasts on the wrong axis; with bs != W it fails."""
    learn = build_learner(PROBLEMS["seg"], seed=1)
    with learn.no_bar(), learn.no_logging(), pytest.raises(RuntimeError, match="must match the size"):
        learn.fit(1, 1e-2, cbs=MixUp())
