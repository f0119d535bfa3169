#!/usr/bin/env bash
# Builds the safetensors fuzz target with swiftc (libFuzzer + AddressSanitizer) and runs it.
#   Fuzz/Safetensors/run.sh [seconds] [extra libFuzzer flags...]
# Default 60 seconds. Crashes are written to .build-fuzz/safetensors/crash-*; reproduce one with
#   .build-fuzz/safetensors/fuzz-safetensors .build-fuzz/safetensors/crash-<hash>
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/.build-fuzz/safetensors"
seconds="${1:-60}"; shift || true
mkdir -p "$out/corpus"
cp -n "$here"/seeds/* "$out/corpus/" 2>/dev/null || true

swiftc -parse-as-library -module-name Millrace -O -g \
    -sanitize=fuzzer,address \
    "$here/main.swift" "$here/TensorStub.swift" \
    "$root/Sources/Millrace/Model/Safetensors.swift" \
    "$root/Sources/Millrace/Model/JSONStrict.swift" \
    -o "$out/fuzz-safetensors"

cd "$out"
exec ./fuzz-safetensors -max_total_time="$seconds" -max_len=4096 -timeout=10 \
    -dict="$here/safetensors.dict" -print_final_stats=1 "$@" corpus
