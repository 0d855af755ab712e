"""Several processes: one per GPU (``accelerate launch``) or per CPU slot (``torchrun``, gloo).

fastai's ``learn.distrib_ctx()`` does the work (DistributedDataParallel, a shard of every batch per
process); this module starts the process group and makes each helper a no-op in a single process,
which therefore needs no ``accelerate`` (importing ``fastai.distributed`` does).

    accelerate launch --multi_gpu --num_processes 4 recipes/pets.py
    torchrun --nproc_per_node 2 recipes/pets.py --dataset tiny    # 2 CPU processes (gloo), as tested

``--bs`` is per process. Only rank 0 prints and writes the run folder; the split and the label noise
are the same on every rank, augmentation draws from seed + rank; BatchNorm is synchronised on GPUs
(SyncBatchNorm), not on CPUs, where each rank's statistics drift apart slightly.
``accelerate launch --cpu --num_processes 2`` starts a single process (its multi-CPU mode goes
through mpirun): use torchrun on CPUs. Resume with the same launcher and number of processes.
"""

from __future__ import annotations

import contextlib
import os

import torch
from fastai.torch_core import num_distrib

__all__ = ["LaunchError", "distrib_ctx", "rank0_first", "setup"]


class LaunchError(RuntimeError):
    """Several processes were launched but cannot train together; the message says what to install."""


def setup() -> int:
    """The number of processes the launcher started; starts the process group when there are several.

    Through accelerate: NCCL with one GPU per process, or gloo on CPUs.
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
    return world


def rank0_first(func, *args):
    """``func(*args)`` on rank 0 first, then on the others (fastai's ``rank0_first``: one download)."""
    if max(num_distrib(), 1) == 1:
        return func(*args)
    from fastai.distributed import rank0_first as fastai_rank0_first

    return fastai_rank0_first(func, *args)


def distrib_ctx(learn):
    """``learn.distrib_ctx()`` when several processes run (SyncBatchNorm on GPUs); a null context otherwise."""
    if max(num_distrib(), 1) == 1:
        return contextlib.nullcontext(learn)
    import fastai.distributed  # noqa: F401 - patches Learner.distrib_ctx

    cuda = torch.cuda.is_available()
    return learn.distrib_ctx(sync_bn=cuda, cpu=not cuda)
