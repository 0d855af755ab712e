"""Workarounds for fastai 2.8 (checked on 2.8.12), in one place; each says what breaks without it.

- :func:`distributed_dl_on_cpu`: fastai's ``DistributedDL`` assumes NCCL on GPUs. Without the fix
  a multi-process run on CPUs (gloo; how the multi-process code is tested without a GPU) fails in
  ``DistributedDL._broadcast`` (unconditional ``.cuda()``) and in ``DistributedTrainer._wrap_dl``
  (reads ``model.device``, which a CPU DistributedDataParallel model does not have).

Drop each one once fastai's own code does the same.
"""

from __future__ import annotations

import torch

__all__ = ["distributed_dl_on_cpu"]


def _broadcast_any_backend(self, t, rank):
    """``DistributedDL._broadcast`` without the unconditional ``.cuda()``."""
    on = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor(t, dtype=torch.long, device=on)
    torch.distributed.broadcast(t, rank)
    return t.cpu().tolist()


def _wrap_dl_any_device(self, dl):
    """``DistributedTrainer._wrap_dl`` for a DDP model without ``.device`` (CPU)."""
    import fastai.distributed

    if isinstance(dl, fastai.distributed.DistributedDL):
        return dl
    model = self.learn.model
    device = getattr(model, "device", None) or next(model.parameters()).device
    return fastai.distributed.DistributedDL(dl, device=device)


def distributed_dl_on_cpu() -> None:
    """Let fastai's DistributedDL run on gloo (CPUs) too; the NCCL path is unchanged."""
    import fastai.distributed  # needs accelerate, which single runs do not: imported only here

    fastai.distributed.DistributedDL._broadcast = _broadcast_any_backend
    fastai.distributed.DistributedTrainer._wrap_dl = _wrap_dl_any_device
