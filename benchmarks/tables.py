"""What bench_loss.py reports: verdicts against the targets, the per-shape tables, the summary
(the table benchmarks/README.md copies) and the markdown file."""

from __future__ import annotations

import math
import os
import statistics

from benchmarks.loss_impls import ALL, FLOOR, MODES, PEERS, SHAPES
from benchmarks.measure import loadavg

MEM_MIN_BYTES = 4 << 20  # CPU memory is reported only for logits at least this large

TARGET_PEER_BIG, TARGET_PEER_SMALL, TARGET_FLOOR = 0.8, 1.0, 2.5
TARGET_PEER_COLD = 1.0  # caches evicted before every call (a training step): at every shape
CACHE_NOTE = {
    "warm": "warm (each sample starts with one untimed call of the same implementation)",
    "cold": "cold (an untimed training step of a small CNN and 64 MiB written before every timed call, one call "
    "per sample)",
    "evict": "evicted (64 MiB written before every timed call, one call per sample; no training step)",
    "as-is": "as left by the previous implementation (no untimed call before a sample)",
}



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


def summary_lines(results, mode="peers") -> list[str]:
    """One markdown row per shape: lsmooth against the fastest peer and the floor (the README's table);
    in ablation mode, lsmooth's time with and without each branch."""
    _, peers, subject = MODES[mode]
    if mode == "ablation":
        out = [
            "| logits | lsmooth | fused path off | gain of the fused path | per-row, then reduced "
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
            "Ablation: lsmooth as shipped, with its fused path off (`lsmooth-no-fused`: `lsmooth.fused.MIN_LOGITS = "
            "inf`, so the reduced native form), as per-row losses then their mean (`lsmooth-rows`: "
            "`reduction='none'`, then `.mean()`, the route the loss takes for 'none', weights and ignored rows), "
            "and as it runs off the CPU (`lsmooth-device`: `lsmooth.losses.HOST_READS = False`, no host reads, so "
            "the ignore and -inf masks are always computed), timed interleaved in one run. The gain of a branch is "
            "the time without it over the time with it, minus 1; a branch that gains under 5% at every shape does "
            "not earn its lines.",
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
