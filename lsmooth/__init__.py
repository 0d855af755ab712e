"""lsmooth: label smoothing done right for fastai and PyTorch."""

from lsmooth.losses import (
    LabelSmoothingBCEWithLogits,
    LabelSmoothingCrossEntropy,
    LabelSmoothingCrossEntropyFlat,
    linear_combination,
    reduce_loss,
    smooth_targets,
)

__all__ = [
    "LabelSmoothingBCEWithLogits",
    "LabelSmoothingCrossEntropy",
    "LabelSmoothingCrossEntropyFlat",
    "linear_combination",
    "reduce_loss",
    "smooth_targets",
]
__version__ = "0.1.0"
