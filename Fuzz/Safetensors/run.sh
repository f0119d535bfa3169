#!/usr/bin/env bash
# Builds the safetensors fuzz target with swiftc (libFuzzer + AddressSanitizer) and runs it.
# (`swift build` builds the same check as a replay tool: .build/debug/fuzz-safetensors FILES_OR_FOLDERS.)
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

# The formats module with libFuzzer's coverage instrumentation, then the check against it.
swiftc -parse-as-library -module-name MillraceFormats -O -g -sanitize=fuzzer,address \
    -emit-library -static -emit-module -emit-module-path "$out/MillraceFormats.swiftmodule" \
    "$root"/Sources/MillraceFormats/*.swift -o "$out/libMillraceFormats.a"
swiftc -parse-as-library -module-name FuzzSafetensors -O -g -sanitize=fuzzer,address -I "$out" \
    "$here/Check.swift" "$out/libMillraceFormats.a" -o "$out/fuzz-safetensors"

cd "$out"
exec ./fuzz-safetensors -max_total_time="$seconds" -max_len=4096 -timeout=10 \
    -dict="$here/safetensors.dict" -print_final_stats=1 "$@" corpus
