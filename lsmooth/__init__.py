"""lsmooth: label smoothing done right for fastai and PyTorch.

The loss family (``lsmooth.losses`` and ``lsmooth.online``, torch only) and the calibration metrics are
exported here; the fastai callbacks are in :mod:`lsmooth.callbacks` and :mod:`lsmooth.resume`, the data
pieces in :mod:`lsmooth.data`, the figures in :mod:`lsmooth.plots`, the summaries in :mod:`lsmooth.report`,
sweeps in :mod:`lsmooth.sweep`.
"""

from lsmooth.losses import (
    ConfidencePenaltyCrossEntropy,
    LabelSmoothingBCEWithLogits,
    LabelSmoothingCrossEntropy,
    LabelSmoothingCrossEntropyFlat,
    confidence_penalty_cross_entropy,
    label_smoothing_cross_entropy,
    reduce_loss,
    smooth_targets,
)
from lsmooth.metrics import ECE, NLL, Brier, brier, ece, fit_temperature, nll, reliability_bins, temperature_scaling
from lsmooth.online import OnlineLabelSmoothingCrossEntropy

__all__ = [
    "ECE",
    "NLL",
    "Brier",
    "brier",
    "ece",
    "fit_temperature",
    "nll",
    "reliability_bins",
    "temperature_scaling",
    "ConfidencePenaltyCrossEntropy",
    "LabelSmoothingBCEWithLogits",
    "LabelSmoothingCrossEntropy",
    "LabelSmoothingCrossEntropyFlat",
    "OnlineLabelSmoothingCrossEntropy",
    "confidence_penalty_cross_entropy",
    "label_smoothing_cross_entropy",
    "reduce_loss",
    "smooth_targets",
]
__version__ = "0.2.0"
