#!/usr/bin/env python3
"""Rewrites a safetensors file of F32 tensors as F16 (halving a shipped model's size), keeping
the names, shapes, order and __metadata__. Millrace reads F16 weights and widens them to F32.

    python3 scripts/to-f16.py runs/scenes64/model.safetensors assets/models/scenes64/model.safetensors

Refuses values that F16 cannot hold (|x| > 65504) rather than writing infinities."""
import json, struct, sys
import numpy as np

def main(src, dst):
    raw = open(src, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    body = raw[8 + n:]
    out_header, chunks, offset = {}, [], 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = info["data_offsets"]
        if info["dtype"] != "F32":
            sys.exit(f"{src}: tensor {name} is {info['dtype']}, not F32")
        x = np.frombuffer(body[a:b], dtype="<f4")
        if x.size and np.abs(x).max() > 65504:
            sys.exit(f"{src}: tensor {name} has values beyond F16's range")
        data = x.astype("<f2").tobytes()
        out_header[name] = {"dtype": "F16", "shape": info["shape"], "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if meta is not None:
        out_header["__metadata__"] = meta
    text = json.dumps(out_header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(dst + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))
    import os
    os.replace(dst + ".tmp", dst)
    print(f"wrote {dst}: {len(out_header) - (meta is not None)} tensors, {8 + len(text) + offset} bytes")

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
