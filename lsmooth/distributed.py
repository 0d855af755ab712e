"""Several processes: one per GPU (``accelerate launch``) or per CPU slot (``torchrun``, gloo).

fastai's ``learn.distrib_ctx()`` does the work (DistributedDataParallel, a shard of every batch per
process); this module starts the process group and holds the few helpers :mod:`lsmooth.train`
and :mod:`lsmooth.checkpoint` need. In a single process every helper is a no-op.

    accelerate launch --multi_gpu --num_processes 4 recipes/pets.py
    torchrun --nproc_per_node 2 recipes/pets.py --dataset tiny    # 2 CPU processes (gloo), as tested

``--bs`` is per process (effective batch = bs x processes). Only rank 0 prints and writes the run
folder; the split and the label noise are the same on every rank, augmentation draws from
seed + rank; BatchNorm is synchronised on GPUs (SyncBatchNorm). On CPUs each rank's BatchNorm
statistics drift apart slightly, so per-epoch validation numbers mix ranks; final.json is rank 0's
model on the whole validation set. ``accelerate launch --cpu --num_processes 2`` starts a single
process (accelerate's multi-CPU mode goes through mpirun): use torchrun on CPUs. Resume with the
same launcher and number of processes.
"""

from __future__ import annotations

import os

import torch
from fastai.torch_core import distrib_barrier, num_distrib, rank_distrib

__all__ = ["LaunchError", "barrier", "fit_one_cycle", "gather", "rank", "rank0_first", "setup"]


class LaunchError(RuntimeError):
    """Several processes were launched but cannot train together; the message says what to install."""


def rank() -> int:
    return rank_distrib()


def setup() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; starts the process group when world > 1.

    Through accelerate: NCCL with one GPU per process, or gloo on CPUs (accelerate picks gloo only
    when told ``cpu=True``, as ``accelerate launch --cpu`` does).
    """
    world = max(num_distrib(), 1)
    if world > 1:
        try:
            from accelerate import PartialState
        except ImportError:  # accelerate is optional for single runs
            raise LaunchError("training on several processes needs accelerate: pip install accelerate") from None
        from lsmooth.fastai_fixes import distributed_dl_on_cpu

        distributed_dl_on_cpu()
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        PartialState(cpu=not torch.cuda.is_available())
    return rank(), world


def rank0_first(func, *args):
    """``func(*args)`` on rank 0 first, then on the other ranks (fastai's ``rank0_first``) when
    several processes run; a plain call in a single process, which therefore needs no accelerate
    (importing ``fastai.distributed`` does)."""
    if max(num_distrib(), 1) == 1:
        return func(*args)
    from fastai.distributed import rank0_first as fastai_rank0_first

    return fastai_rank0_first(func, *args)


def fit_one_cycle(learn, epochs: int, lr: float, *, cbs=(), start_epoch: int = 0) -> None:
    """``learn.fit_one_cycle``, inside ``learn.distrib_ctx()`` when several processes run."""
    if max(num_distrib(), 1) == 1:
        learn.fit_one_cycle(epochs, lr, cbs=list(cbs), start_epoch=start_epoch)
        return
    cuda = torch.cuda.is_available()
    with learn.distrib_ctx(sync_bn=cuda, cpu=not cuda):  # SyncBatchNorm needs GPUs
        learn.fit_one_cycle(epochs, lr, cbs=list(cbs), start_epoch=start_epoch)


def gather(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank, so that no rank leaves while rank 0 still writes."""
    distrib_barrier()
