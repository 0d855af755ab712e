#!/usr/bin/env python
"""Does the loss make the host wait for the device? Forward + backward of every path, where reading
a value into Python is an error.

On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` turns every synchronising call (``.item()``,
``.tolist()``, ``bool(t)``, ``nonzero``, device-to-host copies) into an error. Without a GPU
(``--device meta``, the dry run of ``gpu.sh``) the same paths run on meta tensors, which hold no
values: any read fails there too.

    python -m benchmarks.check_sync                 # cuda if available, else meta
    python -m benchmarks.check_sync --device meta
"""

from __future__ import annotations

import argparse
import sys

import torch

from lsmooth import LabelSmoothingBCEWithLogits, LabelSmoothingCrossEntropy, LabelSmoothingCrossEntropyFlat
from lsmooth.losses import ConfidencePenaltyCrossEntropy
from lsmooth.online import OnlineLabelSmoothingCrossEntropy


class OnlineStep(OnlineLabelSmoothingCrossEntropy):
    """The online loss as a training step calls it: the loss, then update and next_epoch."""

    def forward(self, input, target):
        loss = super().forward(input, target)
        self.update(input, target)
        self.next_epoch()
        return loss


def cases():
    """(name, loss, logits, target) on the CPU, for every path of the loss family and reduction."""
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(64, 37, generator=g), torch.randint(0, 37, (64,), generator=g)  # the Pets head
    ignored = t.clone()
    ignored[::5] = -100
    w = torch.rand(37, generator=g) + 0.5
    seg, seg_t = torch.randn(2, 5, 3, 4, generator=g), torch.randint(0, 5, (2, 3, 4), generator=g)
    big, big_t = torch.randn(8, 32000, generator=g), torch.randint(0, 32000, (8,), generator=g)
    minus_inf = x.clone()
    minus_inf[::2, 30:] = -torch.inf
    q = torch.softmax(torch.randn(64, 37, generator=g), 1)
    out = []
    for red in ("mean", "sum", "none"):
        out += [
            (f"index {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), x, t),
            (f"ignore_index {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), x, ignored),
            (f"weights + ignore_index {red}", LabelSmoothingCrossEntropy(0.1, w, red, spread="others"), x, ignored),
            (f"N-d {red}", LabelSmoothingCrossEntropy(0.1, reduction=red, ignore_index=2), seg, seg_t),
            (f"Flat {red}", LabelSmoothingCrossEntropyFlat(0.1, reduction=red, axis=1), seg, seg_t),
            (f"soft targets {red}", LabelSmoothingCrossEntropy(0.1, w, red), x, q),
            (f"-inf logits {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), minus_inf, t % 30),
            (f"(8, 32000) {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), big, big_t),
            (f"(8, 32000) bf16 {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), big.bfloat16(), big_t),
            (f"fp16 {red}", LabelSmoothingCrossEntropy(0.1, reduction=red), x.half(), t),
            (f"BCE {red}", LabelSmoothingBCEWithLogits(0.1, w, red), x, (q > 0.03).float()),
            (f"unbatched {red}", LabelSmoothingCrossEntropy(0.1, w, red), x[0], t[0]),
            (f"confidence penalty {red}", ConfidencePenaltyCrossEntropy(0.1, w, red), minus_inf,
             torch.where(ignored < 0, ignored, t % 30)),
            (f"online, update, next_epoch {red}", OnlineStep(37, reduction=red), x, t),
        ]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "meta"), help="default: cuda if available, else meta")
    device = ap.parse_args(argv).device or ("cuda" if torch.cuda.is_available() else "meta")
    failed = []
    for name, loss_fn, x, t in cases():
        loss_fn = loss_fn.to(device)  # weights live on the device, as after learn.to(device)
        x, t = x.to(device).requires_grad_(), t.to(device)
        if device == "cuda":
            torch.cuda.synchronize()
        strict = torch.cuda.set_sync_debug_mode if device == "cuda" else lambda mode: None
        try:
            strict("error")
            loss_fn(x, t).sum().backward()
        except RuntimeError as e:
            failed.append(f"{name}: {str(e).splitlines()[0]}")
        finally:
            strict("default")
    n = len(cases())
    if failed:
        print(f"sync check on {device}: {len(failed)} of {n} paths read a value on the host:")
        print("\n".join("  " + f for f in failed))
        return 1
    print(f"sync check: every path ran without reading a value on the host ({n} paths, {device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
