"""Calibration metrics for classifiers: ECE, NLL, Brier score, temperature scaling, reliability bins.

Plain functions take ``probs`` of shape (N, K) (rows on the probability simplex) and integer
``targets`` of shape (N,), accept torch tensors or NumPy arrays, and return Python floats.
``ECE``, ``NLL`` and ``Brier`` wrap them as fastai metrics that see the whole validation set.

Sources: Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017
(ECE, reliability diagrams, temperature scaling); Brier, "Verification of forecasts expressed in
terms of probability", Monthly Weather Review 1950; Müller, Kornblith & Hinton, "When does label
smoothing help?", NeurIPS 2019 (reports ECE with 15 bins, hence the default).
"""

from __future__ import annotations

import math
import operator
import warnings
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from fastai.metrics import AccumMetric

__all__ = [
    "ECE",
    "NLL",
    "Brier",
    "ReliabilityBins",
    "brier",
    "ece",
    "fit_temperature",
    "nll",
    "reliability_bins",
    "temperature_scaling",
]

ArrayLike = torch.Tensor | np.ndarray

NLL_MIN_PROB = 1e-12
"""Probabilities are clamped to at least this before the log, so one sample costs at most
``-log(1e-12) ≈ 27.63`` nats instead of ``inf``."""

TS_SPLIT_SEED = 0
"""The fixed halving of the validation set used by :func:`temperature_scaling`."""

# Loose enough for softmax computed in float16/bfloat16 (row sums off by < 4e-3), tight enough to
# catch logits or per-class sigmoid outputs passed by mistake.
_SIMPLEX_ATOL = 1e-2


class ReliabilityBins(NamedTuple):
    """Per-bin summary behind a reliability diagram and the ECE (float64 NumPy arrays).

    ``edges`` has ``n_bins + 1`` entries ``b/n_bins``; bin ``b`` holds confidences in
    ``(edges[b], edges[b+1]]`` (bin 0 also holds 0). Empty bins have ``count == 0`` and NaN
    ``confidence`` and ``accuracy``.
    """

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def n(self) -> int:
        """Number of samples over all bins."""
        return int(self.counts.sum())

    @property
    def ece(self) -> float:
        """Σ_b (|B_b|/n)·|acc_b − conf_b| over the non-empty bins."""
        full = self.counts > 0
        gaps = np.abs(self.accuracy[full] - self.confidence[full])
        return float((self.counts[full] / self.n * gaps).sum())


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    # fastai hands us TensorBase subclasses whose __torch_function__ re-wraps every result; work
    # on plain CPU tensors (the results are Python floats anyway).
    if isinstance(x, torch.Tensor):
        return x.detach().as_subclass(torch.Tensor).cpu()
    return torch.as_tensor(np.ascontiguousarray(x))


def _check_n_bins(n_bins: int) -> int:
    try:
        if isinstance(n_bins, bool):
            raise TypeError
        n = operator.index(n_bins)
    except TypeError:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}") from None
    if n < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return n


def _check_inputs(scores: ArrayLike, targets: ArrayLike, name: str = "probs") -> tuple[torch.Tensor, torch.Tensor]:
    """Convert and validate (N, K) scores and (N,) class indices; ``name`` selects the checks."""
    s, t = _as_tensor(scores), _as_tensor(targets)
    if s.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (N, K), got shape {tuple(s.shape)}")
    if not s.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {s.dtype}")
    if t.ndim != 1:
        raise ValueError(f"targets must be 1-D with shape (N,), got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"targets must hold integer class indices, got dtype {t.dtype}")
    n, k = s.shape
    if t.shape[0] != n:
        raise ValueError(
            f"{name} and targets must have the same number of rows, got {name} shape "
            f"{tuple(s.shape)} and targets shape {tuple(t.shape)}"
        )
    if n == 0:
        raise ValueError(f"empty input: {name} has shape {tuple(s.shape)}, need N >= 1")
    if k == 0:
        raise ValueError(f"{name} has shape {tuple(s.shape)}, need K >= 1 classes")
    t_min, t_max = int(t.min()), int(t.max())
    if t_min < 0 or t_max >= k:
        raise ValueError(f"targets must be class indices in [0, {k - 1}], got values in [{t_min}, {t_max}]")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    if name == "probs":
        p_min, p_max = float(s.min()), float(s.max())
        if p_min < -1e-6 or p_max > 1 + 1e-6:
            raise ValueError(
                f"probs must lie in [0, 1], got values in [{p_min:.4g}, {p_max:.4g}] (pass softmax(logits), not logits)"
            )
        worst = float((s.double().sum(1) - 1).abs().max())
        if worst > _SIMPLEX_ATOL:
            raise ValueError(f"probs rows must sum to 1 (within {_SIMPLEX_ATOL}), got a row off by {worst:.4g}")
    return s, t.long()


def _assign_bins(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Index b of the bin (b/n_bins, (b+1)/n_bins] holding each confidence; 0 goes to bin 0."""
    # Edges b/n_bins are rounded once to the confidences' dtype, so a float32 confidence of 0.2
    # equals the edge 0.2 and lands in the lower bin, as (lo, hi] demands.
    hi = (torch.arange(1, n_bins + 1, dtype=torch.float64) / n_bins).to(confidence.dtype)
    # bucketize(right=False) returns i with hi[i-1] < x <= hi[i]; x <= 0 gives 0.
    return torch.bucketize(confidence, hi, right=False).clamp_(max=n_bins - 1)


def reliability_bins(probs: ArrayLike, targets: ArrayLike, n_bins: int = 15) -> ReliabilityBins:
    """Bin predictions by confidence, as in the reliability diagrams of Guo et al. 2017.

    Confidence is ``max_c probs[i, c]`` and the prediction ``argmax_c probs[i, c]`` (first index
    on ties). Bin ``b`` (0-based) of ``n_bins`` equal-width bins is the interval
    ``(b/n_bins, (b+1)/n_bins]``: a confidence exactly on an edge goes to the *lower* bin, a
    confidence of exactly 0 to bin 0. Edges are compared in the dtype of ``probs``.
    Per bin: ``counts[b] = |B_b|``, ``confidence[b]`` = mean confidence and ``accuracy[b]`` =
    fraction of correct predictions in ``B_b`` (NaN when the bin is empty).

    Args:
        probs: (N, K) class probabilities, rows summing to 1.
        targets: (N,) integer class indices in [0, K).
        n_bins: number of bins, >= 1.
    """
    n_bins = _check_n_bins(n_bins)
    p, t = _check_inputs(probs, targets)
    conf, pred = p.max(dim=1).values, p.argmax(dim=1)
    idx = _assign_bins(conf, n_bins)
    counts = torch.bincount(idx, minlength=n_bins)
    conf_sum = torch.bincount(idx, weights=conf.double(), minlength=n_bins)
    hit_sum = torch.bincount(idx, weights=(pred == t).double(), minlength=n_bins)
    counts_np = counts.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts_np > 0, conf_sum.numpy() / counts_np, np.nan)
        accuracy = np.where(counts_np > 0, hit_sum.numpy() / counts_np, np.nan)
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    return ReliabilityBins(edges, counts_np, mean_conf, accuracy)


def ece(probs: ArrayLike, targets: ArrayLike, n_bins: int = 15) -> float:
    """Expected Calibration Error (Guo et al. 2017): ``Σ_b (|B_b|/N)·|acc(B_b) − conf(B_b)|``.

    ``B_b`` are the ``n_bins`` equal-width confidence bins ``(b/n_bins, (b+1)/n_bins]`` of
    :func:`reliability_bins` (an edge value goes to the lower bin, 0 to the first bin);
    confidence is the max probability, accuracy is whether the argmax equals the target. Empty
    bins contribute 0. Range [0, 1]. Müller et al. 2019 report it with 15 bins (the default).

    Args:
        probs: (N, K) class probabilities, rows summing to 1.
        targets: (N,) integer class indices in [0, K).
        n_bins: number of bins, >= 1.
    """
    return reliability_bins(probs, targets, n_bins).ece


def nll(probs: ArrayLike, targets: ArrayLike) -> float:
    """Mean negative log-likelihood ``−(1/N) Σ_i log max(p[i, y_i], 1e-12)`` in nats.

    The clamp at 1e-12 (``NLL_MIN_PROB``) keeps a zero probability on the target finite: it
    costs ``−log 1e-12 ≈ 27.63`` instead of ``inf``. With ``probs = softmax(logits)`` this is
    cross-entropy without smoothing.

    Args:
        probs: (N, K) class probabilities, rows summing to 1.
        targets: (N,) integer class indices in [0, K).
    """
    p, t = _check_inputs(probs, targets)
    p_true = p.double().gather(1, t[:, None]).squeeze(1)
    return float(-p_true.clamp(min=NLL_MIN_PROB).log().mean())


def brier(probs: ArrayLike, targets: ArrayLike) -> float:
    """Multi-class Brier score (Brier 1950): ``(1/N) Σ_i Σ_c (p[i, c] − 1[c = y_i])²``.

    Summed over classes and averaged over samples, so it lies in [0, 2] (0: all mass on the
    target; 2: all mass on one wrong class). Some libraries divide by K as well, or (for binary
    problems) score only the positive class; those values differ from this one by a factor.

    Args:
        probs: (N, K) class probabilities, rows summing to 1.
        targets: (N,) integer class indices in [0, K).
    """
    p, t = _check_inputs(probs, targets)
    onehot = F.one_hot(t, p.shape[1]).double()
    return float((p.double() - onehot).pow(2).sum(1).mean())


def fit_temperature(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    t_min: float = 0.01,
    t_max: float = 100.0,
    max_iter: int = 100,
) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the NLL of ``softmax(logits/T)``.

    Fit on held-out logits (e.g. ``learn.get_preds(act=noop)`` in fastai), then use
    ``softmax(logits / T)`` at test time; T > 1 softens over-confident predictions.

    With β = 1/T the mean NLL ``f(β) = (1/N) Σ_i [logsumexp(β·z_i) − β·z_{i,y_i}]`` is convex in
    β, with ``f'(β) = mean_i(E_{softmax(βz_i)}[z_i] − z_{i,y_i})`` and ``f''(β)`` = mean of the
    per-row variance of z under softmax(βz). We find the root of f' in float64 by Newton's method,
    safeguarded by a bracket that falls back to geometric bisection: deterministic, and it
    reaches the minimiser within [t_min, t_max] to about 1e-12 relative. If the minimiser lies
    outside, the nearest bound is returned with a warning (e.g. T → 0 when every prediction is
    correct).

    Args:
        logits: (N, K) finite, pre-softmax scores.
        targets: (N,) integer class indices in [0, K).
        t_min, t_max: search interval for T, ``0 < t_min < t_max``.
        max_iter: maximum number of Newton/bisection steps.
    """
    if not (0 < t_min < t_max < math.inf):
        raise ValueError(f"need 0 < t_min < t_max < inf, got t_min={t_min}, t_max={t_max}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    z, t = _check_inputs(logits, targets, name="logits")
    z = z.double()
    z_true = z.gather(1, t[:, None]).squeeze(1)

    def slope_curvature(beta: float) -> tuple[float, float]:
        p = torch.softmax(beta * z, dim=1)
        mean_z = (p * z).sum(1)
        var_z = (p * (z - mean_z[:, None]).pow(2)).sum(1)
        return float((mean_z - z_true).mean()), float(var_z.mean())

    lo, hi = 1.0 / t_max, 1.0 / t_min
    if slope_curvature(lo)[0] >= 0:
        warnings.warn(f"NLL is minimised at T >= t_max={t_max}; returning t_max", stacklevel=2)
        return float(t_max)
    if slope_curvature(hi)[0] <= 0:
        warnings.warn(f"NLL is minimised at T <= t_min={t_min}; returning t_min", stacklevel=2)
        return float(t_min)
    beta = min(max(1.0, lo), hi)
    for _ in range(max_iter):
        g, h = slope_curvature(beta)
        if g > 0:
            hi = beta
        elif g < 0:
            lo = beta
        step = g / h if h > 0 else math.inf
        # Test the Newton step before the bracket: near the root, rounding can give g the wrong
        # sign, and bisecting then would walk away from an already converged beta.
        if abs(step) <= 1e-12 * beta:
            break
        beta = beta - step if lo < beta - step < hi else math.sqrt(lo * hi)
    return 1.0 / beta


def temperature_scaling(probs: ArrayLike, targets: ArrayLike, split_seed: int = TS_SPLIT_SEED) -> dict:
    """Temperature scaling evaluated by 2-fold cross-fitting on a held-out (validation) set.

    The set is split in two fixed random halves (``split_seed``: the same for every run, so arms of
    a sweep stay paired). T is fitted by NLL on one half and applied to the other, and vice versa;
    the metrics after scaling are computed on the whole set, each prediction scaled by the T that
    did not see it. Fitting and evaluating T on the same images would be optimistic.
    ``log(probs)`` serves as logits: softmax(log p / T) equals softmax(z / T) for the original
    logits z (softmax is invariant to the per-row constant log-sum-exp). Probabilities are clamped
    at 1e-30 before the log so an underflowed 0 stays finite.

    Returns ``temperature`` (mean of the two fitted T), ``temperature_halves`` and ``ece_ts``,
    ``nll_ts``, ``brier_ts``, ``error_rate_ts`` (argmax, hence error, is unchanged by T > 0).
    """
    p, t = _check_inputs(probs, targets)
    logits = p.double().clamp_min(1e-30).log()
    perm = torch.randperm(len(t), generator=torch.Generator().manual_seed(split_seed))
    a, b = perm[: len(t) // 2], perm[len(t) // 2 :]
    scaled = torch.empty_like(logits)
    temps = []
    for fit_idx, eval_idx in ((a, b), (b, a)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # T at a search bound is reported as the value itself
            temp = fit_temperature(logits[fit_idx], t[fit_idx])
        temps.append(temp)
        scaled[eval_idx] = torch.softmax(logits[eval_idx] / temp, dim=1)
    return {
        "temperature": float(np.mean(temps)),
        "temperature_halves": [float(x) for x in temps],
        "ece_ts": ece(scaled, t),
        "nll_ts": nll(scaled, t),
        "brier_ts": brier(scaled, t),
        "error_rate_ts": float((scaled.argmax(1) != t).double().mean()),
    }


def _fastai_metric(func, name: str, **kwargs) -> AccumMetric:
    # Imported here so that `import lsmooth.metrics` does not pay for importing fastai.
    from fastai.metrics import AccumMetric, ActivationType

    # AccumMetric stores every validation batch and calls `func` once on the concatenation, so
    # the value is the dataset-level metric, not an average of per-batch values.
    return AccumMetric(func, dim_argmax=-1, activation=ActivationType.Softmax, flatten=False, name=name, **kwargs)


# Capitalised like fastai's own metric factories (`F1Score`, `RocAuc`, ...).
def ECE(n_bins: int = 15) -> AccumMetric:
    """fastai metric "ece": :func:`ece` of softmax(model output) over the whole validation set."""
    return _fastai_metric(ece, "ece", n_bins=_check_n_bins(n_bins))


def NLL() -> AccumMetric:
    """fastai metric "nll": :func:`nll` of softmax(model output) over the validation set."""
    return _fastai_metric(nll, "nll")


def Brier() -> AccumMetric:
    """fastai metric "brier": :func:`brier` of softmax(model output) over the validation set."""
    return _fastai_metric(brier, "brier")
