"""Online label smoothing for PyTorch and fastai, in one file that imports only torch.

Zhang, Jiang, Zhou, Cheng, "Delving Deep into Label Smoothing", IEEE TIP 30:5984-5996, 2021
(arXiv 2011.12562). The soft target of class ``c`` in epoch ``t`` is the mean softmax of the
training samples of class ``c`` that the model classified correctly in epoch ``t - 1``; the loss
blends it with the hard label:

    loss_i = α·l_y + (1 - α)·(-Σ_c T[y, c]·log p_c),   l_y = -log p_y,  p = softmax(x_i),

with ``T`` (K, K) the per-class soft targets, one row per class (the paper and its public port
ankandrew/online-label-smoothing-pt keep one column per class). The paper weighs ``α = 0.5``; in
the first epoch ``T = (1 - first_eps)·I + first_eps/K`` (uniform with ``first_eps = 1``, hard
labels with 0).

Use: call the loss as usual, :meth:`OnlineLabelSmoothingCrossEntropy.update` after each training
batch (it adds the softmax of the correctly classified samples to their class) and
:meth:`OnlineLabelSmoothingCrossEntropy.next_epoch` after each training epoch (sum ``sums`` and
``counts`` over processes first in a multi-process run). Nothing reads a tensor value into Python,
so none of this waits for a GPU. The three buffers (``targets``, ``sums``, ``counts``) are the whole
state: ``state_dict`` holds them, and a run resumed from it continues exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OnlineLabelSmoothingCrossEntropy"]

_REDUCTIONS = ("mean", "sum", "none")
_HALF = (torch.float16, torch.bfloat16)


class OnlineLabelSmoothingCrossEntropy(nn.Module):
    """Online label smoothing (Zhang et al. 2021): ``α·CE(hard label) + (1-α)·CE(T[y])``.

    Args: ``num_classes`` K (>= 2), ``alpha`` (in [0, 1]; the weight of the hard label),
    ``first_eps`` (in [0, 1]; the first epoch's targets are ``(1-first_eps)·I + first_eps/K``),
    ``reduction`` ('mean', 'sum' or 'none'; a plain attribute fastai's ``NoneReduce`` sets).

    Buffers (float32, follow ``.to()``): ``targets`` (K, K), row ``c`` the soft target of class
    ``c`` now; ``sums`` (K, K) and ``counts`` (K,), this epoch's summed softmax and number of the
    correctly classified training samples of each class. :meth:`next_epoch` turns them into the
    next ``targets``; a class without a correctly classified sample keeps its targets (the public
    port ankandrew/online-label-smoothing-pt leaves its column at zero, so such a class loses its
    soft term).

    Shapes: logits (N, K), class indices (N,) of any integer dtype; ``'none'`` gives (N,),
    ``'mean'`` of an empty batch is 0. 16-bit logits are computed in float32. A ``-inf`` logit
    where the target has no mass gives NaN (0·log 0), as ``F.cross_entropy`` with probabilities. fastai:
    ``y_int = True``; ``activation`` (softmax) and ``decodes`` (argmax) on the class axis 1.
    """

    y_int = True

    def __init__(
        self, num_classes: int, alpha: float = 0.5, *, first_eps: float = 1.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r} is not allowed; need an int >= 2")
        self.alpha = _check_unit("alpha", alpha)
        self.first_eps = _check_unit("first_eps", first_eps)
        self.num_classes, self.reduction = num_classes, _check_reduction(reduction)
        eye = torch.eye(num_classes)
        self.register_buffer("targets", (1 - self.first_eps) * eye + self.first_eps / num_classes)
        self.register_buffer("sums", torch.zeros(num_classes, num_classes))
        self.register_buffer("counts", torch.zeros(num_classes))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        k = self.num_classes
        if input.dim() != 2 or input.shape[1] != k:
            raise ValueError(f"logits have shape {tuple(input.shape)}; expected (N, {k})")
        if target.shape != input.shape[:1] or target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(f"target has shape {tuple(target.shape)} and dtype {target.dtype}; expected class "
                             f"indices of an integer dtype and shape ({input.shape[0]},)")  # fmt: skip
        _check_reduction(self.reduction)  # fastai's NoneReduce sets it
        target = target.long()
        # 16-bit logits in float32: a sum over many classes of log-probabilities overflows fp16
        logp = torch.log_softmax(input, 1, dtype=torch.float32 if input.dtype in _HALF else input.dtype)
        soft = self.targets.to(logp.dtype)[target]  # (N, K): the soft target of each row's class
        rows = self.alpha * F.nll_loss(logp, target, reduction="none") - (1 - self.alpha) * (soft * logp).sum(1)
        if self.reduction == "none":
            return rows
        return rows.sum() if self.reduction == "sum" else rows.sum() / max(len(rows), 1)

    @torch.no_grad()
    def update(self, input: Tensor, target: Tensor) -> None:
        """Adds the softmax of each correctly classified row of ``input`` (N, K) to ``sums`` and one
        to ``counts``, at its class ``target`` (N,). Call it on training batches only."""
        p = torch.softmax(input.detach(), 1, dtype=self.sums.dtype)
        correct = p.argmax(1) == target
        self.sums.index_add_(0, target, p * correct[:, None])
        self.counts.index_add_(0, target, correct.to(self.counts.dtype))

    @torch.no_grad()
    def next_epoch(self) -> None:
        """``targets[c] = sums[c] / counts[c]`` for every class with ``counts[c] > 0`` (the others keep
        theirs); then ``sums`` and ``counts`` start again from zero."""
        seen = (self.counts > 0)[:, None]
        self.targets.copy_(torch.where(seen, self.sums / self.counts.clamp_min(1)[:, None], self.targets))
        self.sums.zero_()
        self.counts.zero_()

    def activation(self, out: Tensor) -> Tensor:
        return torch.softmax(out, dim=1)

    def decodes(self, out: Tensor) -> Tensor:
        return out.argmax(dim=1)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, first_eps={self.first_eps}, "
                f"reduction={self.reduction!r}")  # fmt: skip


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported; use one of {', '.join(map(repr, _REDUCTIONS))}")
    return reduction


def _check_unit(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a real number") from None
    if not (math.isfinite(v) and 0 <= v <= 1):
        raise ValueError(f"{name}={value!r} is not allowed; {name} must be in [0, 1]")
    return v
