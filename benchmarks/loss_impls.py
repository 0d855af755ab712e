"""What bench_loss.py measures: the implementations, the shapes and the correctness gate.

Implementations (all with eps = 0.1, 'uniform' convention, mean reduction):

    lsmooth   lsmooth.label_smoothing_cross_entropy(x, t, 0.1)
    torch     F.cross_entropy(x, t, label_smoothing=0.1)
    fastai    fastai.losses.LabelSmoothingCrossEntropy(eps=0.1)
    timm      timm.loss.LabelSmoothingCrossEntropy(smoothing=0.1)
    seed      the seed article's formula: lp = log_softmax(x, -1);
              (1-eps)*nll_loss(lp, t) + eps*(-lp.sum(-1)).mean()/K
    softmax   the floor: one out-of-place torch.softmax(x, 1), no autograd

    lsmooth-no-fused   lsmooth with its fused path switched off (lsmooth.fused.MIN_LOGITS = inf):
                       the reduced native form on the host
    lsmooth-rows       lsmooth's per-row losses, then their mean (reduction='none', then .mean()):
                       the route the loss takes on the host for 'none', weights or ignored rows
    lsmooth-device     lsmooth as it runs off the CPU (lsmooth.losses.HOST_READS = False): no host
                       reads, so no host-decided shortcuts (ignore and -inf masks always computed)
                       and no fused path
    lsmooth-compiled   torch.compile(lsmooth), default inductor backend
    torch-compiled     torch.compile(F.cross_entropy(label_smoothing=0.1))

The four non-lsmooth losses are the "peers". Each loss is first checked against F.cross_entropy
(value and gradient, computed in float32); one that disagrees is marked and never counts as the
fastest peer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 0.1
IMPLS = ("lsmooth", "torch", "fastai", "timm", "seed")
PEERS = ("torch", "fastai", "timm", "seed")
FLOOR = "softmax"
# mode -> (implementations, the peers among them, the implementation under test)
MODES = {
    "peers": (IMPLS, PEERS, "lsmooth"),
    "ablation": (("lsmooth", "lsmooth-no-fused", "lsmooth-rows", "lsmooth-device"), (), "lsmooth"),
    "compiled": (("lsmooth-compiled", "torch-compiled"), ("torch-compiled",), "lsmooth-compiled"),
}
ALL = tuple(dict.fromkeys(n for impls, _, _ in MODES.values() for n in impls)) + (FLOOR,)

# name -> (shape as given, flattened (rows, K), note)
SHAPES = {
    "64x37": ((64, 37), "Pets head"),
    "512x1000": ((512, 1000), "ImageNet-size head"),
    "4096x1000": ((4096, 1000), "ImageNet-size head, large batch"),
    "256x32000": ((256, 32000), "LM vocabulary, 256 tokens"),
    "8x256x32000": ((8, 256, 32000), "sequence (B, T, V) flattened; CPU default for the issue's (8, 2048, 32000)"),
    "8x2048x32000": ((8, 2048, 32000), "sequence (B, T, V) flattened; 2.1 GB of fp32 logits"),
}
CPU_DEFAULT = ("64x37", "512x1000", "4096x1000", "256x32000", "8x256x32000")
CUDA_DEFAULT = ("64x37", "512x1000", "4096x1000", "256x32000", "8x2048x32000")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Tolerances of the correctness check against F.cross_entropy computed in float32:
# |loss - ref| <= LOSS_RTOL*|ref| and max|grad - ref_grad| <= GRAD_RTOL*max|ref_grad|.
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (1e-2, 1e-2)}


def make_impl(name: str):
    """A callable ``f(x, t) -> loss`` (``softmax``: ``f(x) -> probabilities``); imports lazily so a
    memory child loads only what it measures."""
    if name == "lsmooth":
        from lsmooth.losses import label_smoothing_cross_entropy

        return lambda x, t: label_smoothing_cross_entropy(x, t, EPS)
    if name == "lsmooth-rows":
        from lsmooth.losses import label_smoothing_cross_entropy

        return lambda x, t: label_smoothing_cross_entropy(x, t, EPS, reduction="none").mean()
    if name == "lsmooth-no-fused":
        from lsmooth import fused

        return _switched(fused, "MIN_LOGITS", math.inf)
    if name == "lsmooth-device":
        from lsmooth import losses

        return _switched(losses, "HOST_READS", False)
    if name.endswith("-compiled"):
        return torch.compile(make_impl(name.removesuffix("-compiled")))
    if name == "torch":
        return lambda x, t: F.cross_entropy(x, t, label_smoothing=EPS)
    if name == "fastai":
        from fastai.losses import LabelSmoothingCrossEntropy

        return LabelSmoothingCrossEntropy(eps=EPS)
    if name == "timm":
        from timm.loss import LabelSmoothingCrossEntropy

        return LabelSmoothingCrossEntropy(smoothing=EPS)
    if name == "seed":

        def seed(x, t):
            lp = F.log_softmax(x, -1)
            return (1 - EPS) * F.nll_loss(lp, t) + EPS * (-lp.sum(-1)).mean() / x.shape[-1]

        return seed
    if name == FLOOR:
        return lambda x: torch.softmax(x, 1)
    raise ValueError(name)


def _switched(module, switch: str, value):
    """lsmooth with one of its documented switches set while the loss runs (forward; backward needs none)."""
    from lsmooth.losses import label_smoothing_cross_entropy

    def loss(x, t):
        saved = getattr(module, switch)
        setattr(module, switch, value)
        try:
            return label_smoothing_cross_entropy(x, t, EPS)
        finally:
            setattr(module, switch, saved)

    return loss


def make_inputs(shape_name: str, dtype: torch.dtype, device: str, seed: int = 0):
    shape, _ = SHAPES[shape_name]
    k = shape[-1]
    n = math.prod(shape[:-1])
    g = torch.Generator(device="cpu").manual_seed(seed)
    # Generated in fp32 on the CPU so every device and dtype sees the same logits; scale 3 gives
    # confident but not saturated softmaxes.
    x = torch.randn(n, k, generator=g).mul_(3)
    t = torch.randint(0, k, (n,), generator=g)
    return x.to(device=device, dtype=dtype), t.to(device)


def fwd_bwd(f, x, t):
    """One fwd+bwd on a fresh leaf; returns (leaf with .grad, loss)."""
    leaf = x.detach().requires_grad_()
    loss = f(leaf, t)
    loss.backward()
    return leaf, loss


def check(impls: dict, x, t):
    """{name: (ok, loss_rel_err, grad_rel_err)} against F.cross_entropy in float32."""
    loss_rtol, grad_rtol = TOL[x.dtype]
    ref_leaf, ref = fwd_bwd(lambda a, b: F.cross_entropy(a, b, label_smoothing=EPS), x.float(), t)
    ref_grad = ref_leaf.grad
    del ref_leaf
    ref_v = ref.item()
    gscale = ref_grad.abs().max().item()
    out = {}
    for name, f in impls.items():
        leaf, loss = fwd_bwd(f, x, t)
        v = loss.float().item()
        lerr = abs(v - ref_v) / abs(ref_v) if math.isfinite(v) else math.inf
        gerr = (leaf.grad.float() - ref_grad).abs().max().item() / gscale
        if not math.isfinite(gerr):
            gerr = math.inf
        out[name] = (lerr <= loss_rtol and gerr <= grad_rtol, lerr, gerr)
        del leaf, loss
    return out
