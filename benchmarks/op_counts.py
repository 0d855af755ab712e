"""Cost off the CPU: the ops one forward + backward dispatches, lsmooth against F.cross_entropy.

On a GPU every dispatched op is at least one kernel launch (what a millisecond training step
feels) and every op whose result has N×K elements is a pass over the logits' memory (what a large
K feels). Both are counted with a TorchDispatchMode (views and ``detach`` are not counted) during
forward and backward of the loss (its ``.sum()`` for ``'none'``, counted):

- device path: lsmooth on ``meta`` tensors, which hold no values, so the loss takes the path it
  takes on CUDA and inside ``torch.compile`` (no host reads; the ``ignore_index`` and ``-inf``
  masks always computed); ``--device cuda`` counts on a GPU instead (the same ops);
- CPU host path: lsmooth on CPU tensors, where it reads values and skips the masks it does not
  need; its ops depend on the values, so the rows with ignored targets or a ``-inf`` logit differ;
- F.cross_entropy with the same arguments (``'others'``: ``label_smoothing = eps·K/(K-1)``), on
  the device path's tensors.

    python -m benchmarks.op_counts                   # prints the table, writes benchmarks/results/op-counts.md
    python -m benchmarks.op_counts --out -           # prints only
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from lsmooth.losses import confidence_penalty_cross_entropy, label_smoothing_cross_entropy
from lsmooth.online import OnlineLabelSmoothingCrossEntropy

EPS = 0.1
SHAPES = ((64, 37), (4096, 1000))
OUT = Path(__file__).resolve().parent / "results" / "op-counts.md"


class CountOps(TorchDispatchMode):
    """Ops other than views and detach, and those with an output of at least ``numel`` elements."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.ops, self.large = numel, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func.overloadpacket is not torch.ops.aten.detach:
            self.ops += 1
            outs = out if isinstance(out, (tuple, list)) else (out,)
            self.large += any(isinstance(o, torch.Tensor) and o.numel() >= self.numel for o in outs)
        return out


def cases(n: int, k: int, device: str):
    """(name, lsmooth's loss, F.cross_entropy's or None, how the inputs differ from the plain ones).
    Weights and the online loss's buffers are made on each device beforehand: moving them is no cost of the loss."""
    weights = {d: torch.rand(k, generator=torch.Generator().manual_seed(1)).add(0.5).to(d) for d in ("cpu", device)}
    onlines = {d: OnlineLabelSmoothingCrossEntropy(k).to(d) for d in ("cpu", device)}
    return [
        ("index targets, mean (the plain case)", lambda x, t: label_smoothing_cross_entropy(x, t, EPS),
         lambda x, t: F.cross_entropy(x, t, label_smoothing=EPS), None),
        ("  some targets ignored", lambda x, t: label_smoothing_cross_entropy(x, t, EPS),
         lambda x, t: F.cross_entropy(x, t, label_smoothing=EPS), "ignored"),
        ("  a -inf logit", lambda x, t: label_smoothing_cross_entropy(x, t, EPS),
         lambda x, t: F.cross_entropy(x, t, label_smoothing=EPS), "-inf"),
        ("class weights", lambda x, t: label_smoothing_cross_entropy(x, t, EPS, weights[x.device.type]),
         lambda x, t: F.cross_entropy(x, t, weights[x.device.type], label_smoothing=EPS), None),
        ("reduction='none'", lambda x, t: label_smoothing_cross_entropy(x, t, EPS, reduction="none"),
         lambda x, t: F.cross_entropy(x, t, reduction="none", label_smoothing=EPS), None),
        ("spread='others'", lambda x, t: label_smoothing_cross_entropy(x, t, EPS, spread="others"),
         lambda x, t: F.cross_entropy(x, t, label_smoothing=EPS * k / (k - 1)), None),
        ("probability targets", lambda x, q: label_smoothing_cross_entropy(x, q, EPS),
         lambda x, q: F.cross_entropy(x, q, label_smoothing=EPS), "soft"),
        ("confidence penalty, beta 0.1", lambda x, t: confidence_penalty_cross_entropy(x, t, 0.1), None, None),
        ("online label smoothing", lambda x, t: onlines[x.device.type](x, t), None, None),
    ]  # fmt: skip


def inputs(n: int, k: int, device: str, kind: str | None):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(n, k, generator=g) * 3, torch.randint(0, k, (n,), generator=g)
    if kind == "ignored":
        t[::7] = -100
    elif kind == "-inf":
        x[0, (t[0] + 1) % k] = -math.inf
    elif kind == "soft":
        t = torch.softmax(torch.randn(n, k, generator=g), 1)
    return x.to(device), t.to(device)


def count(loss_fn, x, t) -> tuple[int, int]:
    x = x.detach().requires_grad_()
    with CountOps(x.numel()) as counter:
        loss = loss_fn(x, t)
        (loss if loss.dim() == 0 else loss.sum()).backward()
    return counter.ops, counter.large


def table(device: str = "meta") -> list[str]:
    def cell(c):
        return "–" if c is None else f"{c[0]} / {c[1]}"

    lines = [
        f"| loss (ε = {EPS}) | logits | lsmooth, device path ({device}) | lsmooth, CPU host path | F.cross_entropy |",
        "|---|---|---:|---:|---:|",
    ]
    for n, k in SHAPES:
        for name, ours, torchs, kind in cases(n, k, device):
            dev_x, dev_t = inputs(n, k, device, kind)
            cpu_x, cpu_t = inputs(n, k, "cpu", kind)
            theirs = count(torchs, dev_x, dev_t) if torchs else None
            lines.append(f"| {name} | ({n}, {k}) | {cell(count(ours, dev_x, dev_t))} "
                         f"| {cell(count(ours, cpu_x, cpu_t))} | {cell(theirs)} |")  # fmt: skip
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("meta", "cuda"), default="meta", help="where the device path runs")
    ap.add_argument("--out", default=str(OUT), help=f"markdown output (default {OUT.name} in results/; '-': none)")
    args = ap.parse_args(argv)
    lines = table(args.device)
    print("\n".join(lines))
    if args.out != "-":
        command = "python -m benchmarks.op_counts" + ("" if args.device == "meta" else f" --device {args.device}")
        head = [
            "# Ops per forward + backward, and results of N×K elements",
            "",
            f"- command: `{command}`",
            f"- torch {torch.__version__}; counts do not depend on the machine",
            "",
            "Each cell: dispatched ops / ops whose result has N×K elements (views and detach not counted); "
            "`'none'` is summed before backward (one op, counted). See benchmarks/README.md.",
            "",
            "## Summary",
            "",
        ]
        Path(args.out).write_text("\n".join(head + lines) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
