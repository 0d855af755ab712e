"""Label-smoothing losses for PyTorch and fastai, in one file that imports only torch.

Copy this file into your project if you like: it needs nothing but ``torch`` (2.4 or newer).

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
``(1-ε-ε/(K-1), ε/(K-1))`` for ``'others'``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LabelSmoothingBCEWithLogits",
    "LabelSmoothingCrossEntropy",
    "LabelSmoothingCrossEntropyFlat",
    "label_smoothing_cross_entropy",
    "label_smoothing_cross_entropy_reference",
    "linear_combination",
    "reduce_loss",
    "smooth_targets",
]

_REDUCTIONS = ("mean", "sum", "none")
_SPREADS = ("uniform", "others")
# Where no gradient is needed (evaluation), for 16-bit logits (float32 softmax) and for rows with
# -inf logits, rows are processed in blocks of about this many logits (4 MB in fp32): temporaries
# stay in cache and no N×K buffer is allocated; few enough blocks that per-op overhead stays small.
_BLOCK = 1 << 20
# Up to this many logits, plain native ops beat a Python autograd.Function (per-op overhead wins).
_SMALL = 1 << 16
# Devices where reading a number back to Python needs no synchronisation (backward uses one for a one-pass update).
_HOST_DEVICES = ("cpu",)
# Soft targets count as distributions when every entry is >= -tol and every row sums to 1 ± tol.
_SOFT_TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2}
_SOFT_TOL_DEFAULT = 1e-3


def reduce_loss(loss: Tensor, reduction: str = "mean") -> Tensor:
    """Reduce per-item losses with ``'mean'``, ``'sum'`` or ``'none'`` (fastai's helper)."""
    _check_choice("reduction", reduction, _REDUCTIONS)
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def linear_combination(x, y, eps: float):
    """``eps·x + (1-eps)·y`` (fastai's helper)."""
    return eps * x + (1 - eps) * y


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


def _coefficients(eps: float, spread: str, n_classes):
    """``(a, b)`` with ``q = a·onehot + b`` over the ``n_classes`` possible classes (int or per-row tensor)."""
    if spread == "uniform":
        return 1 - eps, eps / n_classes
    if isinstance(n_classes, Tensor):
        b = torch.where(n_classes > 1, eps / (n_classes - 1).clamp_min(1), 0.0)
    else:
        b = eps / (n_classes - 1) if n_classes > 1 else 0.0
    return 1 - eps - b, b


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # 16-bit logits are accumulated in float32: a sum over K = 50,000 log-probabilities overflows fp16.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def smooth_targets(
    target: Tensor, num_classes: int, eps: float = 0.1, spread: str = "uniform", *, dtype: torch.dtype | None = None
) -> Tensor:
    """The dense smoothed target distribution ``q``, for inspection, teaching and soft-target pipelines.

    ``target``: class indices of shape ``(N, d1, ...)``. Returns ``dtype`` (default: the default
    float dtype) of shape ``(N, num_classes, d1, ...)`` (class axis 1, like the logits), each row
    summing to 1. With ``eps < 0`` the off-target entries are negative.
    ``label_smoothing_cross_entropy(x, smooth_targets(t, K, eps), eps=0)`` equals
    ``label_smoothing_cross_entropy(x, t, eps)``.
    """
    eps = _check_eps(eps)
    _check_choice("spread", spread, _SPREADS)
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} is not allowed; need at least 2 classes")
    target, _ = _check_index_target(target, num_classes, ignore_index=None)
    a, b = _coefficients(eps, spread, num_classes)
    dense = F.one_hot(target, num_classes).to(dtype or torch.get_default_dtype()) * a + b
    return dense.movedim(-1, 1) if dense.dim() > 2 else dense


def _check_index_target(target: Tensor, num_classes: int, ignore_index: int | None) -> tuple[Tensor, bool]:
    """Class indices as int64, checked; and whether some of them may equal ``ignore_index``."""
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"index targets must have an integer dtype, got {target.dtype}; soft targets must be "
            "floating point with the logits' shape"
        )
    target = target.long()
    if target.numel() == 0:
        return target, False
    lo, hi = (int(v) for v in torch.aminmax(target))  # one cheap pass decides the common case
    if 0 <= lo and hi < num_classes:
        return target, ignore_index is not None and lo <= ignore_index <= hi
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bad.any():
        where = bad.nonzero()[0]
        value = target[tuple(where)].item()
        also = "" if ignore_index is None else f" (or ignore_index={ignore_index})"
        raise ValueError(
            f"target has class index {value} at position {tuple(where.tolist())}; "
            f"class indices must be in [0, {num_classes}){also}"
        )
    return target, True


def _check_soft_target(target: Tensor) -> None:
    tol = _SOFT_TOL.get(target.dtype, _SOFT_TOL_DEFAULT)
    sums = target.sum(1, dtype=torch.float32)
    bad = (target.amin(1) < -tol) | ((sums - 1).abs() > tol)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"soft target row {row} is not a distribution (sum={sums[row].item():.6g}, "
            f"min={target[row].min().item():.6g}); each row must be >= 0 and sum to 1 within {tol:g}"
        )


class _SmoothedNLL(torch.autograd.Function):
    """Smoothed NLL for index targets, without materialising any N×K target.

    The softmax is computed once, in forward, and kept: backward turns it into the gradient in
    place. The loss needs only ``log p_y`` and ``Σ_c w_c·log p_c = Σ_c w_c·x_c - lse·Σ_c w_c``:
    ``log p_y`` is read off the softmax and ``lse = x_y - log p_y``; rows where ``p_y``
    underflows get ``lse`` from ``logsumexp`` instead. Backward writes
    ``g·(S·softmax(x) - b·w) - g·a·w_y·onehot(y)``, where ``S = a·w_y + b·Σ_c w_c`` is the row's
    total target weight (1 without weights). Logits of ``-inf`` are left out of the uniform term
    (per row ``K`` becomes the number of finite logits). ``keep`` (rows not ignored) and ``w_y``
    (weight of each row's target) may be None.

    Without ``need_grad``, and for 16-bit logits, the softmax goes into a reused float32 block
    buffer instead (backward then recomputes it block by block). With ``scale`` (only without
    weights or ignored rows) forward returns the rows' losses summed and multiplied by ``scale``.
    """

    @staticmethod
    def forward(ctx, x, target, keep, w_y, weight, eps, spread, need_grad, scale):
        n, k = x.shape
        cdt = _compute_dtype(x.dtype)
        ctx.eps, ctx.spread, ctx.scale = eps, spread, scale
        ctx.work = None
        t1 = target[:, None]
        reduced = scale is not None and n > 0
        if need_grad and cdt == x.dtype:
            # x summed before the softmax, not after: measured faster (x is then still in cache for the softmax).
            x_sum = x.sum(dtype=cdt) if reduced else x.sum(1) if weight is None else x @ weight
            ctx.work = torch.softmax(x, 1)
            p_y = ctx.work.gather(1, t1)
        else:
            p_y, x_sum = _softmax_at_target_blocks(x, target, weight, cdt)
            if reduced:
                x_sum = x_sum.sum()
        x_y = x.gather(1, t1)
        tiny = torch.finfo(cdt).tiny

        if reduced:
            # The summed loss Σ_rows [-a·log p_y + b·(K·lse - Σ_c x_c)] needs three sums, with
            # Σ lse = Σ x_y - Σ log p_y: one sync and no more N-sized arithmetic.
            p_min, s_lp, s_xy, s_x = torch.stack((p_y.amin(), p_y.log().sum(), x_y.sum(dtype=cdt), x_sum)).tolist()
            if p_min >= tiny and math.isfinite(s_x):  # else: underflow or -inf logits, per row below
                a, b = _coefficients(eps, spread, k)
                ctx.save_for_backward(x, target, None, None, None, None)
                return x.new_tensor((-a * s_lp + b * (k * (s_xy - s_lp) - s_x)) * scale, dtype=cdt)

        p_y, x_y = p_y.squeeze(1), x_y.squeeze(1).to(cdt)
        if reduced:  # rare: redo the row sums that the reduced path summed up
            x_sum = x.sum(1, dtype=cdt)
        lp_y = p_y.where(p_y >= tiny, 0).log_()  # underflow -> -inf, fixed below
        lse = x_y - lp_y
        n_valid = None
        w_sum = k if weight is None else weight.sum()
        if not math.isfinite(lse.sum().add_(x_sum.sum()).item()):
            # p_y underflowed (or the target itself is impossible): those rows' lse from logsumexp
            bad = ~lse.isfinite()
            if bad.any():
                lse[bad] = torch.logsumexp(x[bad].to(cdt), 1)
                lp_y[bad] = x_y[bad] - lse[bad]
            # A -inf logit marks an impossible class: redo the sums with those classes left out.
            if not math.isfinite(x_sum.sum().item()):
                n_valid, w_sum, x_sum = _finite_class_sums(x, weight, cdt)
        a, b = _coefficients(eps, spread, k if n_valid is None else n_valid)
        lp_sum = x_sum.sub_(lse.mul_(w_sum))
        if w_y is not None:
            lp_y = lp_y.mul_(w_y)
        loss = lp_y.mul_(-a).sub_(lp_sum, alpha=b) if n_valid is None else -(a * lp_y + b * lp_sum)
        if keep is not None:
            loss = loss.where(keep, 0.0)
        ctx.save_for_backward(x, target, keep, w_y, weight, n_valid)
        return loss if scale is None else loss.sum() * scale

    @staticmethod
    def backward(ctx, grad_loss):
        x, target, keep, w_y, weight, n_valid = ctx.saved_tensors
        n, k = x.shape
        cdt = _compute_dtype(x.dtype)
        a, b = _coefficients(ctx.eps, ctx.spread, k if n_valid is None else n_valid)
        grad = ctx.work
        fast = grad is not None and ctx.scale is not None and n_valid is None and not torch.is_grad_enabled()
        if fast and grad.device.type in _HOST_DEVICES:
            # No weights, no ignored rows, one upstream scale g for all rows, read as a number (free on
            # the host): g·(softmax - b) - g·a·onehot(y) in one pass instead of _write_grad's two.
            ctx.work = None
            g = grad_loss.item() * ctx.scale
            torch.add(grad.new_full((), -g * b), grad, alpha=g, out=grad)
            grad.scatter_add_(1, target[:, None], grad.new_full((1, 1), -g * a).expand(n, 1))
            return grad, None, None, None, None, None, None, None, None
        g = grad_loss if ctx.scale is None else (grad_loss * ctx.scale).expand(n)
        if keep is not None:
            g = g.where(keep, 0.0)
        valid = None if n_valid is None else x != -math.inf
        c_true = g * -a if w_y is None else g * w_y * -a
        if weight is None and n_valid is None:
            c_soft, c_flat = g, None  # the smoothed target sums to 1; its uniform part is g·b
        else:
            w_sum = (n_valid if weight is None else valid.to(cdt) @ weight) if n_valid is not None else weight.sum()
            c_soft = g * (a * (1.0 if w_y is None else w_y) + b * w_sum)
            c_flat = g * b

        if torch.is_grad_enabled():  # create_graph=True: build the gradient from differentiable ops
            ctx.work = None
            flat = (g * b if c_flat is None else c_flat)[:, None] * (weight if weight is not None else 1.0)
            if valid is not None:
                flat = flat * valid
            grad = c_soft[:, None] * torch.softmax(x, 1, dtype=cdt) - flat
            grad = grad + c_true[:, None] * F.one_hot(target, k).to(cdt)
            return grad.to(x.dtype), None, None, None, None, None, None, None, None

        ctx.work = None  # a second backward (retain_graph) recomputes the softmax
        if grad is not None:
            _write_grad(grad, target[:, None], c_soft, c_flat, c_true, b, weight, valid)
            return grad, None, None, None, None, None, None, None, None
        grad = torch.empty_like(x)
        rows = max(1, _BLOCK // k)
        buf = grad if cdt == x.dtype else x.new_empty(min(rows, n), k, dtype=cdt)
        for i in range(0, n, rows):
            j = min(i + rows, n)
            gb = buf[i:j] if buf is grad else buf[: j - i]
            torch.softmax(x[i:j], 1, dtype=cdt, out=gb)
            _write_grad(
                gb, target[i:j, None], c_soft[i:j], None if c_flat is None else c_flat[i:j],
                c_true[i:j], b, weight, None if valid is None else valid[i:j],
            )  # fmt: skip
            if buf is not grad:
                grad[i:j] = gb
        return grad, None, None, None, None, None, None, None, None


def _softmax_at_target_blocks(x: Tensor, target: Tensor, weight: Tensor | None, cdt: torch.dtype):
    """``softmax(x)_y`` (N, 1) and ``Σ_c w_c·x_c`` (N,) per row, through a reused block buffer (in ``cdt``)."""
    n, k = x.shape
    rows = max(1, _BLOCK // k)
    buf = x.new_empty(min(rows, n), k, dtype=cdt)
    p_y, x_sum = x.new_empty(n, 1, dtype=cdt), x.new_empty(n, dtype=cdt)
    for i in range(0, n, rows):
        xb = x[i : i + rows]
        p = torch.softmax(xb, 1, dtype=cdt, out=buf[: xb.shape[0]])
        torch.gather(p, 1, target[i : i + rows, None], out=p_y[i : i + rows])
        if weight is None:
            torch.sum(xb, 1, dtype=cdt, out=x_sum[i : i + rows])
        else:
            torch.mv(xb.to(cdt), weight, out=x_sum[i : i + rows])
    return p_y, x_sum


def _finite_class_sums(x: Tensor, weight: Tensor | None, cdt: torch.dtype):
    """Per row, over the classes whose logit is not ``-inf``: their count, ``Σ_c w_c`` and ``Σ_c w_c·x_c``."""
    n, k = x.shape
    rows = max(1, _BLOCK // k)
    n_valid, w_sum, x_sum = (x.new_empty(n, dtype=cdt) for _ in range(3))
    for i in range(0, n, rows):
        valid = x[i : i + rows] != -math.inf
        xb = x[i : i + rows].to(cdt).masked_fill(~valid, 0)
        n_valid[i : i + rows] = valid.sum(1)
        if weight is None:
            x_sum[i : i + rows] = xb.sum(1)
            w_sum[i : i + rows] = n_valid[i : i + rows]
        else:
            x_sum[i : i + rows] = xb @ weight
            w_sum[i : i + rows] = valid.to(cdt) @ weight
    return n_valid, w_sum, x_sum


def _write_grad(out, target, c_soft, c_flat, c_true, b, weight, valid) -> None:
    """``out = c_soft·out - c_flat·w (valid classes only) + c_true·onehot(target)``, in place, where
    ``out`` holds the softmax.

    ``c_flat=None`` means ``c_flat = c_soft·b`` with a scalar ``b`` and no weights or masks."""
    if c_flat is None:
        out.sub_(b).mul_(c_soft[:, None])
    else:
        out.mul_(c_soft[:, None])
        if weight is None:
            out.sub_(c_flat[:, None])
        else:
            out.addcmul_(c_flat[:, None], weight, value=-1)
        if valid is not None:
            out.masked_fill_(~valid, 0)
    out.scatter_add_(1, target, c_true[:, None])


def _flatten_classes(x: Tensor) -> Tensor:
    """(N, K, d1, ...) -> (N·d1·..., K), rows contiguous."""
    return x.movedim(1, -1).reshape(-1, x.shape[1]) if x.dim() > 2 else x.contiguous()


def _check_input(input: Tensor, weight: Tensor | None) -> int:
    if input.dim() < 2:
        raise ValueError(f"logits must have shape (N, K) or (N, K, d1, ...), got shape {tuple(input.shape)}")
    k = input.shape[1]
    if k < 2:
        raise ValueError(
            f"logits have K={k} classes on axis 1; need K >= 2 (use LabelSmoothingBCEWithLogits for binary)"
        )
    if weight is not None and weight.shape != (k,):
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected ({k},), one weight per class")
    return k


def label_smoothing_cross_entropy(
    input: Tensor,
    target: Tensor,
    eps: float = 0.1,
    weight: Tensor | None = None,
    reduction: str = "mean",
    *,
    ignore_index: int = -100,
    spread: str = "uniform",
) -> Tensor:
    """Label-smoothed cross-entropy; the function behind :class:`LabelSmoothingCrossEntropy`.

    Shapes: ``input`` (N, K) or (N, K, d1, ...) logits, class axis 1; ``target`` either class
    indices (N, d1, ...) of any integer dtype, or class probabilities with ``input``'s shape.

    With ``spread='uniform'`` the value and gradient equal
    ``F.cross_entropy(input, target, weight, ignore_index=ignore_index, reduction=reduction,
    label_smoothing=eps)`` for every input PyTorch accepts. In detail, for index targets:
    rows whose target is ``ignore_index`` contribute 0, and ``'mean'`` divides the sum by
    ``Σ w_y`` over the other rows (their count without ``weight``). For soft targets,
    ``q' = a·q + b`` over the classes, ``'mean'`` divides by the number of rows and
    ``ignore_index`` does not apply. Where PyTorch returns inf or NaN this stays finite:

    * a logit of ``-inf`` marks an impossible class; it is left out of the uniform term, whose
      mass spreads over the remaining classes (the loss is still inf if the *target* class is
      impossible, as it is for plain cross-entropy);
    * ``'mean'`` over an empty batch, a fully ignored batch or zero total target weight is 0,
      with zero gradients.

    16-bit logits are accumulated in float32 and the loss is float32; gradients have the logits'
    dtype. Index targets never materialise an N×K one-hot or smoothed target.
    """
    _check_choice("reduction", reduction, _REDUCTIONS)
    _check_choice("spread", spread, _SPREADS)
    eps = _check_eps(eps)
    k = _check_input(input, weight)
    # fastai's tensor subclasses (TensorImage, TensorCategory, ...) refuse to mix in some ops
    input = input if type(input) is Tensor else input.as_subclass(Tensor)
    target = target if type(target) is Tensor else target.as_subclass(Tensor)
    cdt = _compute_dtype(input.dtype)
    if weight is not None:
        weight = weight.to(device=input.device, dtype=cdt)
    x = _flatten_classes(input)

    if target.is_floating_point() and target.dim() > 1:
        if target.shape != input.shape:
            raise ValueError(
                f"soft target has shape {tuple(target.shape)}; it must match the logits' shape {tuple(input.shape)}"
            )
        q = _flatten_classes(target)
        _check_soft_target(q)
        rows = _soft_rows(x, q.to(cdt), eps, weight, spread)
        denom = None
        out_shape = input.shape[:1] + input.shape[2:]
    else:
        expected = input.shape[:1] + input.shape[2:]
        if target.shape != expected:
            raise ValueError(
                f"target has shape {tuple(target.shape)}; logits of shape {tuple(input.shape)} need "
                f"class indices of shape {tuple(expected)} or probabilities of shape {tuple(input.shape)}"
            )
        t, some_ignored = _check_index_target(target, k, ignore_index)
        t, keep = t.reshape(-1), None
        if some_ignored:
            keep = t != ignore_index
            t = t.where(keep, 0)
        if keep is None and weight is None and 0 < x.numel() <= _SMALL:
            loss = _small_unweighted(x, t, eps, spread, reduction, cdt)
            if math.isfinite(loss.sum().item()):  # else: -inf logits, handled below
                return loss.reshape(target.shape) if reduction == "none" else loss
        w_y = None if weight is None else weight[t] if keep is None else weight[t] * keep
        need_grad = torch.is_grad_enabled() and x.requires_grad
        if keep is None and weight is None and reduction != "none":  # reduced inside: cheaper
            scale = 1.0 if reduction == "sum" else 1.0 / max(x.shape[0], 1)
            return _SmoothedNLL.apply(x, t, None, None, None, eps, spread, need_grad, scale)
        rows = _SmoothedNLL.apply(x, t, keep, w_y, weight, eps, spread, need_grad, None)
        denom = w_y.sum() if w_y is not None else keep.sum() if keep is not None else None
        out_shape = target.shape

    if reduction == "none":
        return rows.reshape(out_shape)
    if reduction == "sum":
        return rows.sum()
    if denom is None:  # every row counts once
        return rows.mean() if rows.numel() else rows.sum()
    return torch.where(denom != 0, rows.sum() / denom.where(denom != 0, 1), 0.0)


def _small_unweighted(x: Tensor, t: Tensor, eps: float, spread: str, reduction: str, cdt: torch.dtype) -> Tensor:
    """Small inputs without weights or ignored rows: ``a·NLL - b·Σ_c log p_c`` from native ops.

    At a few thousand logits the cost is per-op overhead, and autograd's C++ backward for these
    ops is cheaper than a Python ``autograd.Function``; no N×K target is built either way.
    """
    a, b = _coefficients(eps, spread, x.shape[1])
    logp = torch.log_softmax(x, 1, dtype=cdt)
    if reduction == "none":
        return F.nll_loss(logp, t, reduction="none").mul(a).sub_(logp.sum(1), alpha=b)
    nll = F.nll_loss(logp, t, reduction=reduction)
    return nll * a - logp.sum() * (b if reduction == "sum" else b / x.shape[0])


def _soft_rows(x: Tensor, q: Tensor, eps: float, weight: Tensor | None, spread: str) -> Tensor:
    """Per-row loss for soft targets: ``-Σ_c w_c·(a·q_c + b·[c possible])·log p_c``."""
    k = x.shape[1]
    logp = torch.log_softmax(x, 1, dtype=q.dtype)
    wq = q if weight is None else q * weight
    impossible = x == -math.inf
    if impossible.any():
        n_valid = k - impossible.sum(1)
        fill = wq == 0  # 0·log 0 is 0 here, so impossible classes with no target mass cost nothing
        target_term = (wq * logp).masked_fill(fill, 0).sum(1)
        logp = logp.masked_fill(impossible, 0)
    else:
        n_valid = k
        target_term = (wq * logp).sum(1)
    a, b = _coefficients(eps, spread, n_valid)
    uniform_term = logp @ weight if weight is not None else logp.sum(1)
    return -(a * target_term + b * uniform_term)


def label_smoothing_cross_entropy_reference(
    input: Tensor,
    target: Tensor,
    eps: float = 0.1,
    weight: Tensor | None = None,
    reduction: str = "mean",
    *,
    ignore_index: int = -100,
    spread: str = "uniform",
) -> Tensor:
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


class LabelSmoothingCrossEntropy(nn.Module):
    """Label-smoothed cross-entropy; a drop-in for fastai's ``LabelSmoothingCrossEntropy``.

    Args (positional order as fastai's):
        eps: smoothing ε, finite and ``<= 1``; ``0`` is plain cross-entropy, ``< 0`` is negative
            label smoothing.
        weight: optional class weights, shape (K,), with PyTorch's semantics (a class's weight
            also scales its share of the uniform mass; ``'mean'`` divides by ``Σ w_y``).
        reduction: ``'mean'``, ``'sum'`` or ``'none'``; a plain attribute, so fastai's
            ``NoneReduce`` can set it.
        ignore_index: targets equal to it contribute nothing (segmentation void labels).
        spread: ``'uniform'`` (ε/K, PyTorch/fastai/timm) or ``'others'`` (ε/(K-1), fairseq).

    Shapes: logits (N, K) or (N, K, d1, ...); targets class indices (N, d1, ...) of any integer
    dtype, or probabilities with the logits' shape (MixUp/CutMix, distillation).
    See :func:`label_smoothing_cross_entropy` for the exact semantics.

    fastai: ``y_int = True``; ``activation`` is softmax and ``decodes`` argmax, both over the
    class axis 1 (fastai's own applies them on the last axis, fastai#3603). Pickles, so
    ``learn.export()`` and ``load_learner()`` work.
    """

    y_int = True

    def __init__(
        self,
        eps: float = 0.1,
        weight: Tensor | None = None,
        reduction: str = "mean",
        *,
        ignore_index: int = -100,
        spread: str = "uniform",
    ) -> None:
        super().__init__()
        self.eps = _check_eps(eps)
        _check_choice("reduction", reduction, _REDUCTIONS)
        _check_choice("spread", spread, _SPREADS)
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.get_default_dtype())
            if weight.dim() != 1:
                raise ValueError(f"weight has shape {tuple(weight.shape)}; expected (K,), one weight per class")
        self.register_buffer("weight", weight)
        self.reduction = reduction
        self.ignore_index = int(ignore_index)
        self.spread = spread

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return label_smoothing_cross_entropy(
            input, target, self.eps, self.weight, self.reduction,
            ignore_index=self.ignore_index, spread=self.spread,
        )

    def activation(self, out: Tensor) -> Tensor:
        return torch.softmax(out, dim=1)

    def decodes(self, out: Tensor) -> Tensor:
        return out.argmax(dim=1)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}, spread={self.spread!r}, ignore_index={self.ignore_index}"


class LabelSmoothingCrossEntropyFlat(LabelSmoothingCrossEntropy):
    """fastai-style variant whose class axis is ``axis`` (default last), for sequence and
    segmentation outputs such as (N, T, K). Equals :class:`LabelSmoothingCrossEntropy` applied
    with the class axis moved to 1; ``activation`` and ``decodes`` act on ``axis``."""

    def __init__(self, *args, axis: int = -1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.axis = axis

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if target.is_floating_point() and target.shape == input.shape:
            target = target.movedim(self.axis, 1)
        return super().forward(input.movedim(self.axis, 1), target)

    def activation(self, out: Tensor) -> Tensor:
        return torch.softmax(out, dim=self.axis)

    def decodes(self, out: Tensor) -> Tensor:
        return out.argmax(dim=self.axis)


class LabelSmoothingBCEWithLogits(nn.Module):
    """Binary / multi-label cross-entropy with smoothed targets ``y' = y·(1-ε) + ε/2`` (Keras).

    Equals ``F.binary_cross_entropy_with_logits(x, y*(1-eps)+eps/2, weight, pos_weight=pos_weight,
    reduction=reduction)``. ``eps`` in [0, 1]; targets in [0, 1] with the logits' shape (any
    dtype). 16-bit logits are computed in float32. fastai: ``y_int = False``, sigmoid
    ``activation``, ``decodes`` thresholds the probabilities at ``thresh``.
    """

    y_int = False

    def __init__(
        self,
        eps: float = 0.1,
        weight: Tensor | None = None,
        reduction: str = "mean",
        *,
        pos_weight: Tensor | None = None,
        thresh: float = 0.5,
    ) -> None:
        super().__init__()
        self.eps = _check_eps(eps, low=0.0)
        _check_choice("reduction", reduction, _REDUCTIONS)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer(
            "pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        )
        self.reduction = reduction
        self.thresh = thresh

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        _check_choice("reduction", self.reduction, _REDUCTIONS)
        if target.shape != input.shape:
            raise ValueError(
                f"target has shape {tuple(target.shape)}; it must match the logits' shape {tuple(input.shape)}"
            )
        target = target.to(_compute_dtype(input.dtype))
        if ((target < 0) | (target > 1)).any():
            lo, hi = target.min().item(), target.max().item()
            raise ValueError(f"targets must lie in [0, 1]; got values in [{lo:g}, {hi:g}]")
        return F.binary_cross_entropy_with_logits(
            input.to(target.dtype), target * (1 - self.eps) + self.eps / 2,
            self.weight, pos_weight=self.pos_weight, reduction=self.reduction,
        )

    def activation(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)

    def decodes(self, out: Tensor) -> Tensor:
        return out > self.thresh

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}"
