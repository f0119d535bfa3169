#!/usr/bin/env python3
"""Markdown tables of scripts/source-sweep.sh's cells: Fréchet distance and class accuracy per
source (Gaussian, or a pruning set's τ and τ_r) and cell (schedule, NFE), the mean over seeds with
the spread (max − min) between them, and |R| and the acceptance rate of each pruning set."""
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
                 "(a cell with two seeds shows their mean ± half their difference).\n")
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


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/sweep")
