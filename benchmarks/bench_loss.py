"""Forward+backward time and peak memory of label-smoothed cross-entropy: lsmooth vs its peers.

Modes (``--mode``): ``peers`` (default) times lsmooth against the losses people use instead;
``ablation`` times lsmooth with and without each of its special branches; ``compiled`` times
``torch.compile``d lsmooth against ``torch.compile``d ``F.cross_entropy`` (default backend). The
implementations and the correctness gate are in loss_impls.py, the timing and memory methods in
measure.py, the tables in tables.py; benchmarks/README.md describes the method.

Timing: fwd+bwd on a leaf that requires grad, grads cleared after each call, implementations
interleaved in a fresh order within every repetition, median of the repetitions after warm-up.
Memory: peak extra bytes during one fwd+bwd (gradient included) as a multiple of the logits' size;
on CPU measured in a fresh child process per (implementation, shape) from the kernel's peak-RSS
counter.

Run from the repository root: ``python -m benchmarks.bench_loss --help``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.loss_impls import (
    ALL,
    CPU_DEFAULT,
    CUDA_DEFAULT,
    DTYPES,
    EPS,
    FLOOR,
    MODES,
    SHAPES,
    check,
    fwd_bwd,
    make_impl,
    make_inputs,
)  # fmt: skip
from benchmarks.measure import PeakRSS, cuda_mem, loadavg, machine_line, rss, steady_malloc, time_all
from benchmarks.tables import CACHE_NOTE, MEM_MIN_BYTES, analyse, shape_label, table_lines, write_markdown

ROOT = Path(__file__).resolve().parents[1]


def mem_child(spec: dict) -> dict:
    """Runs in a fresh process: peak extra RSS of one fwd+bwd (gradient kept alive)."""
    torch.set_num_threads(spec["threads"])
    if spec["impl"] == "__verify__":
        # Known allocations: a 64 MiB transient (freed before reading) and a 16 MiB survivor.
        x = torch.empty(1 << 10)
        x.fill_(1)
        probe = PeakRSS()
        a = torch.empty(16 << 20)  # 64 MiB of float32
        a.fill_(1.0)
        del a
        b = torch.empty(4 << 20)  # 16 MiB of float32
        b.fill_(1.0)
        return {"extra": probe.extra(), "expected": 64 << 20, "now": rss() - probe.base, "method": probe.method}
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
    probe = PeakRSS()
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
    cmd = [sys.executable, "-m", "benchmarks.bench_loss", "--_mem-child", json.dumps(spec)]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"memory child {spec} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])



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
        "small CNN and 64 MiB written before every call, as in training; 'evict': the 64 MiB write alone; "
        "'as-is': samples start right after the previous implementation's",
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
    if args.out is None:
        if device == "cuda":
            gpu = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0)).strip("-").lower()
            args.out = f"cuda-{gpu}"
        else:
            args.out = "cpu"
        suffix = "" if args.mode == "peers" else f"-{args.mode}"
        args.out = str(ROOT / "benchmarks" / "results" / f"{args.out}{suffix}.md")

    warnings.filterwarnings("ignore", category=FutureWarning)
    impls = {n: make_impl(n) for n in impl_names}
    impls[FLOOR] = make_impl(FLOOR)
    import lsmooth

    command = "python -m benchmarks.bench_loss " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))
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


if __name__ == "__main__":
    sys.exit(main())
