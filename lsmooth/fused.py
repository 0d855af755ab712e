"""One softmax for forward and backward: lsmooth's CPU path for large inputs.

``lsmooth.losses`` calls :func:`fused_smoothed_nll` only where reading values is free (CPU, not
compiled), for index targets without weights; the module is optional there.

The softmax ``p`` is computed once, in forward, and kept. The summed loss needs only three sums
read off it: ``Σ log p_y``, ``Σ x_y`` and ``Σ x_c``, since per row ``Σ_c log p_c = Σ_c x_c - K·lse``
with ``lse = x_y - log p_y``. Backward turns ``p`` into the gradient ``g·(p - b) - g·a·onehot(y)``
in place, so the only N×K buffer is the gradient itself (the peers keep the log-probabilities and
allocate the gradient: 3× the logits) and there is one exponentiating pass where they have two.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Below this many logits a Python autograd.Function costs more than the pass it saves. A switch too:
# math.inf turns the path off (the benchmarks' ablation), 1 forces it on small inputs (the tests).
MIN_LOGITS = 1 << 16


def fused_smoothed_nll(x: Tensor, t: Tensor, a: float, b: float, reduction: str) -> Tensor | None:
    """``Σ_rows (a·l_y + b·Σ_c l_c)``, divided by N for ``'mean'``, for class indices ``t`` of
    which none is ignored (the caller checks); None where this path does not apply or pay (then
    the caller computes it another way): ``'none'``, no gradient wanted, 16-bit logits, fewer than
    ``MIN_LOGITS`` logits, a class index out of range (the caller names it), a row whose ``p_y``
    underflows, a ``-inf`` logit."""
    wanted = reduction != "none" and x.requires_grad and torch.is_grad_enabled()
    if not (wanted and x.dtype in (torch.float32, torch.float64) and x.numel() >= MIN_LOGITS):
        return None
    n, k = x.shape
    t1 = t[:, None]
    with torch.no_grad():
        x_sum = x.sum()  # before the softmax, while x is still in cache for it: measured faster
        p = torch.softmax(x, 1)
        try:
            p_y = p.gather(1, t1)
        except RuntimeError:  # a class index out of range
            return None
        p_min, s_lp, s_xy, s_x = torch.stack((p_y.amin(), p_y.log().sum(), x.gather(1, t1).sum(), x_sum)).tolist()
    if not (p_min >= torch.finfo(x.dtype).tiny and math.isfinite(s_x)):
        return None
    scale = 1.0 / n if reduction == "mean" else 1.0
    loss = (-a * s_lp + b * (k * (s_xy - s_lp) - s_x)) * scale
    return _SoftmaxIntoGrad.apply(x, t1, p, loss, a, b, scale)


class _SoftmaxIntoGrad(torch.autograd.Function):
    """Returns ``loss``; backward writes ``g·scale·(p - b - a·onehot(t))`` into ``p``."""

    @staticmethod
    def forward(ctx, x, t1, p, loss, a, b, scale):
        ctx.save_for_backward(x, t1)
        ctx.p, ctx.a, ctx.b, ctx.scale = p, a, b, scale  # p not in saved_tensors: backward overwrites it
        return x.new_tensor(loss)

    @staticmethod
    def backward(ctx, g):
        x, t1 = ctx.saved_tensors
        p, ctx.p = ctx.p, None  # a second backward (retain_graph) recomputes the softmax
        if torch.is_grad_enabled():  # create_graph=True: build the gradient from differentiable ops
            g = g * ctx.scale
            grad = g * (torch.softmax(x, 1) - ctx.b)
            return grad.scatter_add(1, t1, (g * -ctx.a).expand(len(t1), 1)), *[None] * 6
        grad = torch.softmax(x, 1) if p is None else p
        gv = g.item() * ctx.scale  # free: this path runs on the CPU only
        torch.add(grad.new_full((), -gv * ctx.b), grad, alpha=gv, out=grad)  # one pass
        grad.scatter_add_(1, t1, grad.new_full((1, 1), -gv * ctx.a).expand(len(t1), 1))
        return grad, *[None] * 6
