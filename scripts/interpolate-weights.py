#!/usr/bin/env python3
"""Writes the weights (1 - a)·A + a·B of two safetensors files of the same tensors (names and
shapes), as F32, keeping A's __metadata__: a model between two fine-tunes of one model (a
"model soup"). F16 and F32 inputs are read; shrink the result with scripts/to-f16.py.

    python3 scripts/interpolate-weights.py assets/models/scenes64-restyle/model.safetensors \\
        runs/restyle64-mix3-1step/model.safetensors 0.35 runs/restyle64-soup35/model.safetensors

With --extrapolate, a may lie outside [0, 1] (any finite value, |a| ≤ 10): a = 2 goes as far
beyond B as B is from A, e.g. from a student of a teacher at guidance 2.5 (A) past one at 3 (B)
towards one at 3.5 ("task arithmetic"; docs/STREAMS.md, "Past guidance 3, and more of the
clipped student").

    python3 scripts/interpolate-weights.py --extrapolate runs/restyle128c2-g25-1step/model.safetensors \\
        runs/restyle128c2-g3-1step/model.safetensors 2 runs/restyle128-g35/model.safetensors

Refuses files whose tensors differ in names or shapes, and a outside [0, 1] without
--extrapolate."""
import json, math, struct, sys
from array import array

# Plain Python (no numpy): F16 through struct's "e" format, F32 through array("f").
FORMATS = {"F32": "f", "F16": "e"}


def read(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    body = raw[8 + n:]
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in FORMATS:
            sys.exit(f"error: {path}: tensor {name} is {info['dtype']}; only F32 and F16 are read")
        a, b = info["data_offsets"]
        values = [v for (v,) in struct.iter_unpack("<" + FORMATS[info["dtype"]], body[a:b])]
        tensors[name] = (tuple(info["shape"]), values)
    return tensors, meta


def main(path_a, path_b, share, out, extrapolate=False):
    try:
        a = float(share)
    except ValueError:
        sys.exit(f"error: the share of B must be a number, got {share!r}")
    if extrapolate:
        if not (math.isfinite(a) and abs(a) <= 10):
            sys.exit(f"error: with --extrapolate the share of B must be finite and within [-10, 10], got {share}")
    elif not 0 <= a <= 1:
        sys.exit(f"error: the share of B must be in [0, 1] (or pass --extrapolate), got {share}")
    ta, meta = read(path_a)
    tb, _ = read(path_b)
    if sorted(ta) != sorted(tb) or any(ta[k][0] != tb[k][0] for k in ta):
        sys.exit(f"error: {path_a} and {path_b} do not hold the same tensors (names and shapes)")
    header, chunks, offset = {}, [], 0
    for name in sorted(ta):
        shape, va = ta[name]
        vb = tb[name][1]
        mixed = array("f", ((1 - a) * x + a * y for x, y in zip(va, vb)))
        if sys.byteorder != "little":
            mixed.byteswap()
        data = mixed.tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if meta:
        header["__metadata__"] = meta
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))
    print(f"wrote {out}: {len(ta)} tensors, {1 - a:g}·A + {a:g}·B")


if __name__ == "__main__":
    args = [x for x in sys.argv[1:] if x != "--extrapolate"]
    if len(args) != 4:
        sys.exit(__doc__)
    main(*args, extrapolate=len(args) < len(sys.argv) - 1)
