"""Label-smoothing losses and the confidence penalty for PyTorch and fastai, in one file that imports only torch.

Copy this file into your project: it needs only ``torch`` (2.4+). In the lsmooth package it also
uses ``fused.py``, a one-softmax CPU path for large inputs, when present.

Notation: ``K`` classes, smoothing ``eps`` (ε), ``l_c = -log softmax(x)_c``, ``y`` the target class.

Conventions (``spread``)
    ``'uniform'``  target ``q = (1-ε)·onehot(y) + ε/K``; the true class gets ``1-ε+ε/K``.
                   Szegedy et al. 2016; PyTorch ``label_smoothing``, fastai, timm, Keras.
    ``'others'``   the true class gets exactly ``1-ε``, every other class ``ε/(K-1)``.
                   fairseq, NeMo, ESPnet; He et al. 2019 ("Bag of Tricks"). Equals ``'uniform'``
                   with ``ε' = ε·K/(K-1)``.
    ``ε < 0``      negative label smoothing (Wei et al. 2022, "To Smooth or Not?"): same formula.

Per row the loss is ``Σ_c q_c·w_c·l_c`` (``w`` the optional class weights), which for index
targets is ``a·w_y·l_y + b·Σ_c w_c·l_c`` with ``(a, b) = (1-ε, ε/K)`` for ``'uniform'`` and
``(1-ε-ε/(K-1), ε/(K-1))`` for ``'others'``. Shapes, as ``F.cross_entropy``: logits (N, K) or
(N, K, d1, ...), class axis 1, or unbatched (K,); targets class indices (N, d1, ...) (0-d for
unbatched logits) or probabilities with the logits' shape.

The confidence penalty (Pereyra et al. 2017, "Regularizing Neural Networks by Penalizing Confident
Output Distributions") is cross-entropy minus ``β`` times the entropy of the prediction:
``w_y·(l_y - β·H(p))`` per row, ``H(p) = -Σ_c p_c·log p_c``.

Host reads. On the CPU, outside ``torch.compile`` and ``torch.func`` transforms (``vmap``,
``grad``), reading a tensor value into Python is free and the loss does it: one read says whether
a row is ignored, one whether a ``-inf`` logit made the result non-finite (both skip masks), and a
bad target is named in a ``ValueError``. Anywhere else (CUDA, meta, compiled, ``torch.func``) it
reads nothing: value-dependent choices are made on the device with masks, so nothing waits for the
device, the loss compiles with ``fullgraph=True`` and ``vmap(grad(loss))`` gives per-sample
gradients. Bad targets there are left to PyTorch, as in its own loss: a class index out of range
trips ``nll_loss``'s device-side assert; soft targets that are not distributions and BCE targets
outside [0, 1] are not checked. ``HOST_READS = False`` makes the CPU take that device path too
(same values): tests and benchmarks use it.

Layout: the fastai-shaped classes, ``reduce_loss``, the functionals, ``smooth_targets`` and the
plain reference twin; then the routes the label-smoothing functional takes and the input checks.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.compiler import is_compiling as _is_compiling  # bound once: measured 40 µs per call cold

_func_transforms_active = torch._C._are_functorch_transforms_active  # what autograd.Function.apply asks; not public

try:  # lsmooth's one-softmax path for large CPU inputs; this file works without it
    from .fused import fused_smoothed_nll
except ImportError:
    fused_smoothed_nll = None

__all__ = [
    "ConfidencePenaltyCrossEntropy", "LabelSmoothingBCEWithLogits", "LabelSmoothingCrossEntropy",
    "LabelSmoothingCrossEntropyFlat", "confidence_penalty_cross_entropy", "label_smoothing_cross_entropy",
    "label_smoothing_cross_entropy_reference", "reduce_loss", "smooth_targets",
]  # fmt: skip

HOST_READS = True  # False: the device path on the CPU too (see the module docstring)

_REDUCTIONS = ("mean", "sum", "none")
_SPREADS = ("uniform", "others")


class _ClassAxisLoss(nn.Module):
    """What fastai looks for on a softmax loss with index targets: ``y_int = True``; ``activation``
    (softmax) and ``decodes`` (argmax) on the class axis 1 (fastai's own act on the last axis,
    fastai#3603)."""

    y_int = True

    def activation(self, out: Tensor) -> Tensor:
        return torch.softmax(out, dim=1)

    def decodes(self, out: Tensor) -> Tensor:
        return out.argmax(dim=1)


class LabelSmoothingCrossEntropy(_ClassAxisLoss):
    """Label-smoothed cross-entropy; a drop-in for fastai's ``LabelSmoothingCrossEntropy``.

    Args (positional order as fastai's): ``eps`` (finite, ``<= 1``; ``< 0`` is negative label
    smoothing), ``weight`` (K,) with PyTorch's semantics, kept in its floating dtype as a buffer
    that follows ``.to()``/``.double()``, ``reduction`` (a plain attribute that fastai's
    ``NoneReduce`` sets), ``ignore_index``, ``spread`` ('uniform' or 'others'); shapes and
    semantics as :func:`label_smoothing_cross_entropy`. fastai: see ``_ClassAxisLoss``; pickles
    for ``learn.export()`` / ``load_learner()``.
    """

    def __init__(
        self, eps: float = 0.1, weight: Tensor | None = None, reduction: str = "mean", *,
        ignore_index: int = -100, spread: str = "uniform",
    ) -> None:  # fmt: skip
        super().__init__()
        self.eps = _check_eps(eps)
        _check_choice("reduction", reduction, _REDUCTIONS)
        _check_choice("spread", spread, _SPREADS)
        self.register_buffer("weight", _class_weight(weight))
        self.reduction = reduction
        self.ignore_index = int(ignore_index)
        self.spread = spread

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return label_smoothing_cross_entropy(
            input, target, self.eps, self.weight, self.reduction,
            ignore_index=self.ignore_index, spread=self.spread,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}, spread={self.spread!r}, ignore_index={self.ignore_index}"


class LabelSmoothingCrossEntropyFlat(LabelSmoothingCrossEntropy):
    """fastai's ``*Flat`` convention: the class axis is ``axis`` (default last), and the loss sees
    the logits flattened to (-1, K) and the targets to (-1,), so it accepts every pair fastai's
    ``CrossEntropyLossFlat`` accepts (e.g. tabular targets of shape (N, 1)) and ``'none'`` returns
    one loss per flattened item. Soft targets of the logits' shape are flattened like the logits.
    ``activation`` and ``decodes`` act on ``axis``."""

    def __init__(self, *args, axis: int = -1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.axis = axis

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        k = input.shape[self.axis]
        if target.is_floating_point() and target.shape == input.shape:
            target = target.movedim(self.axis, -1).reshape(-1, k)
        else:
            target = target.reshape(-1)
        return super().forward(input.movedim(self.axis, -1).reshape(-1, k), target)

    def activation(self, out: Tensor) -> Tensor:
        return torch.softmax(out, dim=self.axis)

    def decodes(self, out: Tensor) -> Tensor:
        return out.argmax(dim=self.axis)


class LabelSmoothingBCEWithLogits(nn.Module):
    """Binary / multi-label cross-entropy with smoothed targets ``y' = y·(1-ε) + ε/2`` (Keras).

    Equals ``F.binary_cross_entropy_with_logits(x, y*(1-eps)+eps/2, weight, pos_weight=pos_weight,
    reduction=reduction)``, except that ``'mean'`` of an empty batch is 0. ``eps`` in [0, 1];
    targets in [0, 1] with the logits' shape (any dtype; checked on the CPU only). ``weight`` and
    ``pos_weight`` are buffers kept in their floating dtype (they follow ``.to()``/``.double()``)
    and used in the logits' dtype. 16-bit logits are computed in float32. fastai:
    ``y_int = False``, sigmoid ``activation``, ``decodes`` thresholds the probabilities at ``thresh``.
    """

    y_int = False

    def __init__(
        self, eps: float = 0.1, weight: Tensor | None = None, reduction: str = "mean", *,
        pos_weight: Tensor | None = None, thresh: float = 0.5,
    ) -> None:  # fmt: skip
        super().__init__()
        self.eps = _check_eps(eps, low=0.0)
        _check_choice("reduction", reduction, _REDUCTIONS)
        for name, value in (("weight", weight), ("pos_weight", pos_weight)):
            self.register_buffer(name, None if value is None else _float(torch.as_tensor(value)))
        self.reduction = reduction
        self.thresh = thresh

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if target.shape != input.shape:
            raise ValueError(f"target has shape {tuple(target.shape)}; it must match the logits' "
                             f"shape {tuple(input.shape)}")  # fmt: skip
        target = target.to(_compute_dtype(input.dtype))
        if _host_reads_ok(input) and ((target < 0) | (target > 1)).any():
            lo, hi = target.min().item(), target.max().item()
            raise ValueError(f"targets must lie in [0, 1]; got values in [{lo:g}, {hi:g}]")
        weight, pos_weight = (None if w is None else w.to(target.dtype) for w in (self.weight, self.pos_weight))
        rows = F.binary_cross_entropy_with_logits(
            input.to(target.dtype), target * (1 - self.eps) + self.eps / 2, weight, pos_weight=pos_weight,
            reduction="none",
        )  # fmt: skip
        return reduce_loss(rows, self.reduction)

    def activation(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)

    def decodes(self, out: Tensor) -> Tensor:
        return out > self.thresh

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}"


class ConfidencePenaltyCrossEntropy(_ClassAxisLoss):
    """Cross-entropy minus ``beta`` times the entropy of the prediction (Pereyra et al. 2017).

    Args: ``beta`` (finite, ``>= 0``), ``weight`` (K,) class weights (a buffer in its floating
    dtype), ``reduction`` (a plain attribute fastai's ``NoneReduce`` sets), ``ignore_index``;
    shapes and semantics as :func:`confidence_penalty_cross_entropy`. fastai: see
    ``_ClassAxisLoss``; pickles for ``learn.export()`` / ``load_learner()``.
    """

    def __init__(
        self, beta: float = 0.1, weight: Tensor | None = None, reduction: str = "mean", *, ignore_index: int = -100
    ) -> None:
        super().__init__()
        self.beta = _check_beta(beta)
        _check_choice("reduction", reduction, _REDUCTIONS)
        self.register_buffer("weight", _class_weight(weight))
        self.reduction = reduction
        self.ignore_index = int(ignore_index)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return confidence_penalty_cross_entropy(
            input, target, self.beta, self.weight, self.reduction, ignore_index=self.ignore_index
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, reduction={self.reduction!r}, ignore_index={self.ignore_index}"


def reduce_loss(loss: Tensor, reduction: str = "mean", denom: Tensor | None = None) -> Tensor:
    """Reduce per-item losses with ``'mean'``, ``'sum'`` or ``'none'`` (fastai's helper).

    ``'mean'`` divides the sum by ``denom`` (a count, or PyTorch's ``Σ w_y`` over the rows kept),
    by default the number of items; an empty batch or a zero ``denom`` gives 0 and zero gradient
    (not NaN), decided on the device."""
    _check_choice("reduction", reduction, _REDUCTIONS)
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if denom is None:
        return total / max(loss.numel(), 1)
    denom = denom.to(total.dtype)
    return total / denom.where(denom != 0, math.inf)  # nothing to average: / inf gives 0 and zero gradient


def label_smoothing_cross_entropy(
    input: Tensor, target: Tensor, eps: float = 0.1, weight: Tensor | None = None, reduction: str = "mean", *,
    ignore_index: int = -100, spread: str = "uniform",
) -> Tensor:  # fmt: skip
    """Label-smoothed cross-entropy; the function behind :class:`LabelSmoothingCrossEntropy`.

    ``input``: logits (N, K) or (N, K, d1, ...), class axis 1, or unbatched (K,); ``target``: class
    indices (N, d1, ...) (0-d for unbatched logits) of any integer dtype, or probabilities with
    ``input``'s shape. With ``spread='uniform'``, value and gradient equal ``F.cross_entropy(input,
    target, weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)`` wherever
    that is finite: rows whose target is ``ignore_index`` give 0; ``'mean'`` divides by ``Σ w_y``
    over the other rows (index targets) or by the number of rows (probabilities, where
    ``ignore_index`` applies to nothing and must be negative, as PyTorch requires); ``'none'`` has
    the targets' shape (0-d for unbatched logits). Where PyTorch gives inf or NaN this stays finite:
    a ``-inf`` logit (an impossible class) is left out of the uniform term, whose mass spreads over
    the other classes (an impossible *target* still costs inf); ``'mean'`` of an empty or fully
    ignored batch, or of zero total target weight, is 0 with zero gradient. 16-bit logits are
    accumulated in float32 and the loss is float32 (gradients in the logits' dtype). No N×K target
    is built for class indices.
    """
    eps = _check_eps(eps)
    _check_choice("reduction", reduction, _REDUCTIONS)
    input, target, weight, out_shape = _prepare(input, target, weight)
    k, host = input.shape[1], _host_reads_ok(input)
    x = _flatten_classes(input)
    if target.is_floating_point():
        if ignore_index >= 0:
            raise ValueError(f"ignore_index={ignore_index} applies only to class indices; with probability "
                             "targets leave it negative (the default -100), as F.cross_entropy requires")  # fmt: skip
        t = _flatten_classes(target).to(_compute_dtype(input.dtype))
        if host:
            _check_soft_target(t)
    else:
        t = target if target.dim() == 1 else target.reshape(-1)  # the common case without an op: each counts here
    try:
        loss = _smoothed(x, t, eps, weight, reduction, ignore_index, spread, host)
    except IndexError:  # on the host nll_loss (or weight[t]) refuses a class index out of range: name it
        if host:
            _check_range(target, k, ignore_index)
        raise
    return loss.reshape(out_shape) if reduction == "none" else loss


def confidence_penalty_cross_entropy(
    input: Tensor, target: Tensor, beta: float = 0.1, weight: Tensor | None = None, reduction: str = "mean", *,
    ignore_index: int = -100,
) -> Tensor:  # fmt: skip
    """Cross-entropy minus ``beta`` times the entropy of the prediction (Pereyra et al. 2017,
    "Regularizing Neural Networks by Penalizing Confident Output Distributions").

    Per row ``w_y·(l_y - β·H(p))`` with ``H(p) = -Σ_c p_c·log p_c`` (a ``-inf`` logit adds
    ``0·log 0 = 0``) and ``w_y = 1`` without ``weight``; rows whose target is ``ignore_index`` give
    0; ``'mean'`` divides the sum by ``Σ w_y`` over the other rows (their number without weights),
    as ``F.cross_entropy`` does, and is 0 with zero gradient when that is 0. ``input``: logits
    (N, K) or (N, K, d1, ...), class axis 1, or unbatched (K,); ``target``: class indices
    (N, d1, ...) of any integer dtype (0-d for unbatched logits); ``'none'`` has the targets'
    shape. ``beta = 0`` is cross-entropy. 16-bit logits are computed in float32. Reads no values
    except, on the CPU, to name a class index out of range.
    """
    beta = _check_beta(beta)
    _check_choice("reduction", reduction, _REDUCTIONS)
    input, target, weight, out_shape = _prepare(input, target, weight)
    if target.is_floating_point():
        raise ValueError(f"the confidence penalty takes class indices of an integer dtype, got {target.dtype}")
    x, t = _flatten_classes(input), target.reshape(-1)
    logp = torch.log_softmax(x, 1, dtype=_compute_dtype(x.dtype))
    try:
        nll = F.nll_loss(logp, t, weight, ignore_index=ignore_index, reduction="none")  # w_y·l_y, 0 if ignored
        keep = t != ignore_index
        w_y = keep.to(logp.dtype) if weight is None else weight[t.where(keep, 0)] * keep
    except IndexError:  # on the CPU nll_loss (or weight[t]) refuses a class index out of range: name it
        if _host_reads_ok(input):
            _check_range(target, input.shape[1], ignore_index)
        raise
    entropy = -(logp.exp() * F.threshold(logp, -math.inf, 0.0)).sum(1)  # -inf -> 0: 0·log 0 = 0, zero gradient
    loss = reduce_loss(nll - beta * w_y * entropy, reduction, w_y.sum())
    return loss.reshape(out_shape) if reduction == "none" else loss


def smooth_targets(
    target: Tensor, num_classes: int, eps: float = 0.1, spread: str = "uniform", *, dtype: torch.dtype | None = None
) -> Tensor:
    """The dense smoothed targets ``q`` of class indices ``target`` (N, d1, ...): shape
    (N, num_classes, d1, ...) (class axis 1, like the logits), rows summing to 1, in ``dtype``
    (default: torch's default float dtype); negative off-target entries if ``eps < 0``.
    ``label_smoothing_cross_entropy(x, smooth_targets(t, K, eps), eps=0)`` equals
    ``label_smoothing_cross_entropy(x, t, eps)``."""
    eps = _check_eps(eps)
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} is not allowed; need at least 2 classes")
    target = _index_target(target)
    if _host_reads_ok(target):
        _check_range(target, num_classes)
    a, b = _coefficients(eps, spread, num_classes)
    q = torch.full((*target.shape, num_classes), b, dtype=dtype or torch.get_default_dtype(), device=target.device)
    q.scatter_(-1, target[..., None], a + b)
    return q.movedim(-1, 1) if q.dim() > 2 else q


def label_smoothing_cross_entropy_reference(
    input: Tensor, target: Tensor, eps: float = 0.1, weight: Tensor | None = None, reduction: str = "mean", *,
    ignore_index: int = -100, spread: str = "uniform",
) -> Tensor:  # fmt: skip
    """The plain formula, for testing the fast path: build the dense smoothed target and take
    ``-Σ_c q_c·w_c·log p_c`` (float64 recommended). Index targets only; no -inf handling."""
    k = input.shape[1]
    x = _flatten_classes(input)
    t = target.reshape(-1).long()
    keep = t != ignore_index
    q = smooth_targets(t.where(keep, 0), k, eps, spread, dtype=x.dtype)
    w = torch.ones(k, dtype=x.dtype) if weight is None else weight.to(x.dtype)
    rows = -(q * w * torch.log_softmax(x, 1)).sum(1) * keep
    if reduction == "none":
        return rows.reshape(target.shape)
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / (w[t.where(keep, 0)] * keep).sum()


def _smoothed(x, t, eps, weight, reduction, ignore_index, spread, host) -> Tensor:
    """The loss of logits (M, K) and targets (M,) or (M, K); ``host``: values may be read."""
    k, keep, denom = x.shape[1], None, None
    if not t.is_floating_point():
        some_ignored = _some_ignored(t, k, ignore_index) if host else True
        if host and not some_ignored and weight is None and reduction != "none":
            loss = _host_reduced(x, t, *_coefficients(eps, spread, k), reduction, ignore_index)
            if loss is not None:
                return loss
            host = False  # a -inf logit: straight to the masked path
        keep = t != ignore_index if some_ignored else None
        w_y = None if weight is None else weight[t] if keep is None else weight[t.where(keep, 0)] * keep
        denom = w_y.sum() if w_y is not None else None if keep is None else keep.sum(dtype=_compute_dtype(x.dtype))
    rows = partial(_rows, x, t, eps, weight, spread, ignore_index, keep)
    loss = reduce_loss(rows(masked=not host), reduction, denom)
    if host and not math.isfinite((loss if loss.dim() == 0 else loss.sum()).item()):  # a -inf logit
        loss = reduce_loss(rows(masked=True), reduction, denom)
    return loss


def _rows(x, target, eps, weight, spread, ignore_index, keep, masked):
    """Per-row loss ``a·T - b·Σ_c w_c·log p_c``, 0 where ``keep`` is False, with the target term
    ``T = w_y·l_y`` for class indices and ``-Σ_c w_c·q_c·log p_c`` for probabilities. ``masked``
    leaves classes whose logit is ``-inf`` out of the uniform term (per row, ``K`` is the number of
    finite logits); without it, such a row comes out non-finite."""
    logp = torch.log_softmax(x, 1, dtype=_compute_dtype(x.dtype))
    if target.is_floating_point():
        wq = target if weight is None else target * weight
        # masked: an impossible class without target mass costs 0 (not 0·log 0 = NaN)
        term = -(torch.where(wq != 0, wq * logp, 0) if masked else wq * logp).sum(1)
    else:
        term = F.nll_loss(logp, target, weight, ignore_index=ignore_index, reduction="none")
    n_classes = x.shape[1]
    if masked:
        n_classes = (logp > -math.inf).sum(1, dtype=logp.dtype)
        logp = F.threshold(logp, -math.inf, 0.0)  # -inf -> 0: one op each way (where: three)
    a, b = _coefficients(eps, spread, n_classes)
    if keep is not None:  # nll_loss gave ignored rows 0; the uniform term leaves them out by its coefficient
        b = torch.where(keep, b, logp.new_zeros(()))  # not a plain 0: a float b would become float32
    return a * term - b * (logp.sum(1) if weight is None else logp @ weight)


def _some_ignored(t: Tensor, num_classes: int, ignore_index: int) -> bool:
    """Host only: whether a class index may equal ``ignore_index``. One read where that lies
    outside ``[0, K)`` (as usual): any other index out of range makes ``nll_loss`` raise."""
    if not len(t):
        return False
    if ignore_index < 0:
        return int(t.min()) < 0
    if ignore_index >= num_classes:
        return int(t.max()) >= num_classes
    return bool((t == ignore_index).any())


def _host_reduced(x: Tensor, t: Tensor, a: float, b: float, reduction: str, ignore_index: int) -> Tensor | None:
    """Host only: the summed or averaged loss of class indices without weights or ignored rows,
    reduced as it is computed; None if it is not finite (a ``-inf`` logit: the masked path handles
    it). The fused path where it applies, else ``a·NLL - b·Σ log p`` from three native kernels (at
    the Pets head the cost is per kernel: per-row losses then their reduction take twice as many)."""
    loss = fused_smoothed_nll(x, t, a, b, reduction) if fused_smoothed_nll is not None else None
    if loss is not None:  # None: not worth it here, p_y underflows or a -inf logit
        return loss
    logp = torch.log_softmax(x, 1, dtype=_compute_dtype(x.dtype))
    nll = F.nll_loss(logp, t, ignore_index=ignore_index, reduction=reduction)
    scale = 1 / max(len(t), 1) if reduction == "mean" else 1
    loss = torch.add(nll * a, logp.sum(), alpha=-b * scale)
    return loss if math.isfinite(loss.item()) else None


def _prepare(input: Tensor, target: Tensor, weight: Tensor | None):
    """Checked ``(logits, targets, weight, shape of 'none''s result)``, plain tensors (fastai's
    subclasses such as TensorImage refuse to mix in some ops), unbatched logits (K,) as a batch of
    one, class indices as int64 and ``weight`` on the logits' device in their compute dtype."""
    input = input if type(input) is Tensor else input.as_subclass(Tensor)
    target = target if type(target) is Tensor else target.as_subclass(Tensor)
    dim = input.dim()
    unbatched = dim == 1  # as F.cross_entropy takes it: a 0-d class index or (K,) probabilities
    if unbatched:
        if target.shape != (input.shape if target.is_floating_point() else ()):
            raise ValueError(f"target has shape {tuple(target.shape)}; unbatched logits of shape {tuple(input.shape)} "
                             f"need a 0-d class index or probabilities of shape {tuple(input.shape)}")  # fmt: skip
        input, target = input[None], target[None]
    elif dim == 0:
        raise ValueError("logits must have shape (K,), (N, K) or (N, K, d1, ...), got a 0-d tensor")
    k = input.shape[1]
    if k < 2:
        raise ValueError(f"logits have K={k} classes on axis 1; need K >= 2 "
                         "(use LabelSmoothingBCEWithLogits for binary)")  # fmt: skip
    if weight is not None:
        if weight.shape != (k,):
            raise ValueError(f"weight has shape {tuple(weight.shape)}; expected ({k},), one weight per class")
        weight = weight.to(device=input.device, dtype=_compute_dtype(input.dtype))
    index_shape = input.shape[:1] + input.shape[2:]
    if target.is_floating_point() and target.dim() > 1:  # probabilities
        if target.shape != input.shape:
            raise ValueError(f"soft target has shape {tuple(target.shape)}; it must match the logits' shape "
                             f"{tuple(input.shape)}")  # fmt: skip
    else:
        if target.shape != index_shape:
            raise ValueError(f"target has shape {tuple(target.shape)}; logits of shape {tuple(input.shape)} need "
                             f"class indices of shape {tuple(index_shape)} or probabilities of that shape")  # fmt: skip
        target = _index_target(target)
    return input, target, weight, torch.Size() if unbatched else index_shape


def _class_weight(weight) -> Tensor | None:
    """A class-weight buffer: (K,), in the caller's floating dtype (so it follows ``.to()``/``.double()``)."""
    if weight is None:
        return None
    weight = _float(torch.as_tensor(weight))
    if weight.dim() != 1:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected (K,), one weight per class")
    return weight


def _float(t: Tensor) -> Tensor:
    """``t`` itself if floating point, else in torch's default float dtype."""
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def _flatten_classes(x: Tensor) -> Tensor:
    """(N, K, d1, ...) -> (N·d1·..., K)."""
    return x.movedim(1, -1).reshape(-1, x.shape[1]) if x.dim() > 2 else x


def _host_reads_ok(x: Tensor) -> bool:
    """Whether reading values of ``x`` into Python is free: on the CPU, not being compiled and not
    inside a ``torch.func`` transform (``vmap`` refuses ``.item()``); never if ``HOST_READS`` is off."""
    return HOST_READS and x.is_cpu and not _is_compiling() and not _func_transforms_active()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # 16-bit logits are accumulated in float32: a sum over K = 50,000 log-probabilities overflows fp16.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _coefficients(eps: float, spread: str, n_classes):
    """``(a, b)`` with ``q = a·onehot + b`` over the ``n_classes`` possible classes (int or per-row tensor)."""
    if spread == "uniform":
        return 1 - eps, eps / n_classes
    _check_choice("spread", spread, _SPREADS)
    if isinstance(n_classes, Tensor):
        b = torch.where(n_classes > 1, eps / (n_classes - 1).clamp_min(1), 0.0)
    else:
        b = eps / (n_classes - 1) if n_classes > 1 else 0.0
    return 1 - eps - b, b


def _index_target(target: Tensor) -> Tensor:
    if target.dtype == torch.int64:  # the common case first: every op counts at the Pets head
        return target
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise ValueError(f"index targets must have an integer dtype, got {target.dtype}; "
                         "soft targets must be floating point with the logits' shape")  # fmt: skip
    return target.long()


def _check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; use one of {', '.join(map(repr, allowed))}")


def _check_eps(eps, low: float = -math.inf) -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"eps={eps!r} must be a real number") from None
    if not (math.isfinite(value) and low <= value <= 1):
        allowed = "in [0, 1]" if low == 0 else "finite and <= 1 (negative values: negative label smoothing)"
        raise ValueError(f"eps={eps!r} is not allowed; eps must be {allowed}")
    return value


def _check_beta(beta) -> float:
    try:
        value = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta={beta!r} must be a real number") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"beta={beta!r} is not allowed; beta must be finite and >= 0 (0: plain cross-entropy)")
    return value


def _check_range(target: Tensor, num_classes: int, ignore_index: int | None = None) -> None:
    """Host only: a ValueError naming a class index outside ``[0, num_classes)`` (other than ``ignore_index``),
    shown alone where it replaces PyTorch's ``IndexError``."""
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index if ignore_index is not None else True)
    if bad.any():
        where = tuple(bad.nonzero()[0].tolist())
        also = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise ValueError(f"target has class index {target[where].item()} at position {where}; "
                         f"class indices must be in [0, {num_classes}){also}") from None  # not PyTorch's IndexError too


def _check_soft_target(target: Tensor) -> None:
    """Host only: each row must be a distribution, within a tolerance fit for the dtype."""
    tol = 1e-2 if target.dtype in (torch.float16, torch.bfloat16) else 1e-3
    sums = target.sum(1, dtype=torch.float32)
    bad = (target.amin(1) < -tol) | ((sums - 1).abs() > tol)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"soft target row {row} is not a distribution (sum={sums[row].item():.6g}, "
                         f"min={target[row].min().item():.6g}); each row must be >= 0 and sum to 1 within {tol:g}")
