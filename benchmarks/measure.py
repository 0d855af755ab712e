"""How bench_loss.py measures: the machine, the interleaved timing loop, cache states and memory."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import random
import re
import resource
import time

import torch

from benchmarks.loss_impls import FLOOR, fwd_bwd

# machine


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: str) -> str:
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}; host CPU {cpu_model()}"
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        mem_s = f", {mem:.0f} GiB RAM"
    except (ValueError, OSError):
        mem_s = ""
    return f"{cpu_model()}, {cpus} CPUs available{mem_s}, {platform.system()} {platform.release()}"


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


# timing


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


_STEP = None


def _training_step(device, net=True):
    """What runs between two loss calls in training, so that the next call starts cold: one
    untimed forward, backward and SGD step of a small CNN on 64 images of 32×32, then 64 MiB
    written on the device (more than this CPU's caches, or a GPU's L2). ``net=False``
    (``--cache evict``) writes the memory alone. Writing memory alone evicts the caches but leaves
    the branch predictors as the previous implementation trained them; the times then depended on
    which implementations shared a run (benchmarks/README.md, "Warm and cold caches")."""
    global _STEP
    if _STEP is None:
        g = torch.Generator().manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 37),
        ).to(device)  # fmt: skip
        images = torch.randn(64, 3, 32, 32, generator=g).to(device)
        scratch = torch.empty(64 << 20, dtype=torch.uint8, device=device)  # on a GPU: more than its L2
        _STEP = model, torch.optim.SGD(model.parameters(), lr=1e-3), images, scratch
    model, opt, images, scratch = _STEP
    if net:
        with torch.enable_grad():
            model(images).square().mean().backward()
        opt.step()
        opt.zero_grad()
    scratch.add_(1)


def _call(name, f, x, leaf, t):
    if name == FLOOR:
        f(x)
    else:
        f(leaf, t).backward()
        leaf.grad = None


def _sample(name, f, x, t, number, device, cache="warm"):
    """(seconds, minor page faults) per call, averaged over ``number`` calls.

    ``cache``: 'warm' makes one untimed call first, then times ``number`` back-to-back calls;
    'as-is' times them straight after whatever ran before; 'cold' runs an untimed training step
    (:func:`_training_step`) before each call and times the calls one by one.
    """
    leaf = x.detach().requires_grad_()
    with torch.no_grad() if name == FLOOR else contextlib.nullcontext():
        if cache == "warm":
            _call(name, f, x, leaf, t)
        seconds, faults = 0.0, 0
        batches, calls = (number, 1) if cache in ("cold", "evict") else (1, number)
        for _batch in range(batches):
            if cache in ("cold", "evict"):
                _training_step(device, net=cache == "cold")
            _sync(device)
            f0, t0 = _minor_faults(), time.perf_counter()
            for _call_index in range(calls):
                _call(name, f, x, leaf, t)
            _sync(device)
            seconds += time.perf_counter() - t0
            faults += _minor_faults() - f0
    return seconds / number, faults / number


def steady_malloc() -> str:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    With glibc's defaults whether an N×K allocation page-faults depends on what the previous
    implementation left on the heap (0 to ~1,400 faults per call at (512, 1000) in the same run),
    so the times would measure the order of the round-robin as much as the losses. This applies
    to every implementation and the floor alike; ``--malloc default`` keeps glibc's behaviour.
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    ok = libc.mallopt(m_trim_threshold, 1 << 30) and libc.mallopt(m_mmap_threshold, 32 << 20)
    if not ok:
        raise OSError("mallopt refused the settings")
    return "glibc mallopt: M_TRIM_THRESHOLD 1 GiB, M_MMAP_THRESHOLD 32 MiB (freed memory is reused, not unmapped)"


def time_all(impls: dict, x, t, device, args):
    """Interleaved timing; returns ({name: [seconds per call, ...]}, {name: [page faults per call, ...]},
    reps, {name: number})."""
    names = list(impls)
    warm = 1 if args.quick else 3
    est = {}
    for name in names:  # warm-up calls, timed: the fastest after the first estimates one call
        ts = [_sample(name, impls[name], x, t, 1, device)[0] for _ in range(warm)]
        est[name] = min(ts[1:] or ts)
    min_sample = 0.2e-3 if args.quick else args.min_sample_ms * 1e-3
    number = {n: max(1, math.ceil(min_sample / max(est[n], 1e-7))) for n in names}
    if args.cache in ("cold", "evict"):  # every call is timed on its own after an eviction
        number = dict.fromkeys(names, 1)
    per_rep = sum(number[n] * est[n] for n in names)
    if args.reps:
        reps = args.reps
    elif args.quick:
        reps = 3
    else:
        reps = int(min(args.max_reps, max(args.min_reps, args.budget / max(per_rep, 1e-9))))
    samples = {n: [] for n in names}
    faults = {n: [] for n in names}
    rng = random.Random(0)
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for r in range(reps):
            # Bounded total time: estimates made on a busy machine can be far off.
            if not args.reps and r >= args.min_reps and time.perf_counter() - t0 > 3 * args.budget:
                reps = r
                break
            order = rng.sample(names, len(names))  # a fresh order each repetition, see README
            for name in order:
                seconds, n_faults = _sample(name, impls[name], x, t, number[name], device, args.cache)
                samples[name].append(seconds)
                faults[name].append(n_faults)
    finally:
        gc.enable()
    return samples, faults, reps, number


# memory


def _status_bytes(key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", open("/proc/self/status").read(), re.M)
    return int(m.group(1)) * 1024


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") - rss() < (1 << 20)


class PeakRSS:
    """Peak RSS above the RSS at construction: VmHWM after a reset, or ru_maxrss as a fallback
    (valid only if nothing before the measured region reached a higher RSS)."""

    def __init__(self):
        gc.collect()
        self.base = rss()
        self.method = "VmHWM" if _reset_peak() else "ru_maxrss"

    def extra(self) -> int:
        if self.method == "VmHWM":
            return _status_bytes("VmHWM") - self.base
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base


def cuda_mem(f, name, x, t) -> float:
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    if name == FLOOR:
        with torch.no_grad():
            keep = f(x)
    else:
        keep = fwd_bwd(f, x, t)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    del keep
    return extra / x.nbytes
