"""Tests for lsmooth.metrics: hand-computed values, a NumPy reference, calibration properties,
temperature scaling, the fastai metrics inside a real Learner, parity with torchmetrics, input validation."""

import math
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lsmooth.metrics import (
    ECE,
    NLL,
    Brier,
    _assign_bins,
    brier,
    ece,
    fit_temperature,
    nll,
    reliability_bins,
    temperature_scaling,
)

# ---------------------------------------------------------------------------------------------
# Plain NumPy reference: one loop per bin, written from the formulas, independent of the torch code.


def ece_reference(probs: np.ndarray, targets: np.ndarray, n_bins: int) -> float:
    conf = probs.max(1)
    correct = probs.argmax(1) == targets
    edges = (np.arange(n_bins + 1) / n_bins).astype(probs.dtype)
    total = 0.0
    for b in range(n_bins):
        in_bin = ((conf > edges[b]) | (b == 0)) & (conf <= edges[b + 1])
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - conf[in_bin].astype(np.float64).mean())
            total += in_bin.mean() * gap
    return float(total)


def nll_reference(probs: np.ndarray, targets: np.ndarray) -> float:
    p_true = probs[np.arange(len(targets)), targets].astype(np.float64)
    return float(-np.log(np.maximum(p_true, 1e-12)).mean())


def brier_reference(probs: np.ndarray, targets: np.ndarray) -> float:
    onehot = np.eye(probs.shape[1])[targets]
    return float(((probs.astype(np.float64) - onehot) ** 2).sum(1).mean())


def random_problem(n: int, k: int, seed: int, dtype=np.float64):
    """Dirichlet probabilities with a wide spread of confidences; targets half from the model."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.3), size=n).astype(dtype)
    probs /= probs.sum(1, keepdims=True)
    targets = np.where(rng.random(n) < 0.5, probs.argmax(1), rng.integers(0, k, size=n))
    return probs, targets


def sample_targets(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw of y ~ Categorical(probs[i]) per row."""
    cdf = probs.cumsum(1)
    return np.minimum((rng.random(len(probs))[:, None] > cdf).sum(1), probs.shape[1] - 1)


# ---------------------------------------------------------------------------------------------
# Hand-computed values.

HAND_PROBS = torch.tensor(
    [
        [0.50, 0.30, 0.20],  # y=0: conf .50 -> bin 2 (.4, .6], correct
        [0.10, 0.70, 0.20],  # y=2: conf .70 -> bin 3 (.6, .8], wrong
        [0.15, 0.10, 0.75],  # y=2: conf .75 -> bin 3, correct
        [0.90, 0.05, 0.05],  # y=0: conf .90 -> bin 4 (.8, 1], correct
    ],
    dtype=torch.float64,
)
HAND_TARGETS = torch.tensor([0, 2, 2, 0])


def test_hand_computed_values():
    # 5 bins. bin 2: n=1, acc 1, conf .5 -> gap .5; bin 3: n=2, acc .5, conf (.7+.75)/2 = .725
    # -> gap .225; bin 4: n=1, acc 1, conf .9 -> gap .1.
    # ECE = (1*.5 + 2*.225 + 1*.1) / 4 = 1.05 / 4 = .2625
    assert ece(HAND_PROBS, HAND_TARGETS, n_bins=5) == pytest.approx(0.2625, abs=1e-12)
    # NLL = -(log .5 + log .2 + log .75 + log .9) / 4
    #     = (.693147 + 1.609438 + .287682 + .105361) / 4 = .673907
    expected_nll = -(math.log(0.5) + math.log(0.2) + math.log(0.75) + math.log(0.9)) / 4
    assert expected_nll == pytest.approx(0.673907, abs=1e-6)
    assert nll(HAND_PROBS, HAND_TARGETS) == pytest.approx(expected_nll, abs=1e-12)
    # Brier rows: (.5-1)^2+.3^2+.2^2 = .38; .1^2+.7^2+(.2-1)^2 = 1.14;
    # .15^2+.1^2+(.75-1)^2 = .095; (.9-1)^2+.05^2+.05^2 = .015; mean = 1.63 / 4 = .4075
    assert brier(HAND_PROBS, HAND_TARGETS) == pytest.approx(0.4075, abs=1e-12)


def test_hand_computed_reliability_bins():
    bins = reliability_bins(HAND_PROBS, HAND_TARGETS, n_bins=5)
    np.testing.assert_allclose(bins.edges, [0, 0.2, 0.4, 0.6, 0.8, 1.0], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(bins.counts, [0, 0, 1, 2, 1])
    np.testing.assert_allclose(bins.accuracy, [np.nan, np.nan, 1, 0.5, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(bins.confidence, [np.nan, np.nan, 0.5, 0.725, 0.9], rtol=0, atol=1e-12)
    assert bins.n == 4
    assert bins.ece == ece(HAND_PROBS, HAND_TARGETS, n_bins=5)


def test_one_bin_ece_is_accuracy_minus_mean_confidence():
    # With a single bin, ECE = |accuracy - mean confidence| (here 3/4 vs (.5+.7+.75+.9)/4 = .7125).
    assert ece(HAND_PROBS, HAND_TARGETS, n_bins=1) == pytest.approx(0.0375, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Against the NumPy reference.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_bins", [1, 7, 15])
@pytest.mark.parametrize("n,k", [(1, 2), (37, 2), (1000, 10)])
def test_matches_numpy_reference(n, k, n_bins, dtype):
    probs, targets = random_problem(n, k, seed=n * k + n_bins, dtype=dtype)
    p, t = torch.from_numpy(probs), torch.from_numpy(targets)
    # Both sides sum in float64; only the summation order differs.
    tol = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ece(p, t, n_bins), ece_reference(probs, targets, n_bins), **tol)
    np.testing.assert_allclose(nll(p, t), nll_reference(probs, targets), **tol)
    np.testing.assert_allclose(brier(p, t), brier_reference(probs, targets), **tol)
    # NumPy inputs go through the same path and give identical floats.
    assert ece(probs, targets, n_bins) == ece(p, t, n_bins)
    assert nll(probs, targets) == nll(p, t)
    assert brier(probs, targets) == brier(p, t)


def test_zero_probability_on_target_gives_large_finite_nll():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    # (-log 1e-12 + -log .5) / 2 = (27.631021 + .693147) / 2
    assert nll(probs, torch.tensor([1, 0])) == pytest.approx((-math.log(1e-12) - math.log(0.5)) / 2, rel=1e-12)


def test_brier_extremes():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert brier(probs, torch.tensor([0, 1])) == 0.0
    assert brier(probs, torch.tensor([1, 2])) == 2.0  # all mass on a wrong class: 1 + 1


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 6),
    n_bins=st.integers(1, 20),
    seed=st.integers(0, 2**31),
)
def test_ranges_and_row_order_invariance(n, k, n_bins, seed):
    probs, targets = random_problem(n, k, seed)
    e, ll, b = ece(probs, targets, n_bins), nll(probs, targets), brier(probs, targets)
    assert 0 <= e <= 1 and 0 <= ll <= -math.log(1e-12) + 1e-9 and 0 <= b <= 2
    perm = np.random.default_rng(seed).permutation(n)
    tol = dict(rel=1e-12, abs=1e-15)
    assert ece(probs[perm], targets[perm], n_bins) == pytest.approx(e, **tol)
    assert nll(probs[perm], targets[perm]) == pytest.approx(ll, **tol)
    assert brier(probs[perm], targets[perm]) == pytest.approx(b, **tol)


# ---------------------------------------------------------------------------------------------
# Binning boundaries: intervals are (lo, hi].


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_bins", [3, 5, 10, 15])
def test_confidence_on_edge_goes_to_lower_bin(n_bins, dtype):
    # Row i has confidence exactly (i+1)/n_bins, the upper edge of bin i; the other
    # n_bins classes share the rest, each below the confidence.
    conf = (torch.arange(1, n_bins + 1, dtype=torch.float64) / n_bins).to(dtype)
    rest = ((1 - conf) / n_bins)[:, None].expand(n_bins, n_bins)
    probs = torch.cat([conf[:, None], rest], dim=1)
    bins = reliability_bins(probs, torch.zeros(n_bins, dtype=torch.long), n_bins)
    np.testing.assert_array_equal(bins.counts, np.ones(n_bins))
    np.testing.assert_allclose(bins.confidence, conf.double().numpy(), rtol=0, atol=0)
    # One ulp above an inner edge moves the confidence to the next bin up.
    above = torch.nextafter(conf[:-1], torch.ones_like(conf[:-1]))
    np.testing.assert_array_equal(_assign_bins(above, n_bins), np.arange(1, n_bins))
    np.testing.assert_array_equal(_assign_bins(conf, n_bins), np.arange(n_bins))


def test_zero_and_one_confidence_go_to_first_and_last_bin():
    conf = torch.tensor([0.0, 1e-9, 1.0], dtype=torch.float64)
    assert _assign_bins(conf, 15).tolist() == [0, 0, 14]


# ---------------------------------------------------------------------------------------------
# Calibration on synthetic data.


def test_calibrated_predictions_have_near_zero_ece():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(5, 0.5), size=100_000)
    targets = sample_targets(probs, rng)  # y ~ probs: calibrated by construction
    # Sampling noise alone: sum over 15 bins of |B|/n * sqrt(acc(1-acc)/|B|) is about 0.003.
    assert ece(probs, targets) < 0.01
    # Control: labels drawn from a sharper distribution make the same probs under-confident.
    sharp = probs**3 / (probs**3).sum(1, keepdims=True)
    assert ece(probs, sample_targets(sharp, rng)) > 0.05


# ---------------------------------------------------------------------------------------------
# Temperature scaling.


def nll_at_temperatures(logits: np.ndarray, targets: np.ndarray, temps: np.ndarray) -> np.ndarray:
    """Mean NLL of softmax(logits / T) for each T: mean_i [logsumexp(z_i / T) - z_{i,y_i} / T]."""
    z = logits.astype(np.float64)[None] / np.asarray(temps, dtype=np.float64)[:, None, None]
    z_max = z.max(2, keepdims=True)
    lse = np.log(np.exp(z - z_max).sum(2)) + z_max[..., 0]
    return (lse - z[:, np.arange(len(targets)), targets]).mean(1)


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_known_temperature(t_true):
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=4.0, size=(20_000, 10))
    z = logits / t_true
    probs = np.exp(z - z.max(1, keepdims=True))
    targets = sample_targets(probs / probs.sum(1, keepdims=True), rng)
    t_hat = fit_temperature(torch.from_numpy(logits).float(), torch.from_numpy(targets))
    assert t_hat == pytest.approx(t_true, rel=0.03)


@pytest.mark.parametrize("seed", range(4))
def test_fit_temperature_is_optimal_and_never_worse_than_t1(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(500, 7, generator=gen) * (1 + 3 * seed)
    informative = torch.rand(500, generator=gen) < 0.6
    targets = torch.where(informative, logits.argmax(1), torch.randint(0, 7, (500,), generator=gen))
    t_hat = fit_temperature(logits, targets)
    best, at_one = nll_at_temperatures(logits.numpy(), targets.numpy(), [t_hat, 1.0])
    assert best <= at_one + 1e-12
    grid = nll_at_temperatures(logits.numpy(), targets.numpy(), np.geomspace(0.05, 20, 1001))
    assert best <= grid.min() + 1e-12
    # Deterministic, and NumPy input gives the same answer.
    assert fit_temperature(logits, targets) == t_hat
    assert fit_temperature(logits.numpy(), targets.numpy()) == t_hat


def test_fit_temperature_warns_at_bound():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    with pytest.warns(UserWarning, match="t_min"):
        # Every prediction is right: the NLL keeps falling as T -> 0.
        assert fit_temperature(logits, torch.tensor([0, 1]), t_min=0.1) == 0.1
    with pytest.warns(UserWarning, match="t_max"):
        # Every prediction is wrong: the NLL keeps falling as T -> inf.
        assert fit_temperature(logits, torch.tensor([1, 0]), t_max=50.0) == 50.0


def test_temperature_scaling_is_cross_fitted_on_halves():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 10, (400,), generator=g)
    logits = 4 * torch.randn(400, 10, generator=g, dtype=torch.float64)
    logits[torch.arange(400), targets] += 3.0  # right often, but far too sure
    probs = torch.softmax(logits, 1)
    ts = temperature_scaling(probs, targets)
    assert ts["temperature"] > 1.5 and ts["ece_ts"] < ece(probs, targets) and ts["nll_ts"] < nll(probs, targets)
    assert ts["error_rate_ts"] == pytest.approx(float((probs.argmax(1) != targets).double().mean()))
    # the same numbers by hand: fit on one half, apply to the other
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    a, b = perm[:200], perm[200:]
    t_a, t_b = fit_temperature(logits[a], targets[a]), fit_temperature(logits[b], targets[b])
    assert ts["temperature_halves"] == pytest.approx([t_a, t_b], rel=1e-6)  # log(softmax(z)) = z + const
    scaled = torch.empty_like(probs)
    scaled[b], scaled[a] = torch.softmax(logits[b] / t_a, 1), torch.softmax(logits[a] / t_b, 1)
    assert ts["ece_ts"] == pytest.approx(ece(scaled, targets), abs=1e-9)
    assert ts["nll_ts"] == pytest.approx(nll(scaled, targets), rel=1e-9)
    assert temperature_scaling(probs, targets, split_seed=1)["temperature_halves"] != ts["temperature_halves"]


# ---------------------------------------------------------------------------------------------
# fastai integration.


def test_fastai_metrics_match_plain_functions_on_get_preds():
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import error_rate
    from torch.utils.data import TensorDataset

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=gen)
    y = torch.multinomial(torch.softmax(x @ torch.randn(5, 4, generator=gen), 1), 1, generator=gen)
    train, valid = TensorDataset(x[:200], y[:200, 0]), TensorDataset(x[200:], y[200:, 0])
    # 100 validation items in batches of 32, 32, 32, 4: a per-batch average would differ.
    dls = DataLoaders.from_dsets(train, valid, bs=32, device=torch.device("cpu"))
    torch.manual_seed(0)
    learn = Learner(
        dls,
        torch.nn.Linear(5, 4),
        loss_func=CrossEntropyLossFlat(),
        metrics=[error_rate, ECE(), NLL(), Brier()],
    )
    with learn.no_logging():
        learn.fit(1, lr=0.05)
        fit_row = list(learn.recorder.values[-1])  # train_loss, valid_loss, error_rate, ece, ...
        probs, targs = learn.get_preds()
        valid_loss, _, v_ece, v_nll, v_brier = learn.validate()
    assert learn.recorder.metric_names[4:7] == ["ece", "nll", "brier"]
    np.testing.assert_allclose(fit_row[3:6], [v_ece, v_nll, v_brier], rtol=1e-6)
    tol = dict(rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v_ece, ece(probs, targs), **tol)
    np.testing.assert_allclose(v_nll, nll(probs, targs), **tol)
    np.testing.assert_allclose(v_brier, brier(probs, targs), **tol)
    # NLL of the softmax is the unsmoothed cross-entropy, i.e. fastai's validation loss.
    np.testing.assert_allclose(v_nll, valid_loss, rtol=1e-5)
    assert 0 < v_ece < 1 and v_brier > 0


def test_fastai_metric_objects_pickle_and_run_standalone():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [0.3, 0.2, 0.1]])
    targets = torch.tensor([0, 2, 1])
    probs = torch.softmax(logits, dim=1)
    for metric, func in [(ECE(n_bins=4), lambda: ece(probs, targets, 4)), (NLL(), None)]:
        clone = pickle.loads(pickle.dumps(metric))
        clone.reset()
        clone.accum_values(torch.softmax(logits, -1), targets)
        expected = func() if func else nll(probs, targets)
        assert clone.value == pytest.approx(expected, rel=1e-12)
    assert ECE().name == "ece" and NLL().name == "nll" and Brier().name == "brier"
    assert ECE(n_bins=7).kwargs == {"n_bins": 7}


def test_import_does_not_load_fastai_or_matplotlib():
    code = "import sys, lsmooth.metrics; print('fastai' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------
# Parity with a well-kept library: torchmetrics' CalibrationError (its own tests compare with netcal).


def test_ece_equals_torchmetrics_on_its_docstring_examples_where_no_confidence_sits_on_an_edge():
    """torchmetrics bins [lo, hi) and puts confidence 1.0 in the last bin; Guo et al.'s code and lsmooth use
    (lo, hi]. Its docstring examples have no confidence on an edge of 15 bins, so the two agree exactly."""
    from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

    preds = torch.tensor([[0.25, 0.20, 0.55], [0.55, 0.05, 0.40], [0.10, 0.30, 0.60], [0.90, 0.05, 0.05]])
    target = torch.tensor([0, 1, 2, 0])
    tm = MulticlassCalibrationError(num_classes=3, n_bins=3, norm="l1")(preds, target)
    assert tm.item() == pytest.approx(0.2000, abs=1e-4)  # the docstring's value
    assert ece(preds, target, n_bins=3) == pytest.approx(tm.item(), abs=1e-7)
    binary = torch.tensor([0.25, 0.25, 0.55, 0.75, 0.75])
    y = torch.tensor([0, 0, 1, 1, 1])
    tm = BinaryCalibrationError(n_bins=2, norm="l1")(binary, y)
    assert tm.item() == pytest.approx(0.2900, abs=1e-4)  # the docstring's value
    assert ece(torch.stack([1 - binary, binary], 1), y, n_bins=2) == pytest.approx(tm.item(), abs=1e-7)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_bins", [10, 15])
def test_ece_equals_torchmetrics_on_random_predictions(seed, n_bins):
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs, targets = (torch.as_tensor(x) for x in random_problem(2000, 10, seed, dtype=np.float32))
    tm = multiclass_calibration_error(probs, targets, num_classes=10, n_bins=n_bins, norm="l1")
    assert ece(probs, targets, n_bins) == pytest.approx(tm.item(), abs=1e-6)


def test_the_bin_edge_convention_is_where_lsmooth_and_torchmetrics_differ():
    """Confidences exactly on an edge: (lo, hi] (Guo et al.'s code, lsmooth) vs [lo, hi) (torchmetrics)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.8, 0.2], [0.8, 0.2]])
    targets = torch.tensor([0, 1, 0, 0])
    # 5 bins: lsmooth puts .6 in (.4, .6] and .8 in (.6, .8]; torchmetrics puts them in [.6, .8) and [.8, 1.0)
    assert ece(probs, targets, n_bins=5) == pytest.approx(0.5 * abs(0.5 - 0.6) + 0.5 * abs(1.0 - 0.8))
    tm = multiclass_calibration_error(probs, targets, num_classes=2, n_bins=5, norm="l1").item()
    assert tm == pytest.approx(0.15, abs=1e-6)  # the same two bins here, so the same value
    three = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2]])
    assert ece(three, torch.tensor([0, 1, 0]), n_bins=5) != pytest.approx(
        multiclass_calibration_error(three, torch.tensor([0, 1, 0]), num_classes=2, n_bins=5, norm="l1").item())


# ---------------------------------------------------------------------------------------------
# Bad input.

P3 = torch.full((4, 3), 1 / 3)
T4 = torch.tensor([0, 1, 2, 0])

BAD_DATA = [
    (torch.full((3,), 1 / 3), T4[:3], r"probs must be 2-D .* got shape \(3,\)"),
    (torch.full((2, 2, 3), 1 / 3), T4[:2], r"probs must be 2-D .* got shape \(2, 2, 3\)"),
    (P3, T4[:, None], r"targets must be 1-D .* got shape \(4, 1\)"),
    (P3, T4[:3], r"same number of rows.*\(4, 3\).*\(3,\)"),
    (P3, torch.tensor([0, 1, 3, 0]), r"class indices in \[0, 2\], got values in \[0, 3\]"),
    (P3, torch.tensor([0, -1, 2, 0]), r"class indices in \[0, 2\], got values in \[-1, 2\]"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), r"empty input.*\(0, 3\)"),
    (P3, T4.float(), r"integer class indices, got dtype torch.float32"),
    (torch.ones(4, 3, dtype=torch.long), T4, r"floating dtype, got torch.int64"),
    (torch.tensor([[2.0, -1.0, 0.0]] * 4), T4, r"\[0, 1\], got values in \[-1, 2\].*logits"),
    (torch.full((4, 3), 0.2), T4, r"rows must sum to 1.*off by 0.4"),
    (torch.tensor([[math.nan, 0.5, 0.5]] * 4), T4, r"probs must be finite"),
]


@pytest.mark.parametrize("func", [ece, nll, brier, reliability_bins])
@pytest.mark.parametrize("probs,targets,match", BAD_DATA)
def test_bad_data_raises(func, probs, targets, match):
    with pytest.raises(ValueError, match=match):
        func(probs, targets)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, "15", True])
def test_bad_n_bins_raises(n_bins):
    match = rf"n_bins must be an integer >= 1, got {n_bins!r}"
    for call in (lambda: ece(P3, T4, n_bins), lambda: reliability_bins(P3, T4, n_bins)):
        with pytest.raises(ValueError, match=match.replace(".", r"\.")):
            call()
    with pytest.raises(ValueError, match="n_bins"):
        ECE(n_bins)


@pytest.mark.parametrize(
    "logits,kwargs,match",
    [
        (torch.zeros(4), {}, r"logits must be 2-D"),
        (torch.zeros(4, 3), {"t_min": 0.0}, r"0 < t_min < t_max.*t_min=0.0"),
        (torch.zeros(4, 3), {"t_min": 5.0, "t_max": 2.0}, r"t_min=5.0, t_max=2.0"),
        (torch.zeros(4, 3), {"max_iter": 0}, r"max_iter must be >= 1, got 0"),
        (torch.tensor([[math.inf, 0, 0]] * 4), {}, r"logits must be finite"),
    ],
)
def test_fit_temperature_bad_input_raises(logits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, T4, **kwargs)
