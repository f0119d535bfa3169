#!/usr/bin/env python3
"""Markdown tables of scripts/source-sweep.sh's cells: Fréchet distance and class accuracy per
source (Gaussian, or a pruning set's τ and τ_r) and cell (schedule, NFE), the mean over seeds with
the spread (max − min) between them, and |R| and the acceptance rate of each pruning set; and
fd-vs-axes.svg, the Fréchet distance against |R| for each BOSS NFE."""
import json
import os
import re
import sys
from collections import defaultdict


def main(out):
    cells = [json.loads(line) for line in open(os.path.join(out, "cells.jsonl")) if line.strip()]
    by = defaultdict(list)
    columns, labels = [], []
    for c in cells:
        col = (c["schedule"], c["steps"])
        if col not in columns:
            columns.append(col)
        if c["label"] not in labels:
            labels.append(c["label"])
        by[(c["label"], col)].append(c["result"])
    columns.sort(key=lambda col: (col[0] != "boss", col[1]))
    labels.sort(key=lambda l: (l != "gaussian", l))

    def axes(label):
        log = os.path.join(out, "models", label, "prune-axes.log")
        if not os.path.exists(log):
            return ""
        m = re.search(r"\|R\| = (\d+) signed axes", open(log).read())
        return m.group(1) if m else "?"

    def fmt(results, key, digits):
        values = [r[key] for r in results if r.get(key) is not None]
        if not values:
            return ""
        mean = sum(values) / len(values)
        if len(values) == 1:
            return f"{mean:.{digits}f}"
        return f"{mean:.{digits}f} ±{(max(values) - min(values)) / 2:.{digits}f}"

    lines = []
    samples = sorted({r["samples"] for rs in by.values() for r in rs})
    seeds = sorted({c["seed"] for c in cells})
    lines.append(f"Samples per cell: {', '.join(map(str, samples))}; seeds {', '.join(map(str, seeds))} "
                 "(a cell with several seeds shows their mean ± half their range).\n")
    head = "| source | τ | τ_r | \\|R\\| | acceptance | " + " | ".join(f"{s} {n}" for s, n in columns) + " |"
    sep = "|---|---:|---:|---:|---:|" + "---:|" * len(columns)
    for title, key, digits in (("Fréchet distance (lower is better)", "frechet", 2),
                               ("Class accuracy (higher is better)", "accuracy", 3)):
        lines += [f"**{title}**", "", head, sep]
        for label in labels:
            m = re.match(r"tau-([^-]+)-r-([^-]+)(?:-(f16))?$", label)
            tau, tau_r = (m.group(1), m.group(2)) if m else ("", "")
            stored = f" ({m.group(3)})" if m and m.group(3) else ""
            acc = [r["acceptance_rate"] for col in columns for r in by.get((label, col), [])
                   if r.get("acceptance_rate") is not None]
            acceptance = f"{sum(acc) / len(acc):.3f}" if acc else ""
            name = "gaussian" if label == "gaussian" else "pruned" + stored
            row = [name, tau, tau_r, axes(label), acceptance] + [fmt(by.get((label, col), []), key, digits) for col in columns]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    text = "\n".join(lines)
    open(os.path.join(out, "table.md"), "w").write(text)
    print(text)
    write_curve(out, labels, columns, by, axes)


def write_curve(out, labels, columns, by, axes):
    """fd-vs-axes.svg: the Fréchet distance (mean over seeds) against |R| for each BOSS NFE, the
    Gaussian source's value at |R| = 0 and as a dashed line across."""
    W, H, L, R, T, B = 640, 400, 60, 150, 20, 50
    series = []
    for col in columns:
        if col[0] != "boss":
            continue
        pts = []
        for label in labels:
            rs = by.get((label, col), [])
            if not rs or (label != "gaussian" and not axes(label).isdigit()):
                continue
            n = 0 if label == "gaussian" else int(axes(label))
            pts.append((n, sum(r["frechet"] for r in rs) / len(rs), label == "gaussian"))
        if len(pts) > 1:
            series.append((col[1], sorted(pts)))
    if not series:
        return
    xs = [p[0] for _, pts in series for p in pts]
    ys = [p[1] for _, pts in series for p in pts]
    x1, y0, y1 = max(xs) or 1, min(ys) - 0.2, max(ys) + 0.2
    X = lambda v: L + (W - L - R) * v / x1
    Y = lambda v: T + (H - T - B) * (y1 - v) / (y1 - y0)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
          f'<rect width="{W}" height="{H}" fill="white"/>',
          f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
          f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
          f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">signed axes pruned, |R| (0: Gaussian source)</text>',
          f'<text x="14" y="{(T + H - B) / 2}" transform="rotate(-90 14 {(T + H - B) / 2})" text-anchor="middle">Fréchet distance</text>']
    for k in range(6):
        v = y0 + (y1 - y0) * k / 5
        el.append(f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
        el.append(f'<line x1="{L}" y1="{Y(v):.1f}" x2="{W - R}" y2="{Y(v):.1f}" stroke="#eee"/>')
    last = -1e9
    for n in sorted(set(xs)):
        if X(n) - last >= 24:  # skip a tick label that would overlap the previous one
            el.append(f'<text x="{X(n):.1f}" y="{H - B + 16}" text-anchor="middle">{n}</text>')
            last = X(n)
    for i, (nfe, pts) in enumerate(series):
        c = colors[i % len(colors)]
        path = " ".join(f"{X(n):.1f},{Y(v):.1f}" for n, v, _ in pts)
        el.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        for n, v, g in pts:
            el.append(f'<circle cx="{X(n):.1f}" cy="{Y(v):.1f}" r="3" fill="{c}"/>')
            if g:
                el.append(f'<line x1="{L}" y1="{Y(v):.1f}" x2="{W - R}" y2="{Y(v):.1f}" stroke="{c}" stroke-dasharray="4 4"/>')
        el.append(f'<text x="{W - R + 10}" y="{T + 16 * (i + 1)}" fill="{c}">BOSS, {nfe} NFE</text>')
    el.append(f'<text x="{W - R + 10}" y="{T + 16 * (len(series) + 2)}" fill="#555">dashed: Gaussian</text>')
    el.append("</svg>")
    open(os.path.join(out, "fd-vs-axes.svg"), "w").write("\n".join(el) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/sweep")
