#!/usr/bin/env python
"""Forward+backward time and peak memory of label-smoothed cross-entropy: lsmooth vs its peers.

Modes (``--mode``): ``peers`` (default) times lsmooth against the losses people use instead;
``ablation`` times lsmooth with and without each of its special branches; ``compiled`` times
``torch.compile``d lsmooth against ``torch.compile``d ``F.cross_entropy`` (default backend).

Implementations (all with eps = 0.1, 'uniform' convention, mean reduction):

    lsmooth   lsmooth.label_smoothing_cross_entropy(x, t, 0.1)
    torch     F.cross_entropy(x, t, label_smoothing=0.1)
    fastai    fastai.losses.LabelSmoothingCrossEntropy(eps=0.1)
    timm      timm.loss.LabelSmoothingCrossEntropy(smoothing=0.1)
    seed      the seed article's formula: lp = log_softmax(x, -1);
              (1-eps)*nll_loss(lp, t) + eps*(-lp.sum(-1)).mean()/K
    softmax   the floor: one out-of-place torch.softmax(x, 1), no autograd

    lsmooth-no-fused   lsmooth without lsmooth/fused.py (its reduced native form on the host)
    lsmooth-rows       lsmooth without its reduced forms: per-row losses, then their mean (the
                       route the loss takes on the host for 'none', weights or ignored rows)
    lsmooth-device     lsmooth as it runs off the CPU: no host reads, so no host-decided shortcuts
                       (ignore and -inf masks always computed) and no fused path
    lsmooth-compiled   torch.compile(lsmooth), default inductor backend
    torch-compiled     torch.compile(F.cross_entropy(label_smoothing=0.1))

The four non-lsmooth losses are the "peers". Each loss is first checked against
F.cross_entropy (value and gradient, computed in float32); one that disagrees is marked and
never counts as the fastest peer. Timing: fwd+bwd on a leaf that requires grad, grads cleared
after each call, implementations interleaved round-robin within every repetition, median of the
repetitions after warm-up. Memory: peak extra bytes during one fwd+bwd (gradient included) as a
multiple of the logits' size; on CPU measured in a fresh child process per (implementation,
shape) from the kernel's peak-RSS counter, see benchmarks/README.md.

Run ``python benchmarks/bench_loss.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import math
import os
import platform
import random
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time

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

MEM_MIN_BYTES = 4 << 20  # CPU memory is reported only for logits at least this large
# Tolerances of the correctness check against F.cross_entropy computed in float32:
# |loss - ref| <= LOSS_RTOL*|ref| and max|grad - ref_grad| <= GRAD_RTOL*max|ref_grad|.
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (1e-2, 1e-2)}

TARGET_PEER_BIG, TARGET_PEER_SMALL, TARGET_FLOOR = 0.8, 1.0, 2.5
TARGET_PEER_COLD = 1.0  # caches evicted before every call (a training step): at every shape
CACHE_NOTE = {
    "warm": "warm (each sample starts with one untimed call of the same implementation)",
    "cold": "cold (an untimed training step of a small CNN and 64 MiB written before every timed call, one call "
    "per sample)",
    "evict": "evicted (64 MiB written before every timed call, one call per sample; no training step)",
    "as-is": "as left by the previous implementation (no untimed call before a sample)",
}


# --------------------------------------------------------------------------------------------
# implementations


def make_impl(name: str):
    """A callable ``f(x, t) -> loss`` (``softmax``: ``f(x) -> probabilities``); imports lazily so a
    memory child loads only what it measures."""
    if name == "lsmooth":
        from lsmooth.losses import label_smoothing_cross_entropy

        return lambda x, t: label_smoothing_cross_entropy(x, t, EPS)
    if name in ("lsmooth-no-fused", "lsmooth-rows", "lsmooth-device"):
        from lsmooth import losses

        def per_row_then_reduced(x, t, a, b, reduction, ignore_index):  # what _host_reduced saves
            return losses.reduce_loss(losses._rows(x, t, EPS, None, "uniform", ignore_index, None, False), reduction)

        # the branch is switched off only while the loss runs (forward; backward needs no switch)
        key, off = {
            "lsmooth-no-fused": ("fused_smoothed_nll", None),
            "lsmooth-rows": ("_host_reduced", per_row_then_reduced),
            "lsmooth-device": ("_host_reads_ok", lambda x: False),
        }[name]
        on = getattr(losses, key)

        def without_branch(x, t):
            setattr(losses, key, off)
            try:
                return losses.label_smoothing_cross_entropy(x, t, EPS)
            finally:
                setattr(losses, key, on)

        return without_branch
    if name.endswith("-compiled"):
        f = make_impl(name.removesuffix("-compiled"))
        return torch.compile(f)
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


# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# correctness


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


# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# memory


def _status_bytes(key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", open("/proc/self/status").read(), re.M)
    return int(m.group(1)) * 1024


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") - _rss() < (1 << 20)


class _PeakRSS:
    """Peak RSS above the RSS at construction: VmHWM after a reset, or ru_maxrss as a fallback
    (valid only if nothing before the measured region reached a higher RSS)."""

    def __init__(self):
        gc.collect()
        self.base = _rss()
        self.method = "VmHWM" if _reset_peak() else "ru_maxrss"

    def extra(self) -> int:
        if self.method == "VmHWM":
            return _status_bytes("VmHWM") - self.base
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base


def mem_child(spec: dict) -> dict:
    """Runs in a fresh process: peak extra RSS of one fwd+bwd (gradient kept alive)."""
    torch.set_num_threads(spec["threads"])
    if spec["impl"] == "__verify__":
        # Known allocations: a 64 MiB transient (freed before reading) and a 16 MiB survivor.
        x = torch.empty(1 << 10)
        x.fill_(1)
        probe = _PeakRSS()
        a = torch.empty(16 << 20)  # 64 MiB of float32
        a.fill_(1.0)
        del a
        b = torch.empty(4 << 20)  # 16 MiB of float32
        b.fill_(1.0)
        return {"extra": probe.extra(), "expected": 64 << 20, "now": _rss() - probe.base, "method": probe.method}
    f = make_impl(spec["impl"])
    x, t = make_inputs(spec["shape"], DTYPES[spec["dtype"]], "cpu")
    # Warm-up on two rows: lazy initialisation (thread pools, autograd engine, kernels' first
    # use) is not part of the loss's cost.
    # A compiled implementation compiles for each new shape: warm it up on the measured one.
    warm = slice(None) if spec["impl"].endswith("-compiled") else slice(2)
    if spec["impl"] == FLOOR:
        f(x[warm])
    else:
        fwd_bwd(f, x[warm], t[warm])
    probe = _PeakRSS()
    if spec["impl"] == FLOOR:
        keep = f(x)
    else:
        keep = fwd_bwd(f, x, t)
    extra = probe.extra()
    del keep
    return {"extra": extra, "logits": x.nbytes, "method": probe.method}


def run_mem_child(spec: dict) -> dict:
    env = dict(os.environ)
    # Fixed mmap threshold: every allocation >= 64 KiB gets its own mapping and is returned to the
    # kernel when freed, so RSS follows the live tensors (glibc's adaptive threshold would keep
    # freed blocks of up to 32 MiB resident in the heap and blur the peak).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "0")
    env.setdefault("PYTHONWARNINGS", "ignore")
    cmd = [sys.executable, os.path.abspath(__file__), "--_mem-child", json.dumps(spec)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"memory child {spec} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


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


# --------------------------------------------------------------------------------------------
# report


def fmt_ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_x(v) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}×"


def shape_label(name: str) -> str:
    shape, _ = SHAPES[name]
    flat = (math.prod(shape[:-1]), shape[-1])
    s = "(" + ", ".join(map(str, shape)) + ")"
    return s if len(shape) == 2 else f"{s} → {flat}"


def analyse(name_shape, dtype_name, x, samples, faults, number, reps, checks, mem, mode="peers", cache="warm"):
    _, peers, subject = MODES[mode]
    med = {n: statistics.median(v) for n, v in samples.items()}
    q = {}
    for n, v in samples.items():
        if len(v) >= 4:
            qs = statistics.quantiles(v, n=4)
            q[n] = (qs[2] - qs[0]) / med[n]
        else:
            q[n] = (max(v) - min(v)) / med[n]
    ok_peers = [p for p in peers if p in med and checks.get(p, (False,))[0]]
    fastest = min(ok_peers, key=med.get) if ok_peers else None
    rows = []
    for n in ALL:
        if n not in med:
            continue
        chk = checks.get(n)
        rows.append(
            {
                "impl": n,
                "ms": med[n],
                "iqr": q[n],
                "calls": number[n],
                "faults": statistics.median(faults[n]) if x.device.type == "cpu" else None,
                "peer": med[n] / med[fastest] if fastest else None,
                "floor": med[n] / med[FLOOR] if FLOOR in med else None,
                "mem": mem.get(n),
                "check": chk,
            }
        )
    k = x.shape[1]
    verdicts = []
    by = {r["impl"]: r for r in rows}
    for n, r in by.items():
        if r["check"] and not r["check"][0] and n not in PEERS:
            verdicts.append(f"FAIL {n} disagrees with F.cross_entropy")
    if mode == "ablation":
        base = by["lsmooth"]["ms"]
        for n in MODES["ablation"][0][1:]:
            if n in by:
                verdicts.append(f"{n}: {by[n]['ms'] / base:.2f}× lsmooth's time")
    elif mode == "compiled" and subject in by and by[subject]["peer"] is not None:
        verdicts.append(f"{subject}: {by[subject]['peer']:.2f}× {fastest}'s time")
    elif subject in by:
        r = by[subject]
        if r["peer"] is not None:
            cold = cache in ("cold", "evict")
            target = TARGET_PEER_COLD if cold else TARGET_PEER_BIG if k >= 1000 else TARGET_PEER_SMALL
            verdicts.append(
                f"{'PASS' if r['peer'] <= target else 'FAIL'} time {r['peer']:.2f}× fastest peer "
                f"({fastest}), target ≤ {target}"
            )
        if k >= 1000 and r["floor"] is not None and cache not in ("cold", "evict"):
            verdicts.append(
                f"{'PASS' if r['floor'] <= TARGET_FLOOR else 'FAIL'} time {r['floor']:.2f}× softmax floor, "
                f"target ≤ {TARGET_FLOOR}"
            )
        peer_mem = [by[p]["mem"] for p in peers if p in by and by[p]["mem"] is not None]
        if r["mem"] is not None and peer_mem:
            # 2% slack: page granularity and allocator bookkeeping
            good = r["mem"] <= min(peer_mem) * 1.02
            verdicts.append(
                f"{'PASS' if good else 'FAIL'} memory {r['mem']:.2f}× logits vs peers' min {min(peer_mem):.2f}×"
            )
        elif r["mem"] is None:
            verdicts.append("memory not measured at this shape")
    return {
        "shape": name_shape,
        "dtype": dtype_name,
        "label": shape_label(name_shape),
        "note": SHAPES[name_shape][1],
        "logits_mb": x.nbytes / 2**20,
        "reps": reps,
        "rows": rows,
        "fastest": fastest,
        "verdicts": verdicts,
    }


def table_lines(res, markdown: bool):
    head = [
        "implementation",
        "median ms",
        "IQR",
        "× fastest peer",
        "× softmax floor",
        "peak extra mem (× logits)",
        "page faults / call",
        "check vs F.cross_entropy",
    ]
    body = []
    for r in res["rows"]:
        chk = r["check"]
        if chk is None:
            c = "–"
        else:
            c = ("ok" if chk[0] else "WRONG") + f" (loss {chk[1]:.0e}, grad {chk[2]:.0e})"
        name = r["impl"] + (" (floor)" if r["impl"] == FLOOR else "")
        if r["impl"] == res["fastest"]:
            name += " *"
        body.append(
            [
                name,
                fmt_ms(r["ms"]),
                f"{100 * r['iqr']:.0f}%",
                fmt_x(r["peer"]),
                fmt_x(r["floor"]),
                fmt_x(r["mem"]),
                "–" if r["faults"] is None else f"{r['faults']:.0f}",
                c,
            ]
        )
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * 6 + ["---"]) + "|"]
        out += ["| " + " | ".join(b) + " |" for b in body]
        return out
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]

    def fmt(cells):
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i in (0, 7) else c.rjust(w) for i, (c, w) in pairs)

    return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), help="subset of shapes (default: the device's set)")
    p.add_argument(
        "--full", action="store_true", help="CPU: also run the issue's (8, 2048, 32000) (2.1 GB of fp32 logits)"
    )
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="default fp32 on CPU; fp32 bf16 fp16 on CUDA")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    p.add_argument("--reps", type=int, help="repetitions per implementation (default: adaptive)")
    p.add_argument(
        "--budget", type=float, default=8.0, help="adaptive reps: target seconds of timing per shape (default 8)"
    )
    p.add_argument("--min-reps", type=int, default=9, help="adaptive reps: at least this many (default 9)")
    p.add_argument("--max-reps", type=int, default=201, help="adaptive reps: at most this many (default 201)")
    p.add_argument(
        "--min-sample-ms",
        type=float,
        default=2.0,
        help="calls are batched so one sample lasts at least this long (default 2 ms)",
    )
    p.add_argument("--quick", action="store_true", help="3 reps, short samples: a smoke test, not a measurement")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument(
        "--mode",
        choices=list(MODES),
        default="peers",
        help="'peers' (default): lsmooth vs torch, fastai, timm, seed; 'ablation': lsmooth with and without each "
        "special branch; 'compiled': torch.compile'd lsmooth vs torch.compile'd F.cross_entropy",
    )
    p.add_argument("--impls", nargs="+", choices=list(ALL[:-1]), help="subset of implementations (default: the mode's)")
    p.add_argument(
        "--threads",
        type=int,
        help="diagnostics only: call torch.set_num_threads(N) first (default: leave torch's default)",
    )
    p.add_argument(
        "--cache",
        choices=("warm", "cold", "evict", "as-is"),
        default="warm",
        help="'warm' (default): each sample starts with one untimed call; 'cold': an untimed training step of a "
        "small CNN and 64 MiB written before every call, as in training; 'evict': the 64 MiB write alone (the method "
        "before 2026-12-02); 'as-is': samples start right after the previous implementation's",
    )
    p.add_argument(
        "--malloc",
        choices=("steady", "default"),
        default="steady",
        help="CPU: 'steady' (default) makes glibc reuse freed memory so page faults do not depend on the "
        "round-robin order; 'default' leaves glibc as it is",
    )
    p.add_argument("--out", help="markdown output (default benchmarks/results/cpu.md or cuda-<gpu>.md; '-' for none)")
    p.add_argument(
        "--self-check",
        action="store_true",
        help="run the correctness gate on lsmooth, fastai and two deliberately wrong losses (eps 0.11, no "
        "smoothing) at (512, 1000); exit 1 unless it accepts the first two and rejects the others",
    )
    p.add_argument("--_mem-child", dest="mem_child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.mem_child:
        print(json.dumps(mem_child(json.loads(args.mem_child))))
        return 0
    if args.self_check:
        x, t = make_inputs("512x1000", torch.float32, "cpu")
        impls = {n: make_impl(n) for n in ("lsmooth", "fastai")}
        impls["wrong eps"] = lambda x, t: F.cross_entropy(x, t, label_smoothing=EPS * 1.1)
        impls["no smoothing"] = lambda x, t: F.cross_entropy(x, t)
        verdict = {n: ok for n, (ok, _, _) in check(impls, x, t).items()}
        print("correctness gate:", ", ".join(f"{n} {'accepted' if ok else 'rejected'}" for n, ok in verdict.items()))
        return 0 if verdict == {"lsmooth": True, "fastai": True, "wrong eps": False, "no smoothing": False} else 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    malloc = "glibc defaults (--malloc default)"
    if device == "cpu" and args.malloc == "steady":
        malloc = steady_malloc()
    shapes = list(args.shapes or (CUDA_DEFAULT if device == "cuda" else CPU_DEFAULT))
    if args.full and device == "cpu" and "8x2048x32000" not in shapes:
        shapes.append("8x2048x32000")
    dtypes = args.dtypes or (["fp32", "bf16", "fp16"] if device == "cuda" else ["fp32"])
    impl_names = list(args.impls or MODES[args.mode][0])
    here = os.path.dirname(os.path.abspath(__file__))
    if args.out is None:
        if device == "cuda":
            gpu = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0)).strip("-").lower()
            args.out = f"cuda-{gpu}"
        else:
            args.out = "cpu"
        args.out = os.path.join(here, "results", args.out + ("" if args.mode == "peers" else f"-{args.mode}") + ".md")

    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    impls = {n: make_impl(n) for n in impl_names}
    impls[FLOOR] = make_impl(FLOOR)
    import lsmooth

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    versions = (
        f"torch {torch.__version__}, Python {platform.python_version()}, lsmooth {getattr(lsmooth, '__version__', '?')}"
    )
    for mod in ("fastai", "timm"):
        if mod in impl_names:
            versions += f", {mod} {sys.modules[mod].__version__}"
    how = f"set by --threads {args.threads}" if args.threads else "torch's default, not changed"
    threads = f"torch.get_num_threads() = {torch.get_num_threads()} ({how}), interop {torch.get_num_interop_threads()}"
    machine = machine_line(device)
    header = [
        f"machine: {machine}",
        f"versions: {versions}",
        f"threads: {threads}",
        f"device: {device}; eps = {EPS}; mode: {args.mode}; load average at start: {loadavg()}",
    ]
    header.append(f"caches: {CACHE_NOTE[args.cache]}")
    if device == "cpu":
        header.append(f"allocator: {malloc}")
    print("\n".join(header), flush=True)

    mem_note = None
    do_mem = not args.no_memory
    if do_mem and device == "cpu":
        v = run_mem_child({"impl": "__verify__", "threads": torch.get_num_threads()})
        ratio = v["extra"] / v["expected"]
        mem_note = (
            f"memory method check ({v['method']}): a 64 MiB transient tensor measured "
            f"{v['extra'] / 2**20:.1f} MiB (ratio {ratio:.3f}); a 16 MiB survivor {v['now'] / 2**20:.1f} MiB"
        )
        print(mem_note, flush=True)
        if not 0.97 <= ratio <= 1.05:
            print(
                "WARNING: the peak-RSS method does not reproduce a known allocation; memory numbers are unreliable",
                flush=True,
            )
            mem_note += " — UNRELIABLE on this machine"

    results = []
    t_start = time.time()
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        if device == "cpu" and dtype != torch.float32:
            print(f"note: {dtype_name} on CPU is not part of the issue's matrix", flush=True)
        for sname in shapes:
            x, t = make_inputs(sname, dtype, device)
            print(
                f"\n== {shape_label(sname)} {dtype_name}: {SHAPES[sname][1]}; logits {x.nbytes / 2**20:.1f} MiB",
                flush=True,
            )
            checks = check({n: impls[n] for n in impl_names}, x, t)
            bad = [n for n, c in checks.items() if not c[0]]
            if bad:
                print(
                    f"   check: {', '.join(bad)} disagree(s) with F.cross_entropy; excluded from 'fastest peer'",
                    flush=True,
                )
            gc.collect()
            samples, faults, reps, number = time_all(impls, x, t, device, args)
            mem = {}
            if do_mem:
                if device == "cuda":
                    for n in list(impls):
                        mem[n] = cuda_mem(impls[n], n, x, t)
                elif x.nbytes >= MEM_MIN_BYTES:
                    for n in list(impls):
                        r = run_mem_child(
                            {"impl": n, "shape": sname, "dtype": dtype_name, "threads": torch.get_num_threads()}
                        )
                        mem[n] = r["extra"] / r["logits"]
            res = analyse(sname, dtype_name, x, samples, faults, number, reps, checks, mem, args.mode, args.cache)
            results.append(res)
            print(f"   {reps} reps, calls per sample: " + ", ".join(f"{n} {number[n]}" for n in number), flush=True)
            for line in table_lines(res, markdown=False):
                print("   " + line)
            print("   verdict: " + "; ".join(res["verdicts"]), flush=True)
            del x, t
            gc.collect()
    elapsed = time.time() - t_start
    print(f"\nload average at end: {loadavg()}; {elapsed:.0f} s", flush=True)

    if args.out and args.out != "-":
        write_markdown(args, results, header, mem_note, command, date, device, elapsed)
        print(f"wrote {os.path.relpath(args.out)}")
    return 0


def summary_lines(results, mode="peers") -> list[str]:
    """One markdown row per shape: lsmooth against the fastest peer and the floor (the README's table);
    in ablation mode, lsmooth's time with and without each branch."""
    _, peers, subject = MODES[mode]
    if mode == "ablation":
        out = [
            "| logits | lsmooth | without fused.py | gain of the fused path | per-row, then reduced "
            "| gain of the reduced form | device path (no host reads) | gain of the host-decided shortcuts |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]

        def gain(without, with_):
            return f"{100 * (without / with_ - 1):+.0f}%" if without and with_ else "–"

        for res in results:
            by = {r["impl"]: r["ms"] for r in res["rows"]}
            full, no_fused, rows, device = (by.get(n) for n in MODES["ablation"][0])
            cells = [fmt_ms(v) + " ms" if v else "–" for v in (full, no_fused, rows, device)]
            out.append(f"| {res['label']} {res['dtype']} | {cells[0]} | {cells[1]} | {gain(no_fused, full)} "
                       f"| {cells[2]} | {gain(rows, no_fused)} | {cells[3]} | {gain(device, rows)} |")  # fmt: skip
        return out
    out = [
        f"| logits | {subject} | fastest peer | ÷ fastest peer | ÷ softmax floor "
        f"| peak extra memory, {subject} / peers' min |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        by = {r["impl"]: r for r in res["rows"]}
        if subject not in by:
            continue
        r, best = by[subject], by.get(res["fastest"])
        peer_mem = [by[p]["mem"] for p in peers if p in by and by[p]["mem"] is not None]
        mem = f"{fmt_x(r['mem'])} / {fmt_x(min(peer_mem))}" if r["mem"] is not None and peer_mem else "–"
        out.append(
            f"| {res['label']} {res['dtype']} | {fmt_ms(r['ms'])} ms | "
            + (f"{fmt_ms(best['ms'])} ms ({res['fastest']}) | " if best else "– | ")
            + f"{fmt_x(r['peer'])} | {fmt_x(r['floor'])} | {mem} |"
        )
    return out


def write_markdown(args, results, header, mem_note, command, date, device, elapsed):
    lines = [f"# Label-smoothing loss benchmark: {device.upper()}", ""]
    if args.quick:
        lines += ["**Quick smoke run (3 reps): not a measurement.**", ""]
    lines += [
        f"- command: `{command}`",
        f"- date: {date}; took {elapsed:.0f} s; load average at end: {loadavg()}",
    ]
    lines += [f"- {h}" for h in header]
    if mem_note:
        lines.append(f"- {mem_note}")
    peers_text = {
        "peers": "the fastest correct implementation among torch, fastai, timm and the seed formula",
        "ablation": "(no peers in an ablation run)",
        "compiled": "torch.compile'd F.cross_entropy(label_smoothing=0.1)",
    }[args.mode]
    if args.mode == "ablation":
        lines += [
            "",
            "Ablation: lsmooth as shipped, without lsmooth/fused.py (`lsmooth-no-fused`: the reduced native "
            "form), without either reduced form (`lsmooth-rows`: per-row losses, then their mean, as the loss "
            "computes 'none', weights and ignored rows), and as it runs off the CPU (`lsmooth-device`: no "
            "host reads, so the ignore and -inf masks are always computed), timed interleaved in one run. The gain "
            "of a branch is the time without it over the time with it, minus 1; a branch that gains under 5% at "
            "every shape does not earn its lines.",
        ]
    lines += [
        "",
        "Forward + backward of the mean loss (eps = 0.1), median over interleaved repetitions. "
        f"`× fastest peer`: time over {peers_text} (marked *); "
        "`× softmax floor`: time over one out-of-place `torch.softmax` of the same logits (no autograd). "
        "IQR: interquartile range of the repetitions, % of the median. "
        "Peak extra memory: the most memory held during fwd+bwd beyond the inputs, gradient included (so 1.00× "
        "is the least possible), as a multiple of the logits' size.",
    ]
    if device == "cpu":
        lines += [
            "",
            "CPU memory is the peak-RSS growth of a fresh process (kernel VmHWM, glibc mmap threshold fixed at "
            f"64 KiB); it is shown only where the logits are ≥ {MEM_MIN_BYTES >> 20} MiB, because below that "
            "page rounding, allocator metadata and the runtime's own small allocations are of the same order as "
            "the tensors being measured (–).",
        ]
        if "8x2048x32000" not in [r["shape"] for r in results]:
            lines += [
                "",
                "The issue's sequence shape (8, 2048, 32000) is 2.1 GB of fp32 logits; on CPU the default run uses "
                "(8, 256, 32000) instead. Run it with `--full` (CPU) or on a GPU (default there).",
            ]
    lines += ["", "## Summary", ""] + summary_lines(results, args.mode)
    for res in results:
        lines += ["", f"## {res['label']} {res['dtype']}", ""]
        lines.append(f"{res['note']}; logits {res['logits_mb']:.1f} MiB; {res['reps']} repetitions.")
        lines.append("")
        lines += table_lines(res, markdown=True)
        label = "Targets for lsmooth: " if args.mode == "peers" else "Result: "
        lines += ["", label + "; ".join(res["verdicts"]) + "."]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
