"""lsmooth: label smoothing done right for fastai and PyTorch."""

from lsmooth.losses import (
    LabelSmoothingBCEWithLogits,
    LabelSmoothingCrossEntropy,
    LabelSmoothingCrossEntropyFlat,
    label_smoothing_cross_entropy,
    reduce_loss,
    smooth_targets,
)
from lsmooth.metrics import (
    ECE,
    NLL,
    Brier,
    brier,
    ece,
    fit_temperature,
    nll,
    plot_reliability,
    reliability_bins,
    temperature_scaling,
)

__all__ = [
    "ECE",
    "NLL",
    "Brier",
    "brier",
    "ece",
    "fit_temperature",
    "nll",
    "plot_reliability",
    "reliability_bins",
    "temperature_scaling",
    "LabelSmoothingBCEWithLogits",
    "LabelSmoothingCrossEntropy",
    "LabelSmoothingCrossEntropyFlat",
    "label_smoothing_cross_entropy",
    "reduce_loss",
    "smooth_targets",
]
__version__ = "0.1.0"
