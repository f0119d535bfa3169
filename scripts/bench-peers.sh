#!/usr/bin/env bash
# Millrace against its peers (docs/BENCHMARKS.md, "Against the peers"): the same safetensors in
# diffusers' UNet2DModel, timed with ONNX Runtime and PyTorch on the CPU, interleaved with gen's
# own benchmarks; training steps of `gen bench train` against the same step in PyTorch.
#   scripts/bench-peers.sh [--quick] [--rounds R] [--model DIR]... [--out FILE] [--gen PATH]
# One JSON object on stdout, progress on stderr; scripts/bench_peers.py --help lists every option.
# Needs a release build (swift build -c release) or --gen PATH / GEN=PATH, python3, and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.build-peers/venv   # /.build-*/ is git-ignored; made once, reused after
if [ ! -f "$venv/.ready" ]; then
  echo "bench-peers: making $venv (once)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  py=$venv/bin/python
  "$py" -m pip install --quiet --upgrade pip >&2
  if [ -n "${PEERS_TORCH:-}" ]; then
    # PEERS_TORCH=SPEC: another torch, e.g. a +cpu build from a wheel folder that pip's
    # find-links setting offers (on this project's machines: /opt/wheels, 183 MB).
    "$py" -m pip install "$PEERS_TORCH" >&2
  else
    # torch from PyPI alone. PyPI has no +cpu build for Linux x86_64; its wheel (540 MB) is the
    # CUDA build, whose requirements bring about 3 GB of nvidia-* libraries and 1 GB of triton.
    # Without the nvidia libraries `import torch` fails (libcudart.so.13 is loaded at import),
    # so the lightest set that works is torch and its requirements less triton, which only
    # torch.compile's GPU code generation uses (4.7 GB in all, against 5.6 GB with it).
    "$py" -m pip install --no-deps torch >&2
    "$py" - <<'PY' >&2
import subprocess, sys
from importlib.metadata import requires
reqs = [r for r in requires("torch") or []
        if "extra ==" not in r and not r.replace(" ", "").lower().startswith("triton")]
subprocess.run([sys.executable, "-m", "pip", "install", *reqs], check=True)
PY
  fi
  # onnxscript: torch.onnx's dynamo exporter, the fallback when the TorchScript one is gone.
  "$py" -m pip install diffusers onnx onnxruntime onnxscript safetensors numpy >&2
  "$py" -c 'import torch, diffusers, onnx, onnxruntime, safetensors; torch.zeros(1).sum()'
  touch "$venv/.ready"
fi
exec "$venv/bin/python" scripts/bench_peers.py "$@"
